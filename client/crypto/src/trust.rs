//! Trust on first use: pinned identity keys per (user, device), a verified flag per user, and
//! the sending rule (a changed key of a verified user blocks sending until re-approved).
//! Pure data; the client stores it with its other state.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::identity::IdentityKey;

/// What pinning a key did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityChange {
    /// First key seen for this device: pinned.
    New,
    /// Same key as pinned.
    Unchanged,
    /// A different key replaced the pinned one: show a warning.
    ReplacedExisting,
}

/// Sending to a device is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TrustError {
    /// The user is verified and this device's key changed (or the device is new) since; the
    /// user must approve it first.
    #[error("identity of {user_id} / {device_id} changed since verification")]
    UntrustedIdentity {
        /// The user.
        user_id: String,
        /// The device.
        device_id: String,
    },
}

#[derive(Debug, Clone)]
struct Pin {
    key: IdentityKey,
    first_seen: u64,
    approved: bool,
}

/// Pinned identities of every known device.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    pins: BTreeMap<(String, String), Pin>,
    verified_users: BTreeMap<String, bool>,
}

impl TrustStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pins `key` for the device (TOFU). A changed key replaces the pin and, for a verified
    /// user, is unapproved until [`TrustStore::approve`].
    pub fn pin(
        &mut self,
        user_id: &str,
        device_id: &str,
        key: IdentityKey,
        now: u64,
    ) -> IdentityChange {
        let verified = self.is_verified(user_id);
        let slot = (user_id.to_owned(), device_id.to_owned());
        match self.pins.get_mut(&slot) {
            Some(pin) if pin.key == key => IdentityChange::Unchanged,
            Some(pin) => {
                *pin = Pin {
                    key,
                    first_seen: now,
                    approved: !verified,
                };
                IdentityChange::ReplacedExisting
            }
            None => {
                self.pins.insert(
                    slot,
                    Pin {
                        key,
                        first_seen: now,
                        approved: !verified,
                    },
                );
                IdentityChange::New
            }
        }
    }

    /// The pinned key of a device.
    pub fn pinned(&self, user_id: &str, device_id: &str) -> Option<&IdentityKey> {
        self.pins
            .get(&(user_id.to_owned(), device_id.to_owned()))
            .map(|p| &p.key)
    }

    /// When the pinned key was first seen.
    pub fn first_seen(&self, user_id: &str, device_id: &str) -> Option<u64> {
        self.pins
            .get(&(user_id.to_owned(), device_id.to_owned()))
            .map(|p| p.first_seen)
    }

    /// Marks a user verified (after comparing safety numbers); approves its current pins.
    pub fn set_verified(&mut self, user_id: &str) {
        self.verified_users.insert(user_id.to_owned(), true);
        for ((u, _), pin) in self.pins.iter_mut() {
            if u == user_id {
                pin.approved = true;
            }
        }
    }

    /// Whether the user is marked verified.
    pub fn is_verified(&self, user_id: &str) -> bool {
        self.verified_users.get(user_id).copied().unwrap_or(false)
    }

    /// Approves the current key of one device of a verified user.
    pub fn approve(&mut self, user_id: &str, device_id: &str) {
        if let Some(pin) = self
            .pins
            .get_mut(&(user_id.to_owned(), device_id.to_owned()))
        {
            pin.approved = true;
        }
    }

    /// Whether sending to this device with this key is allowed.
    pub fn check_send(
        &self,
        user_id: &str,
        device_id: &str,
        key: &IdentityKey,
    ) -> Result<(), TrustError> {
        let untrusted = || TrustError::UntrustedIdentity {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
        };
        match self.pins.get(&(user_id.to_owned(), device_id.to_owned())) {
            Some(pin) if pin.key == *key && pin.approved => Ok(()),
            Some(_) => Err(untrusted()),
            None if self.is_verified(user_id) => Err(untrusted()),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::IdentityKeyPair;

    /// P18: a new key for a known device is reported, and blocks sending to a verified user.
    #[test]
    fn p18_identity_change_is_surfaced_and_blocks_verified_contacts() {
        let k1 = IdentityKeyPair::from_seed(&[1; 32]).public_key();
        let k2 = IdentityKeyPair::from_seed(&[2; 32]).public_key();
        let mut store = TrustStore::new();
        assert_eq!(store.pin("@b:y", "D", k1, 10), IdentityChange::New);
        assert_eq!(store.pin("@b:y", "D", k1, 11), IdentityChange::Unchanged);
        assert_eq!(store.check_send("@b:y", "D", &k1), Ok(()));
        // Unverified contact: warn, but sending continues with the new key.
        assert_eq!(
            store.pin("@b:y", "D", k2, 12),
            IdentityChange::ReplacedExisting
        );
        assert_eq!(store.pinned("@b:y", "D"), Some(&k2));
        assert_eq!(store.check_send("@b:y", "D", &k2), Ok(()));
        assert!(store.check_send("@b:y", "D", &k1).is_err());
        // Verified contact: a change blocks sending until approved.
        store.set_verified("@b:y");
        assert_eq!(
            store.pin("@b:y", "D", k1, 13),
            IdentityChange::ReplacedExisting
        );
        assert!(store.check_send("@b:y", "D", &k1).is_err());
        // A new device of a verified user is not trusted silently either.
        assert_eq!(store.pin("@b:y", "E", k2, 14), IdentityChange::New);
        assert!(store.check_send("@b:y", "E", &k2).is_err());
        store.approve("@b:y", "D");
        assert_eq!(store.check_send("@b:y", "D", &k1), Ok(()));
    }
}
