//! Sealed boxes to one device: how a rotated workspace secret (or the current one, for a
//! device that was just admitted) reaches each member individually.
//!
//! A device's ed25519 key doubles as an X25519 key, as libsodium's
//! `crypto_sign_ed25519_pk_to_curve25519` and age's `ssh-ed25519` recipients do: the public
//! half is the Edwards point in Montgomery form, the secret half is the ed25519 secret
//! scalar's bytes, which X25519 clamps the way ed25519 does. So nothing new has to be
//! published or stored for a device to receive secrets: its device id is its address.
//!
//! Layout: `ephemeral X25519 public (32) | nonce (24) | XChaCha20-Poly1305 ciphertext and
//! tag (16)`. The key is HKDF-SHA256 with the X25519 shared secret as input, the ephemeral
//! and recipient public keys as salt (binding the box to both ends) and `cue sealed v1` as
//! info. The caller's associated data binds the box to its context (room, recipient,
//! generation), so a box cannot be replayed into another.
//!
//! The sender is anonymous at this layer: authenticity comes from the envelope the box
//! travels in, which its sender signs.

use chacha20poly1305::{AeadInOut, KeyInit, XChaCha20Poly1305, XNonce};
use curve25519_dalek::montgomery::MontgomeryPoint;
use ed25519_dalek::VerifyingKey;
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::keys::{DeviceId, DeviceKey, os_random};

const INFO: &[u8] = b"cue sealed v1";
const PUBLIC_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes a sealed box adds to its plaintext: ephemeral public key, nonce and tag.
pub const SEALED_OVERHEAD: usize = PUBLIC_LEN + NONCE_LEN + TAG_LEN;

/// Why sealing to a device or opening a sealed box failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealedError {
    /// Shorter than the fixed overhead: not a sealed box.
    #[error("sealed box truncated ({len} bytes, at least {SEALED_OVERHEAD} needed)")]
    Truncated {
        /// The length received.
        len: usize,
    },
    /// The recipient's id is not a usable key (not a curve point, or of small order), or
    /// the box's ephemeral key is of small order: no secret can be shared with it.
    #[error("the device key is not a valid public key to seal to")]
    BadKey,
    /// The box does not open: sealed to another device, altered, or for another context.
    #[error(
        "the sealed box does not open with this device's key (wrong recipient, altered, or for another context)"
    )]
    Decrypt,
    /// The OS random source failed.
    #[error("the operating system's random source failed: {0}")]
    Random(String),
}

/// The X25519 public key of a device: its ed25519 point in Montgomery form. Refuses
/// ids that are not points and small-order points (whose shared secrets are guessable).
pub(crate) fn x25519_public(device: &DeviceId) -> Result<MontgomeryPoint, SealedError> {
    let key = VerifyingKey::from_bytes(device.as_bytes()).map_err(|_| SealedError::BadKey)?;
    if key.is_weak() {
        return Err(SealedError::BadKey);
    }
    Ok(key.to_montgomery())
}

/// HKDF-SHA256 over the shared secret, salted with both public keys. An all-zero shared
/// secret (a small-order point on either side) is refused: it would be known to anyone.
fn box_cipher(
    shared: &MontgomeryPoint,
    ephemeral: &[u8; 32],
    recipient: &[u8; 32],
) -> Result<XChaCha20Poly1305, SealedError> {
    let shared = Zeroizing::new(shared.to_bytes());
    // Constant time: the shared secret is secret.
    let nonzero = shared.iter().fold(0u8, |acc, b| acc | b);
    if nonzero == 0 {
        return Err(SealedError::BadKey);
    }
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral);
    salt[32..].copy_from_slice(recipient);
    let hk = Hkdf::<Sha256>::new(Some(&salt), shared.as_slice());
    let mut key = Zeroizing::new([0u8; 32]);
    // 32 bytes are far below HKDF's limit of 255 hash lengths.
    hk.expand(INFO, key.as_mut_slice())
        .expect("HKDF-SHA256 expands up to 8160 bytes");
    Ok(XChaCha20Poly1305::new((&*key).into()))
}

