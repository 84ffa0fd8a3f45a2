//! Open connections per client address.
//!
//! A count with a guard rather than a keyed rate limiter: the limit is on connections held
//! open, and an address's entry disappears with its last connection, so the map never
//! keeps addresses that are gone.
//!
//! An IPv6 client is counted by its /64: one subscriber commonly holds a whole /64 (and
//! picks a fresh address in it at will), so counting single addresses would not limit it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

#[derive(Debug)]
pub(crate) struct PerIpConnections {
    open: Mutex<HashMap<IpAddr, u32>>,
    max: u32,
}

/// One connection's place in its address's count; released on drop.
#[derive(Debug)]
pub(crate) struct IpSlot {
    owner: Arc<PerIpConnections>,
    address: IpAddr,
}

impl PerIpConnections {
    pub(crate) fn new(max: u32) -> Arc<PerIpConnections> {
        Arc::new(PerIpConnections {
            open: Mutex::new(HashMap::new()),
            max,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, u32>> {
        // Every change is one arithmetic step on one entry: consistent even if poisoned.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot for `address`, or `None` if it already holds the maximum.
    pub(crate) fn try_acquire(self: &Arc<Self>, address: IpAddr) -> Option<IpSlot> {
        let address = counted_as(address);
        let mut open = self.lock();
        let count = open.entry(address).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            owner: self.clone(),
            address,
        })
    }

    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.lock().len()
    }
}

/// The key an address is counted under: an IPv4 address itself (also when written as an
/// IPv4-mapped IPv6 address), an IPv6 address's /64.
pub(crate) fn counted_as(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !0u128 << 64)),
        v4 => v4,
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.owner.lock();
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_address_and_forgets_closed_ones() {
        let limit = PerIpConnections::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = limit.try_acquire(a).unwrap();
        let _second = limit.try_acquire(a).unwrap();
        assert!(limit.try_acquire(a).is_none());
        let other = limit.try_acquire(b).unwrap();
        drop(first);
        let _third = limit.try_acquire(a).unwrap();
        drop(other);
        assert_eq!(limit.addresses(), 1);
    }

    #[test]
    fn ipv6_clients_count_by_their_slash_64() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(
            counted_as(ip("2001:db8:1:2:aaaa::1")),
            counted_as(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        );
        assert_eq!(counted_as(ip("2001:db8:1:2::7")), ip("2001:db8:1:2::"));
        assert_ne!(
            counted_as(ip("2001:db8:1:2::1")),
            counted_as(ip("2001:db8:1:3::1"))
        );
        assert_eq!(counted_as(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(counted_as(ip("192.0.2.1")), ip("192.0.2.1"));

        let limit = PerIpConnections::new(1);
        let _first = limit.try_acquire(ip("2001:db8::1")).unwrap();
        assert!(
            limit.try_acquire(ip("2001:db8::2")).is_none(),
            "another address of the same /64 is the same client"
        );
        let _elsewhere = limit.try_acquire(ip("2001:db8:0:1::1")).unwrap();
        assert_eq!(limit.addresses(), 2);
    }
}
