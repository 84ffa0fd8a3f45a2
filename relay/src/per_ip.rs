//! Open connections per client address.
//!
//! A count with a guard rather than a keyed rate limiter: the limit is on connections held
//! open, and an address's entry disappears with its last connection, so the map never
//! keeps addresses that are gone.

use std::collections::HashMap;
use std::net::IpAddr;
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
}
