//! The join proof: a signature by the room key over the relay's challenge.
//!
//! The relay sends a fresh random 32-byte nonce; the peer signs
//! `JOIN_DOMAIN || room id || nonce` with the room key. Binding the room id stops a proof
//! made for one room from admitting to another (even if a relay reused a nonce), and the
//! domain tag stops the signature from meaning anything outside this handshake.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::RoomId;

/// Domain separation tag that starts every signed join message.
pub const JOIN_DOMAIN: &[u8] = b"cue-relay-join-v1";

/// The exact bytes a peer signs to join `room` after receiving `nonce`.
pub fn join_proof_message(room: &RoomId, nonce: &[u8; 32]) -> Vec<u8> {
    let mut message = Vec::with_capacity(JOIN_DOMAIN.len() + 64);
    message.extend_from_slice(JOIN_DOMAIN);
    message.extend_from_slice(&room.0);
    message.extend_from_slice(nonce);
    message
}

/// Signs the join message for the room whose key is `room_key` (the room id is its public
/// key).
pub fn sign_join_proof(room_key: &SigningKey, nonce: &[u8; 32]) -> [u8; 64] {
    let room = RoomId(room_key.verifying_key().to_bytes());
    room_key.sign(&join_proof_message(&room, nonce)).to_bytes()
}

/// Whether `signature` proves possession of the room key for `room` and this `nonce`.
///
/// Uses `verify_strict`: it rejects small-order keys and non-canonical signatures, so no
/// room id admits a signature that anyone could have made without the key. A room id that
/// is not a valid curve point admits nobody.
pub fn verify_join_proof(room: &RoomId, nonce: &[u8; 32], signature: &[u8; 64]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(&room.0) else {
        return false;
    };
    key.verify_strict(
        &join_proof_message(room, nonce),
        &Signature::from_bytes(signature),
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn a_proof_verifies_for_its_room_and_nonce_only() {
        let room_key = key(7);
        let room = RoomId(room_key.verifying_key().to_bytes());
        let nonce = [3u8; 32];
        let proof = sign_join_proof(&room_key, &nonce);
        assert!(verify_join_proof(&room, &nonce, &proof));

        // Another nonce, another room, another key, a flipped bit: all refused.
        assert!(!verify_join_proof(&room, &[4u8; 32], &proof));
        let other_room = RoomId(key(8).verifying_key().to_bytes());
        assert!(!verify_join_proof(&other_room, &nonce, &proof));
        let forged = sign_join_proof(&key(8), &nonce);
        assert!(!verify_join_proof(&room, &nonce, &forged));
        for position in 0..64 {
            let mut flipped = proof;
            flipped[position] ^= 0x01;
            assert!(
                !verify_join_proof(&room, &nonce, &flipped),
                "byte {position}"
            );
        }
    }

    #[test]
    fn degenerate_room_ids_admit_nobody() {
        let nonce = [0u8; 32];
        // The identity point (a small-order key) and the all-zero signature: verify_strict
        // must refuse what plain verification might accept.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut signature = [0u8; 64];
        signature[0] = 1;
        assert!(!verify_join_proof(&RoomId(identity), &nonce, &signature));
        assert!(!verify_join_proof(&RoomId([0xff; 32]), &nonce, &[0u8; 64]));
    }

    #[test]
    fn the_signed_message_is_domain_room_nonce() {
        let room = RoomId([0xaa; 32]);
        let message = join_proof_message(&room, &[0xbb; 32]);
        assert_eq!(&message[..JOIN_DOMAIN.len()], JOIN_DOMAIN);
        assert_eq!(
            &message[JOIN_DOMAIN.len()..JOIN_DOMAIN.len() + 32],
            &[0xaa; 32]
        );
        assert_eq!(&message[JOIN_DOMAIN.len() + 32..], &[0xbb; 32]);
    }
}