/// Seals `plaintext` to `recipient` with a fresh ephemeral key and nonce from the OS.
/// Only the holder of that device's key can open it, with the same `aad`.
pub fn seal_to(recipient: &DeviceId, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealedError> {
    let mut seed = Zeroizing::new([0u8; 32]);
    let mut nonce = [0u8; NONCE_LEN];
    os_random(seed.as_mut_slice())
        .and_then(|()| os_random(&mut nonce))
        .map_err(|e| SealedError::Random(e.to_string()))?;
    seal_to_with(recipient, plaintext, aad, *seed, nonce)
}

/// [`seal_to`] with a caller-chosen ephemeral seed and nonce, for deterministic tests and
/// vectors. Reusing a seed leaks the link between boxes: outside tests use `seal_to`.
pub fn seal_to_with(
    recipient: &DeviceId,
    plaintext: &[u8],
    aad: &[u8],
    ephemeral_seed: [u8; 32],
    nonce: [u8; 24],
) -> Result<Vec<u8>, SealedError> {
    let seed = Zeroizing::new(ephemeral_seed);
    let recipient_public = x25519_public(recipient)?;
    let ephemeral_public = MontgomeryPoint::mul_base_clamped(*seed);
    let shared = recipient_public.mul_clamped(*seed);
    let cipher = box_cipher(
        &shared,
        &ephemeral_public.to_bytes(),
        &recipient_public.to_bytes(),
    )?;
    let mut out = Vec::with_capacity(SEALED_OVERHEAD + plaintext.len());
    out.extend_from_slice(ephemeral_public.as_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_inout_detached(
            &XNonce::from(nonce),
            aad,
            (&mut out[PUBLIC_LEN + NONCE_LEN..]).into(),
        )
        .map_err(|_| SealedError::Decrypt)?;
    out.extend_from_slice(tag.as_slice());
    Ok(out)
}

/// Opens a box sealed to `device` with the same `aad`. The plaintext is zeroized on drop:
/// boxes carry secrets.
pub fn open_sealed(
    device: &DeviceKey,
    sealed: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealedError> {
    let len = sealed.len();
    if len < SEALED_OVERHEAD {
        return Err(SealedError::Truncated { len });
    }
    let (ephemeral, rest) = sealed
        .split_first_chunk::<PUBLIC_LEN>()
        .ok_or(SealedError::Truncated { len })?;
    let (nonce, rest) = rest
        .split_first_chunk::<NONCE_LEN>()
        .ok_or(SealedError::Truncated { len })?;
    let (ciphertext, tag) = rest
        .split_last_chunk::<TAG_LEN>()
        .ok_or(SealedError::Truncated { len })?;
    let recipient_public = x25519_public(&device.device_id())?;
    let shared = MontgomeryPoint(*ephemeral).mul_clamped(*device.x25519_scalar());
    let cipher = box_cipher(&shared, ephemeral, &recipient_public.to_bytes())?;
    let mut plaintext = Zeroizing::new(ciphertext.to_vec());
    cipher
        .decrypt_inout_detached(
            &XNonce::from(*nonce),
            aad,
            plaintext.as_mut_slice().into(),
            tag.into(),
        )
        .map_err(|_| SealedError::Decrypt)?;
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(n: u8) -> DeviceKey {
        DeviceKey::from_bytes(&[n; 32])
    }

    #[test]
    fn round_trip_and_layout() {
        let bob = device(2);
        let sealed = seal_to(&bob.device_id(), b"the secret", b"context").unwrap();
        assert_eq!(sealed.len(), SEALED_OVERHEAD + 10);
        assert_eq!(
            open_sealed(&bob, &sealed, b"context").unwrap().as_slice(),
            b"the secret"
        );
        // Fresh randomness each time.
        let again = seal_to(&bob.device_id(), b"the secret", b"context").unwrap();
        assert_ne!(sealed, again);
        // Deterministic with fixed inputs; an empty plaintext works too.
        let a = seal_to_with(&bob.device_id(), b"", b"", [7; 32], [9; 24]).unwrap();
        let b = seal_to_with(&bob.device_id(), b"", b"", [7; 32], [9; 24]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), SEALED_OVERHEAD);
        assert!(open_sealed(&bob, &a, b"").unwrap().is_empty());
    }

    #[test]
    fn only_the_recipient_with_the_same_aad_opens() {
        let bob = device(2);
        let carol = device(3);
        let sealed = seal_to(&bob.device_id(), b"the secret", b"context").unwrap();
        assert_eq!(
            open_sealed(&carol, &sealed, b"context"),
            Err(SealedError::Decrypt)
        );
        assert_eq!(
            open_sealed(&bob, &sealed, b"other context"),
            Err(SealedError::Decrypt)
        );
        for i in 0..sealed.len() {
            let mut altered = sealed.clone();
            altered[i] ^= 0x20;
            assert!(open_sealed(&bob, &altered, b"context").is_err(), "byte {i}");
        }
        assert_eq!(
            open_sealed(&bob, &sealed[..SEALED_OVERHEAD - 1], b"context"),
            Err(SealedError::Truncated {
                len: SEALED_OVERHEAD - 1
            })
        );
        assert_eq!(
            open_sealed(&bob, &sealed[..SEALED_OVERHEAD], b"context"),
            Err(SealedError::Decrypt)
        );
    }

    #[test]
    fn public_from_id_matches_public_from_secret() {
        for n in [1u8, 2, 77, 255] {
            let key = device(n);
            let from_id = x25519_public(&key.device_id()).unwrap();
            let from_secret = MontgomeryPoint::mul_base_clamped(*key.x25519_scalar());
            assert_eq!(from_id, from_secret, "device {n}");
        }
    }

    #[test]
    fn bad_keys_are_refused() {
        // The identity (small order) and a y coordinate that is not on the curve.
        let identity = {
            let mut b = [0u8; 32];
            b[0] = 1;
            DeviceId(b)
        };
        assert_eq!(seal_to(&identity, b"x", b""), Err(SealedError::BadKey));
        let not_a_point = (2u8..)
            .map(|y| {
                let mut b = [0u8; 32];
                b[0] = y;
                DeviceId(b)
            })
            .find(|id| VerifyingKey::from_bytes(id.as_bytes()).is_err())
            .unwrap();
        assert_eq!(seal_to(&not_a_point, b"x", b""), Err(SealedError::BadKey));
        // A box whose ephemeral key is of small order gives an all-zero shared secret.
        let bob = device(2);
        let mut sealed = seal_to(&bob.device_id(), b"x", b"").unwrap();
        sealed[..32].copy_from_slice(&[0; 32]);
        assert_eq!(open_sealed(&bob, &sealed, b""), Err(SealedError::BadKey));
    }
}
