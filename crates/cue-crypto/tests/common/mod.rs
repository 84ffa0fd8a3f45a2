//! Shared fixtures for the integration tests: a workspace with members and a stranger,
//! and a small seeded PRNG so random-input tests replay from a printed seed.

#![allow(dead_code)]

use cue_crypto::{DeviceId, DeviceKey, LobbySecret, RoomId, WorkspaceKeys, WorkspaceSecret};

pub struct Fixture {
    pub keys: WorkspaceKeys,
    /// The workspace's lobby room, to which admissions are bound.
    pub lobby: RoomId,
    pub alice: DeviceKey,
    pub bob: DeviceKey,
    /// Holds the invite (the secret) but is not in the member list.
    pub carol: DeviceKey,
}

impl Fixture {
    pub fn new() -> Self {
        Self {
            keys: WorkspaceKeys::derive(&WorkspaceSecret::from_bytes([11; 32])),
            lobby: LobbySecret::from_bytes([12; 32]).keys().room_id(),
            alice: DeviceKey::from_bytes(&[1; 32]),
            bob: DeviceKey::from_bytes(&[2; 32]),
            carol: DeviceKey::from_bytes(&[3; 32]),
        }
    }

    /// Alice and Bob are members; Carol is not.
    pub fn is_member(&self) -> impl Fn(&DeviceId) -> bool + '_ {
        |id| *id == self.alice.device_id() || *id == self.bob.device_id()
    }
}

/// SplitMix64: tiny, fast, and good enough to drive input generation.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.u64() % n as u64) as usize
    }

    pub fn byte(&mut self) -> u8 {
        self.u64() as u8
    }

    pub fn nonzero_byte(&mut self) -> u8 {
        (self.below(255) + 1) as u8
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.byte()).collect()
    }

    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        a.iter_mut().for_each(|b| *b = self.byte());
        a
    }
}

/// Iterations for the random-input tests: `CUE_FUZZ_ITERS` when set, else `default`.
pub fn fuzz_iters(default: u64) -> u64 {
    std::env::var("CUE_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn fuzz_seed() -> u64 {
    std::env::var("CUE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x00C0_FFEE)
}
