//! Admissions: how a device holding an invite asks to join the member list.
//!
//! The joining device signs (room id, its id, its name) with its own device key. The
//! signature makes the admission a self-standing record that members store in the synced
//! index and that any member can re-check later without the envelope it came in.
//!
//! The room is explicit: callers pass the workspace's *lobby* room id
//! ([`crate::LobbySecret::keys`]), which stays the same across rotations, so an admission
//! made before a rotation still verifies after it. (Version 1 admissions were bound to the
//! workspace room of the secret at the time, which changes with every rotation; they are
//! refused as [`AdmissionError::OldVersion`] and callers fall back to other rules.)
//!
//! Encoding (version 2): `2` | device id (32) | name length (1) | name | signature (64).

use std::fmt;

use cue_proto::RoomId;

use crate::keys::{DeviceId, DeviceKey};

/// Version byte of the admission encoding.
pub const ADMISSION_VERSION: u8 = 2;
/// Domain tag of the admission signature (distinct from the envelope's, and from version
/// 1's, whose room meant something else).
pub const ADMISSION_DOMAIN: &[u8] = b"cue/v2/admission\0";
/// Longest device name, in characters (all ASCII, so also bytes).
pub const MAX_DEVICE_NAME_LEN: usize = 32;
const FIXED_LEN: usize = 1 + 32 + 1 + 64;

/// A device name that breaks the rules: letters, digits, `.`, `_`, `-`, 1 to 32 of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceNameError {
    /// Nothing given.
    #[error("the device name is empty")]
    Empty,
    /// Over 32 characters.
    #[error("the device name has {0} characters; at most {MAX_DEVICE_NAME_LEN} are allowed")]
    TooLong(usize),
    /// A character outside the allowed set.
    #[error("the device name contains {0:?}; use only letters, digits, '.', '_' and '-'")]
    BadCharacter(char),
}

/// Checks a device name against the rules (ASCII letters, digits, `.`, `_`, `-`, at most
/// 32 characters). Names end up in file names (conflict copies), hence the narrow set.
pub fn validate_device_name(name: &str) -> Result<(), DeviceNameError> {
    if name.is_empty() {
        return Err(DeviceNameError::Empty);
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(DeviceNameError::BadCharacter(c));
    }
    if name.len() > MAX_DEVICE_NAME_LEN {
        return Err(DeviceNameError::TooLong(name.len()));
    }
    Ok(())
}

/// Why an admission was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// Shorter than its fields say.
    #[error("admission truncated")]
    Truncated,
    /// Bytes after the signature.
    #[error("admission has {0} trailing bytes")]
    TrailingBytes(usize),
    /// A version 1 admission: bound to a workspace room of one generation, not to the
    /// lobby. Callers decide by other rules (e.g. the member list) instead.
    #[error("admission version 1 was made by an older cue (bound to a room that rotations change)")]
    OldVersion,
    /// A version this build does not read.
    #[error("admission version {0} is not supported")]
    UnsupportedVersion(u8),
    /// The name breaks the rules.
    #[error(transparent)]
    BadName(#[from] DeviceNameError),
    /// The signature does not verify for this room and device.
    #[error("admission signature does not verify for this room")]
    BadSignature,
}

/// A device's signed request to be a member.
#[derive(Clone, PartialEq, Eq)]
pub struct Admission {
    /// The joining device.
    pub device: DeviceId,
    /// Its chosen name (validated).
    pub name: String,
    /// The device's signature over the domain tag, room id, device id and name.
    pub signature: [u8; 64],
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("device", &self.device)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn signed_message(room: &RoomId, device: &DeviceId, name: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(ADMISSION_DOMAIN.len() + 65 + name.len());
    m.extend_from_slice(ADMISSION_DOMAIN);
    m.extend_from_slice(&room.0);
    m.extend_from_slice(&device.0);
    // The length keeps (name, anything after it) unambiguous should fields be added.
    m.push(name.len() as u8);
    m.extend_from_slice(name.as_bytes());
    m
}

impl Admission {
    /// `device` asks to join under `name`, bound to `room` (the workspace's lobby room).
    pub fn create(room: &RoomId, device: &DeviceKey, name: &str) -> Result<Self, DeviceNameError> {
        validate_device_name(name)?;
        let id = device.device_id();
        let signature = device.sign(&signed_message(room, &id, name));
        Ok(Self {
            device: id,
            name: name.to_owned(),
            signature,
        })
    }

    /// Checks the name and the signature (`verify_strict`) for `room`.
    pub fn verify(&self, room: &RoomId) -> Result<(), AdmissionError> {
        validate_device_name(&self.name)?;
        if self.device.verify(
            &signed_message(room, &self.device, &self.name),
            &self.signature,
        ) {
            Ok(())
        } else {
            Err(AdmissionError::BadSignature)
        }
    }

