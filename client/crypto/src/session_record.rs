//! Sesame's per-device record: one active session and up to [`MAX_INACTIVE_SESSIONS`]
//! inactive ones. A message that decrypts in an inactive session makes it active, so two
//! devices that initiate at the same time converge on one session.

use std::collections::VecDeque;

use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::consts::{MAX_ID_LEN, MAX_INACTIVE_SESSIONS, MAX_STATE_LEN, STATE_VERSION};
use crate::encoding::{Reader, Writer};
use crate::errors::{DecodeError, DecryptError, EncryptError};
use crate::keys::Curve25519PublicKey;
use crate::message::{PreKeyMessage, RatchetMessage};
use crate::session::{OutgoingMessage, Session};

/// A received message, as parsed from an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncomingMessage {
    /// Type 0: an X3DH initiation plus the first ratchet message.
    PreKey(Box<PreKeyMessage>),
    /// Type 1: a ratchet message.
    Normal(RatchetMessage),
}

impl IncomingMessage {
    /// Parses a body of the given envelope type (0 or 1).
    pub fn from_parts(message_type: u8, body: &[u8]) -> Result<Self, DecodeError> {
        match message_type {
            0 => PreKeyMessage::from_bytes(body).map(|m| Self::PreKey(Box::new(m))),
            1 => RatchetMessage::from_bytes(body).map(Self::Normal),
            _ => Err(DecodeError::InvalidField("type")),
        }
    }
}

/// All sessions with one peer device.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    user_id: String,
    device_id: String,
    active: Option<Session>,
    inactive: VecDeque<Session>,
    generation: u64,
}

impl SessionRecord {
    /// An empty record for a peer device. Identifiers come from verified device keys or a
    /// parsed prekey message, which both bound them to 1..=255 bytes.
    pub fn new(user_id: &str, device_id: &str) -> Self {
        Self {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            active: None,
            inactive: VecDeque::new(),
            generation: 0,
        }
    }

    /// The peer's user ID.
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// The peer's device ID.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The active session, if any.
    pub fn active(&self) -> Option<&Session> {
        self.active.as_ref()
    }

    /// Whether sending needs a new session first (claim a bundle, X3DH, [`Self::promote`]):
    /// there is no active session, or the active one is still waiting for the peer's first
    /// answer more than [`crate::consts::MAX_UNACKNOWLEDGED_SESSION_AGE_SECS`] after it started
    /// (`now` in seconds). The stale session stays in the record, so a late answer still
    /// decrypts.
    pub fn needs_new_session(&self, now: u64) -> bool {
        self.active
            .as_ref()
            .is_none_or(|session| session.is_stale_unacknowledged(now))
    }

    /// Number of inactive sessions kept.
    pub fn inactive_count(&self) -> usize {
        self.inactive.len()
    }

    /// Increases with every change. A store must refuse to save a record whose generation is
    /// not greater than the stored one, which catches two sends from one snapshot (P1).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Makes `session` the active one; the previous active session becomes the newest inactive
    /// one and the oldest beyond the bound is dropped.
    pub fn promote(&mut self, session: Session) {
        if let Some(old) = self.active.replace(session) {
            self.inactive.push_front(old);
            self.inactive.truncate(MAX_INACTIVE_SESSIONS);
        }
        self.bump();
    }

    /// Whether any session was made by the handshake with this base key (dedupe of prekey
    /// messages: a repeated or replayed initiation never creates a second session).
    pub fn has_base_key(&self, base_key: &Curve25519PublicKey) -> bool {
        self.sessions().any(|s| s.base_key() == base_key)
    }

    /// Encrypts with the active session. Persist the record before sending the result.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<OutgoingMessage, EncryptError> {
        let session = self.active.as_mut().ok_or(EncryptError::NoSession)?;
        let out = session.encrypt(plaintext)?;
        self.bump();
        Ok(out)
    }

    /// Decrypts a ratchet message, or a prekey message of a handshake this record already
    /// knows. Tries the active session first, then the inactive ones, and promotes the one
    /// that works. A prekey message for an unknown handshake yields
    /// [`DecryptError::NoMatchingSession`]: pass it to [`crate::account::Account::accept_inbound`].
    /// On error the record is unchanged.
    pub fn decrypt<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
        message: &IncomingMessage,
        now: u64,
    ) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
        let (inner, base_key) = match message {
            IncomingMessage::Normal(m) => (m, None),
            IncomingMessage::PreKey(p) => (&p.message, Some(&p.base_key)),
        };
        let matches = |s: &Session| base_key.is_none_or(|b| s.base_key() == b);
        let mut first_error = None;
        if let Some(active) = self.active.as_mut().filter(|s| matches(s)) {
            match active.decrypt(rng, inner, now) {
                Ok(plaintext) => {
                    self.bump();
                    return Ok(plaintext);
                }
                Err(e) => first_error = Some(e),
            }
        }
        for i in 0..self.inactive.len() {
            if !matches(&self.inactive[i]) {
                continue;
            }
            match self.inactive[i].decrypt(rng, inner, now) {
                Ok(plaintext) => {
                    if let Some(session) = self.inactive.remove(i) {
                        self.promote(session);
                    }
                    return Ok(plaintext);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(match (base_key, first_error) {
            (Some(_), Some(e)) => e,
            (None, Some(e)) if self.inactive.is_empty() => e,
            _ => DecryptError::NoMatchingSession,
        })
    }

    /// Erases expired skipped keys and chains in every session.
    pub fn expire(&mut self, now: u64) {
        for s in self.active.iter_mut().chain(self.inactive.iter_mut()) {
            s.expire(now);
        }
        self.bump();
    }

    fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.active.iter().chain(self.inactive.iter())
    }

    fn bump(&mut self) {
        self.generation = self.generation.saturating_add(1);
    }

    /// Versioned binary serialization (secrets included; encrypt with [`crate::pickle`]).
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::new();
        w.u8(STATE_VERSION);
        w.bytes16(self.user_id.as_bytes());
        w.bytes16(self.device_id.as_bytes());
        w.u64(self.generation);
        w.option(self.active.as_ref(), |w, s| s.write(w));
        w.u32(self.inactive.len() as u32);
        for s in &self.inactive {
            s.write(&mut w);
        }
        w.into_bytes()
    }

    /// Parses [`SessionRecord::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_STATE_LEN {
            return Err(DecodeError::TooLong {
                field: "record",
                len: bytes.len(),
                max: MAX_STATE_LEN,
            });
        }
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != STATE_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let user_id = r.string16("user_id", MAX_ID_LEN)?;
        let device_id = r.string16("device_id", MAX_ID_LEN)?;
        let generation = r.u64()?;
        let active = r.option("active", Session::read)?;
        let n = r.count("inactive", MAX_INACTIVE_SESSIONS)?;
        let mut inactive = VecDeque::with_capacity(n);
        for _ in 0..n {
            inactive.push_back(Session::read(&mut r)?);
        }
        r.finish()?;
        Ok(Self {
            user_id,
            device_id,
            active,
            inactive,
            generation,
        })
    }
}