    /// The length of [`Admission::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        FIXED_LEN + self.name.len()
    }

    /// The wire form, the plaintext of an admission envelope.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(ADMISSION_VERSION);
        out.extend_from_slice(&self.device.0);
        out.push(self.name.len() as u8);
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(&self.signature);
        out
    }

    /// Parses the wire form. Checks structure and name, not the signature: call
    /// [`Admission::verify`].
    pub fn decode(bytes: &[u8]) -> Result<Self, AdmissionError> {
        let (&version, rest) = bytes.split_first().ok_or(AdmissionError::Truncated)?;
        if version == 1 {
            return Err(AdmissionError::OldVersion);
        }
        if version != ADMISSION_VERSION {
            return Err(AdmissionError::UnsupportedVersion(version));
        }
        let (device, rest) = rest
            .split_first_chunk::<32>()
            .ok_or(AdmissionError::Truncated)?;
        let (&name_len, rest) = rest.split_first().ok_or(AdmissionError::Truncated)?;
        let name_len = usize::from(name_len);
        if name_len > MAX_DEVICE_NAME_LEN {
            return Err(DeviceNameError::TooLong(name_len).into());
        }
        if rest.len() < name_len {
            return Err(AdmissionError::Truncated);
        }
        let (name, rest) = rest.split_at(name_len);
        let (signature, rest) = rest
            .split_first_chunk::<64>()
            .ok_or(AdmissionError::Truncated)?;
        if !rest.is_empty() {
            return Err(AdmissionError::TrailingBytes(rest.len()));
        }
        // Every allowed character is ASCII, so a non-UTF-8 name is a bad character.
        let name = std::str::from_utf8(name)
            .map_err(|_| DeviceNameError::BadCharacter(char::REPLACEMENT_CHARACTER))?;
        validate_device_name(name)?;
        Ok(Self {
            device: DeviceId(*device),
            name: name.to_owned(),
            signature: *signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{WorkspaceKeys, WorkspaceSecret};

    #[test]
    fn names() {
        assert!(validate_device_name("laptop-01.home_x").is_ok());
        assert!(validate_device_name(&"a".repeat(32)).is_ok());
        assert_eq!(
            validate_device_name(&"a".repeat(33)),
            Err(DeviceNameError::TooLong(33))
        );
        assert_eq!(validate_device_name(""), Err(DeviceNameError::Empty));
        assert_eq!(
            validate_device_name("my laptop"),
            Err(DeviceNameError::BadCharacter(' '))
        );
        assert_eq!(
            validate_device_name("a/b"),
            Err(DeviceNameError::BadCharacter('/'))
        );
        assert_eq!(
            validate_device_name("é"),
            Err(DeviceNameError::BadCharacter('é'))
        );
    }

    #[test]
    fn create_verify_and_binding() {
        let room = WorkspaceKeys::derive(&WorkspaceSecret::from_bytes([1; 32])).room_id();
        let other = WorkspaceKeys::derive(&WorkspaceSecret::from_bytes([2; 32])).room_id();
        let device = DeviceKey::from_bytes(&[9; 32]);
        let a = Admission::create(&room, &device, "laptop").unwrap();
        a.verify(&room).unwrap();
        assert_eq!(a.verify(&other), Err(AdmissionError::BadSignature));
        let mut renamed = a.clone();
        renamed.name = "server".into();
        assert_eq!(renamed.verify(&room), Err(AdmissionError::BadSignature));
        let mut stolen = a.clone();
        stolen.device = DeviceKey::from_bytes(&[8; 32]).device_id();
        assert_eq!(stolen.verify(&room), Err(AdmissionError::BadSignature));
        let bytes = a.encode();
        assert_eq!(bytes.len(), a.encoded_len());
        assert_eq!(Admission::decode(&bytes).unwrap(), a);
        assert_eq!(
            Admission::decode(&bytes[..bytes.len() - 1]),
            Err(AdmissionError::Truncated)
        );
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            Admission::decode(&long),
            Err(AdmissionError::TrailingBytes(1))
        );
        assert!(Admission::create(&room, &device, "bad name").is_err());
        let mut old = bytes.clone();
        old[0] = 1;
        assert_eq!(Admission::decode(&old), Err(AdmissionError::OldVersion));
        old[0] = 3;
        assert_eq!(
            Admission::decode(&old),
            Err(AdmissionError::UnsupportedVersion(3))
        );
        assert_eq!(bytes[0], ADMISSION_VERSION);
    }
}
