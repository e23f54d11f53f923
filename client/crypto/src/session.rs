//! One Double Ratchet session (Signal's specification with Hush's bounds).
//!
//! Decryption never mutates the session before the AEAD check succeeds: every derivation is
//! computed into local values first and applied only after authentication. A failed decrypt
//! therefore leaves the session (and its serialized form) byte-identical.

use std::collections::VecDeque;
use std::fmt;

use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::consts::{
    KEY_LEN, MAX_ID_LEN, MAX_PLAINTEXT_LEN, MAX_RECEIVER_CHAINS, MAX_SKIP, MAX_SKIPPED_KEYS,
    MAX_STATE_LEN, MAX_UNACKNOWLEDGED_SESSION_AGE_SECS, SESSION_STATE_VERSION,
    SKIPPED_KEY_TTL_SECS,
};
use crate::encoding::{Reader, Writer};
use crate::errors::{DecodeError, DecryptError, EncryptError};
use crate::identity::IdentityKey;
use crate::keys::{diffie_hellman, Curve25519PublicKey, Curve25519Secret};
use crate::message::{Header, PreKeyMessage, RatchetMessage};
use crate::ratchet::{ChainKey, MessageKey, RootKey};

/// What the initiator repeats in every message until the responder answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingPreKey {
    pub(crate) identity_key: IdentityKey,
    pub(crate) signed_prekey_id: u32,
    pub(crate) one_time_key_id: Option<u32>,
    pub(crate) sender_user: String,
    pub(crate) sender_device: String,
    /// When the session was started (seconds, caller's clock); `None` for sessions stored in
    /// state version 1, which never count as stale.
    pub(crate) created_at: Option<u64>,
}

#[derive(Clone)]
struct ReceiverChain {
    ratchet_key: Curve25519PublicKey,
    /// `None` once every message of the chain (up to its announced end) was received.
    chain: Option<ChainKey>,
    /// PN announced by the peer when it moved on: the chain's length.
    end: Option<u32>,
    /// When a newer chain replaced this one (seconds, caller's clock).
    superseded_at: Option<u64>,
}

#[derive(Clone)]
struct SkippedKey {
    ratchet_key: Curve25519PublicKey,
    key: MessageKey,
    stored_at: u64,
}

/// A message that may be encrypted: a plain ratchet message or, while the peer has not
/// answered yet, a prekey message carrying the X3DH initiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutgoingMessage {
    /// Type 0.
    PreKey(Box<PreKeyMessage>),
    /// Type 1.
    Normal(RatchetMessage),
}

impl OutgoingMessage {
    /// The envelope `type`: 0 for a prekey message, 1 otherwise.
    pub fn message_type(&self) -> u8 {
        match self {
            Self::PreKey(_) => 0,
            Self::Normal(_) => 1,
        }
    }

    /// The wire bytes (the envelope `body` before base64).
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Self::PreKey(m) => m.to_bytes(),
            Self::Normal(m) => m.to_bytes(),
        }
    }
}

/// A Double Ratchet session with one peer device.
#[derive(Clone)]
pub struct Session {
    remote_identity: IdentityKey,
    associated_data: Vec<u8>,
    base_key: Curve25519PublicKey,
    root_key: RootKey,
    ratchet_secret: Curve25519Secret,
    ratchet_public: Curve25519PublicKey,
    sending_chain: Option<ChainKey>,
    previous_counter: u32,
    receivers: VecDeque<ReceiverChain>,
    skipped: VecDeque<SkippedKey>,
    pending: Option<PendingPreKey>,
}

/// The result of a successful tentative decryption, applied only after authentication.
enum Plan {
    Skipped(usize),
    Advance {
        chain_index: usize,
        next: Option<ChainKey>,
        new_skipped: Vec<MessageKey>,
    },
    Step(Box<StepPlan>),
}

struct StepPlan {
    root_key: RootKey,
    ratchet_secret: Curve25519Secret,
    sending_chain: ChainKey,
    receiver: ReceiverChain,
    new_skipped: Vec<MessageKey>,
}

impl Session {
    /// Alice's side after X3DH: a fresh ratchet key, DHr = SPK_B, (RK, CKs) = KDF_RK(SK, DH).
    pub(crate) fn new_initiator<R: RngCore + CryptoRng>(
        rng: &mut R,
        shared_secret: Zeroizing<[u8; KEY_LEN]>,
        associated_data: Vec<u8>,
        remote_identity: IdentityKey,
        remote_signed_prekey: &Curve25519PublicKey,
        base_key: Curve25519PublicKey,
        pending: PendingPreKey,
    ) -> Result<Self, DecryptError> {
        let ratchet_secret = Curve25519Secret::generate(rng);
        let dh = diffie_hellman(&ratchet_secret, remote_signed_prekey)
            .map_err(|_| DecryptError::NonContributory)?;
        let (root_key, sending_chain) = RootKey::new(shared_secret).step(&dh);
        Ok(Self {
            remote_identity,
            associated_data,
            base_key,
            root_key,
            ratchet_public: ratchet_secret.public_key(),
            ratchet_secret,
            sending_chain: Some(sending_chain),
            previous_counter: 0,
            receivers: VecDeque::new(),
            skipped: VecDeque::new(),
            pending: Some(pending),
        })
    }

    /// Bob's side after X3DH: DHs = the SPK key pair, RK = SK, no chains until the first
    /// message arrives (it is decrypted at once by the caller).
    pub(crate) fn new_responder(
        shared_secret: Zeroizing<[u8; KEY_LEN]>,
        associated_data: Vec<u8>,
        remote_identity: IdentityKey,
        signed_prekey: Curve25519Secret,
        base_key: Curve25519PublicKey,
    ) -> Self {
        Self {
            remote_identity,
            associated_data,
            base_key,
            root_key: RootKey::new(shared_secret),
            ratchet_public: signed_prekey.public_key(),
            ratchet_secret: signed_prekey,
            sending_chain: None,
            previous_counter: 0,
            receivers: VecDeque::new(),
            skipped: VecDeque::new(),
            pending: None,
        }
    }

    /// The peer device's identity key.
    pub fn remote_identity(&self) -> &IdentityKey {
        &self.remote_identity
    }

    /// The initiator's base key EK_A: identifies the X3DH handshake that made this session.
    pub fn base_key(&self) -> &Curve25519PublicKey {
        &self.base_key
    }

    /// True while the peer has not answered, so messages go out as prekey messages.
    pub fn has_pending_prekey(&self) -> bool {
        self.pending.is_some()
    }

    /// True when this session is still waiting for the peer's first answer more than
    /// [`MAX_UNACKNOWLEDGED_SESSION_AGE_SECS`] after it was started (`now` in seconds): it
    /// should no longer be used for sending.
    pub fn is_stale_unacknowledged(&self, now: u64) -> bool {
        self.pending
            .as_ref()
            .and_then(|p| p.created_at)
            .is_some_and(|started| {
                now.saturating_sub(started) > MAX_UNACKNOWLEDGED_SESSION_AGE_SECS
            })
    }

    /// Number of stored skipped message keys.
    pub fn skipped_key_count(&self) -> usize {
        self.skipped.len()
    }

    /// Number of receiving chains kept.
    pub fn receiver_chain_count(&self) -> usize {
        self.receivers.len()
    }

    /// Encrypts one message. Persist the session before the result leaves the device.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<OutgoingMessage, EncryptError> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(EncryptError::PlaintextTooLong(plaintext.len()));
        }
        let chain = self.sending_chain.as_ref().ok_or(EncryptError::NoSession)?;
        // Refuse the last index so that N never wraps around (P20).
        let (key, next) = chain.step().ok_or(EncryptError::CounterExhausted)?;
        let header = Header {
            ratchet_key: self.ratchet_public,
            previous_counter: self.previous_counter,
            counter: key.index(),
        };
        let ad = self.message_ad(&header);
        let ciphertext = key.encrypt(plaintext, &ad);
        self.sending_chain = Some(next);
        let message = RatchetMessage { header, ciphertext };
        Ok(match &self.pending {
            Some(p) => OutgoingMessage::PreKey(Box::new(PreKeyMessage {
                identity_key: p.identity_key,
                base_key: self.base_key,
                signed_prekey_id: p.signed_prekey_id,
                one_time_key_id: p.one_time_key_id,
                sender_user: p.sender_user.clone(),
                sender_device: p.sender_device.clone(),
                message,
            })),
            None => OutgoingMessage::Normal(message),
        })
    }

    /// Decrypts one ratchet message. `now` is the caller's clock in seconds; it timestamps
    /// skipped keys and expires old ones. On error the session is unchanged.
    pub fn decrypt<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
        message: &RatchetMessage,
        now: u64,
    ) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
        let header = &message.header;
        let ad = self.message_ad(header);
        let (plan, key) = self.plan(rng, header, now)?;
        let plaintext = key
            .decrypt(&message.ciphertext, &ad)
            .ok_or(DecryptError::AuthenticationFailed)?;
        self.apply(plan, header, now);
        Ok(plaintext)
    }

    fn message_ad(&self, header: &Header) -> Vec<u8> {
        let mut ad = Vec::with_capacity(self.associated_data.len() + crate::consts::HEADER_LEN);
        ad.extend_from_slice(&self.associated_data);
        ad.extend_from_slice(&header.to_bytes());
        ad
    }

    fn plan<R: RngCore + CryptoRng>(
        &self,
        rng: &mut R,
        header: &Header,
        now: u64,
    ) -> Result<(Plan, MessageKey), DecryptError> {
        // N = u32::MAX is never sent (the sender refuses it), so it is never valid.
        if header.counter == u32::MAX {
            return Err(DecryptError::BeyondChainEnd);
        }
        if let Some(pos) = self.skipped.iter().position(|k| {
            k.ratchet_key == header.ratchet_key
                && k.key.index() == header.counter
                && !expired(k.stored_at, now)
        }) {
            return Ok((Plan::Skipped(pos), self.skipped[pos].key.clone()));
        }
        if let Some(chain_index) = self
            .receivers
            .iter()
            .position(|c| c.ratchet_key == header.ratchet_key)
        {
            let receiver = &self.receivers[chain_index];
            if receiver.superseded_at.is_some_and(|t| expired(t, now)) {
                return Err(DecryptError::UnknownChain);
            }
            let chain = receiver.chain.as_ref().ok_or(DecryptError::Duplicate {
                counter: header.counter,
            })?;
            if header.counter < chain.index() {
                return Err(DecryptError::Duplicate {
                    counter: header.counter,
                });
            }
            if receiver.end.is_some_and(|end| header.counter >= end) {
                return Err(DecryptError::BeyondChainEnd);
            }
            let (new_skipped, key, next) = derive_to(chain, header.counter)?;
            let next = match receiver.end {
                Some(end) if next.index() >= end => None,
                _ => Some(next),
            };
            return Ok((
                Plan::Advance {
                    chain_index,
                    next,
                    new_skipped,
                },
                key,
            ));
        }
        // A new ratchet key: a DH ratchet step. Check every bound before any derivation.
        if u64::from(header.counter) > u64::from(MAX_SKIP) {
            return Err(DecryptError::TooFarAhead {
                gap: u64::from(header.counter),
            });
        }
        if let Some(current) = self.receivers.front() {
            if let Some(chain) = &current.chain {
                if header.previous_counter < chain.index() {
                    return Err(DecryptError::BeyondChainEnd);
                }
            }
        }
        let dh = diffie_hellman(&self.ratchet_secret, &header.ratchet_key)
            .map_err(|_| DecryptError::NonContributory)?;
        let (root_key, receiving) = self.root_key.step(&dh);
        let ratchet_secret = Curve25519Secret::generate(rng);
        let dh = diffie_hellman(&ratchet_secret, &header.ratchet_key)
            .map_err(|_| DecryptError::NonContributory)?;
        let (root_key, sending_chain) = root_key.step(&dh);
        let (new_skipped, key, next) = derive_to(&receiving, header.counter)?;
        let plan = StepPlan {
            root_key,
            ratchet_secret,
            sending_chain,
            receiver: ReceiverChain {
                ratchet_key: header.ratchet_key,
                chain: Some(next),
                end: None,
                superseded_at: None,
            },
            new_skipped,
        };
        Ok((Plan::Step(Box::new(plan)), key))
    }

    fn apply(&mut self, plan: Plan, header: &Header, now: u64) {
        match plan {
            Plan::Skipped(pos) => {
                self.skipped.remove(pos);
            }
            Plan::Advance {
                chain_index,
                next,
                new_skipped,
            } => {
                if let Some(receiver) = self.receivers.get_mut(chain_index) {
                    receiver.chain = next;
                }
                self.store_skipped(header.ratchet_key, new_skipped, now);
            }
            Plan::Step(step) => {
                let StepPlan {
                    root_key,
                    ratchet_secret,
                    sending_chain,
                    receiver,
                    new_skipped,
                } = *step;
                if let Some(current) = self.receivers.front_mut() {
                    current.end = Some(header.previous_counter);
                    current.superseded_at = Some(now);
                    if current
                        .chain
                        .as_ref()
                        .is_some_and(|c| c.index() >= header.previous_counter)
                    {
                        current.chain = None;
                    }
                }
                self.receivers.push_front(receiver);
                while self.receivers.len() > MAX_RECEIVER_CHAINS {
                    if let Some(old) = self.receivers.pop_back() {
                        self.skipped.retain(|k| k.ratchet_key != old.ratchet_key);
                    }
                }
                self.previous_counter = self.sending_chain.as_ref().map_or(0, ChainKey::index);
                self.ratchet_public = ratchet_secret.public_key();
                self.ratchet_secret = ratchet_secret;
                self.sending_chain = Some(sending_chain);
                self.root_key = root_key;
                self.store_skipped(header.ratchet_key, new_skipped, now);
            }
        }
        // The peer decrypted our prekey message, or it would not be answering.
        self.pending = None;
        self.expire(now);
    }

    fn store_skipped(&mut self, ratchet_key: Curve25519PublicKey, keys: Vec<MessageKey>, now: u64) {
        for key in keys {
            self.skipped.push_back(SkippedKey {
                ratchet_key,
                key,
                stored_at: now,
            });
        }
        while self.skipped.len() > MAX_SKIPPED_KEYS {
            self.skipped.pop_front();
        }
    }

    /// Erases skipped keys and superseded receiving chains older than the TTL.
    pub fn expire(&mut self, now: u64) {
        self.skipped.retain(|k| !expired(k.stored_at, now));
        let before = self.receivers.len();
        let mut dropped = Vec::new();
        self.receivers.retain(|c| {
            let keep = !c.superseded_at.is_some_and(|t| expired(t, now));
            if !keep {
                dropped.push(c.ratchet_key);
            }
            keep
        });
        if self.receivers.len() != before {
            self.skipped.retain(|k| !dropped.contains(&k.ratchet_key));
        }
    }

    /// Versioned binary serialization of the whole state (secrets included). Encrypt it with
    /// [`crate::pickle`] before it touches a disk.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::new();
        self.write(&mut w);
        w.into_bytes()
    }

    /// Parses [`Session::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_STATE_LEN {
            return Err(DecodeError::TooLong {
                field: "session",
                len: bytes.len(),
                max: MAX_STATE_LEN,
            });
        }
        let mut r = Reader::new(bytes);
        let session = Self::read(&mut r)?;
        r.finish()?;
        Ok(session)
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.u8(SESSION_STATE_VERSION);
        w.raw(&self.remote_identity.to_bytes());
        w.bytes32(&self.associated_data);
        w.raw(self.base_key.as_bytes());
        w.raw(self.root_key.as_bytes());
        w.raw(self.ratchet_secret.to_bytes().as_ref());
        w.option(self.sending_chain.as_ref(), write_chain);
        w.u32(self.previous_counter);
        w.u32(self.receivers.len() as u32);
        for c in &self.receivers {
            w.raw(c.ratchet_key.as_bytes());
            w.option(c.chain.as_ref(), write_chain);
            w.option(c.end.as_ref(), |w, v| w.u32(*v));
            w.option(c.superseded_at.as_ref(), |w, v| w.u64(*v));
        }
        w.u32(self.skipped.len() as u32);
        for k in &self.skipped {
            w.raw(k.ratchet_key.as_bytes());
            w.u32(k.key.index());
            w.raw(k.key.as_bytes());
            w.u64(k.stored_at);
        }
        w.option(self.pending.as_ref(), |w, p| {
            w.raw(&p.identity_key.to_bytes());
            w.u32(p.signed_prekey_id);
            w.option(p.one_time_key_id.as_ref(), |w, v| w.u32(*v));
            w.bytes16(p.sender_user.as_bytes());
            w.bytes16(p.sender_device.as_bytes());
            w.option(p.created_at.as_ref(), |w, v| w.u64(*v));
        });
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let version = r.u8()?;
        if version != SESSION_STATE_VERSION && version != 1 {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let remote_identity = IdentityKey::from_bytes(&r.array()?)?;
        let associated_data = r.bytes32("associated_data", 4 * MAX_ID_LEN + 256)?.to_vec();
        let base_key = Curve25519PublicKey::from_bytes(r.array()?);
        let root_key = RootKey::new(Zeroizing::new(r.array()?));
        let ratchet_secret = Curve25519Secret::from_bytes(*Zeroizing::new(r.array()?));
        let sending_chain = r.option("sending_chain", read_chain)?;
        let previous_counter = r.u32()?;
        let n = r.count("receivers", MAX_RECEIVER_CHAINS)?;
        let mut receivers = VecDeque::with_capacity(n);
        for _ in 0..n {
            receivers.push_back(ReceiverChain {
                ratchet_key: Curve25519PublicKey::from_bytes(r.array()?),
                chain: r.option("chain", read_chain)?,
                end: r.option("end", |r| r.u32())?,
                superseded_at: r.option("superseded_at", |r| r.u64())?,
            });
        }
        let n = r.count("skipped", MAX_SKIPPED_KEYS)?;
        let mut skipped = VecDeque::with_capacity(n);
        for _ in 0..n {
            let ratchet_key = Curve25519PublicKey::from_bytes(r.array()?);
            let index = r.u32()?;
            let key = MessageKey::new(Zeroizing::new(r.array()?), index);
            let stored_at = r.u64()?;
            skipped.push_back(SkippedKey {
                ratchet_key,
                key,
                stored_at,
            });
        }
        let pending = r.option("pending", |r| {
            Ok(PendingPreKey {
                identity_key: IdentityKey::from_bytes(&r.array()?)?,
                signed_prekey_id: r.u32()?,
                one_time_key_id: r.option("one_time_key_id", |r| r.u32())?,
                sender_user: r.string16("sender_user", MAX_ID_LEN)?,
                sender_device: r.string16("sender_device", MAX_ID_LEN)?,
                created_at: if version == 1 {
                    None
                } else {
                    r.option("created_at", |r| r.u64())?
                },
            })
        })?;
        Ok(Self {
            remote_identity,
            associated_data,
            base_key,
            root_key,
            ratchet_public: ratchet_secret.public_key(),
            ratchet_secret,
            sending_chain,
            previous_counter,
            receivers,
            skipped,
            pending,
        })
    }

    #[cfg(test)]
    pub(crate) fn set_sending_index_for_test(&mut self, index: u32) {
        if let Some(chain) = &self.sending_chain {
            let key = Zeroizing::new(*chain.as_bytes());
            self.sending_chain = Some(ChainKey::new(key, index));
        }
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("remote_identity", &self.remote_identity)
            .field("base_key", &self.base_key)
            .field("ratchet_key", &self.ratchet_public)
            .field("pending_prekey", &self.pending.is_some())
            .field("receiver_chains", &self.receivers.len())
            .field("skipped_keys", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

fn write_chain(w: &mut Writer, c: &ChainKey) {
    w.raw(c.as_bytes());
    w.u32(c.index());
}

fn read_chain(r: &mut Reader<'_>) -> Result<ChainKey, DecodeError> {
    let key = Zeroizing::new(r.array()?);
    Ok(ChainKey::new(key, r.u32()?))
}

fn expired(since: u64, now: u64) -> bool {
    now.saturating_sub(since) >= SKIPPED_KEY_TTL_SECS
}

/// Advances `chain` to message `counter`: the skipped keys before it, its key, and the chain
/// key after it. The gap is checked against MAX_SKIP before anything is derived (P5).
fn derive_to(
    chain: &ChainKey,
    counter: u32,
) -> Result<(Vec<MessageKey>, MessageKey, ChainKey), DecryptError> {
    let gap = u64::from(counter).saturating_sub(u64::from(chain.index()));
    if gap > u64::from(MAX_SKIP) {
        return Err(DecryptError::TooFarAhead { gap });
    }
    let mut skipped = Vec::with_capacity(gap as usize);
    let (mut key, mut next) = chain.step().ok_or(DecryptError::BeyondChainEnd)?;
    while key.index() < counter {
        skipped.push(key);
        (key, next) = next.step().ok_or(DecryptError::BeyondChainEnd)?;
    }
    Ok((skipped, key, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::IdentityKeyPair;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn pair(rng: &mut StdRng) -> (Session, Session) {
        let ik_a = IdentityKeyPair::from_seed(&[1; 32]).public_key();
        let ik_b = IdentityKeyPair::from_seed(&[2; 32]).public_key();
        let spk = Curve25519Secret::generate(rng);
        let base = Curve25519Secret::generate(rng).public_key();
        let pending = PendingPreKey {
            identity_key: ik_a,
            signed_prekey_id: 1,
            one_time_key_id: None,
            sender_user: "@a:x".into(),
            sender_device: "A".into(),
            created_at: Some(0),
        };
        let alice = Session::new_initiator(
            rng,
            Zeroizing::new([9; 32]),
            b"ad".to_vec(),
            ik_b,
            &spk.public_key(),
            base,
            pending,
        );
        let bob = Session::new_responder(Zeroizing::new([9; 32]), b"ad".to_vec(), ik_a, spk, base);
        match alice {
            Ok(alice) => (alice, bob),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn version_1_sessions_are_read_without_a_start_time_and_never_go_stale() {
        let mut rng = StdRng::seed_from_u64(3);
        let (mut alice, _) = pair(&mut rng);
        if let Some(p) = alice.pending.as_mut() {
            p.created_at = None;
        }
        let mut w = Writer::new();
        alice.write(&mut w);
        let v2 = w.into_bytes();
        assert_eq!(v2[0], SESSION_STATE_VERSION);
        // Version 1 is version 2 without the trailing start-time option (absent: one 0 byte).
        assert_eq!(v2.last(), Some(&0));
        let mut v1 = v2[..v2.len() - 1].to_vec();
        v1[0] = 1;
        let read = Session::read(&mut Reader::new(&v1)).unwrap_or_else(|e| panic!("{e}"));
        assert!(read.has_pending_prekey());
        assert!(!read.is_stale_unacknowledged(u64::MAX));
        let mut w = Writer::new();
        read.write(&mut w);
        assert_eq!(w.into_bytes().as_slice(), v2.as_slice());
        let mut bad = v1.clone();
        bad[0] = 3;
        assert!(Session::read(&mut Reader::new(&bad)).is_err());
    }

    fn ratchet(m: &OutgoingMessage) -> RatchetMessage {
        match m {
            OutgoingMessage::PreKey(p) => p.message.clone(),
            OutgoingMessage::Normal(m) => m.clone(),
        }
    }

    #[test]
    fn round_trip_and_dh_steps() {
        let mut rng = StdRng::seed_from_u64(1);
        let (mut alice, mut bob) = pair(&mut rng);
        for round in 0..4u8 {
            let m = alice.encrypt(&[round]).map(|m| ratchet(&m));
            let pt = m.map(|m| bob.decrypt(&mut rng, &m, 0));
            assert!(matches!(pt, Ok(Ok(ref p)) if p.as_slice() == [round]));
            let m = bob.encrypt(&[round, 1]).map(|m| ratchet(&m));
            let pt = m.map(|m| alice.decrypt(&mut rng, &m, 0));
            assert!(matches!(pt, Ok(Ok(ref p)) if p.as_slice() == [round, 1]));
        }
        assert!(!alice.has_pending_prekey());
        assert!(alice.receiver_chain_count() <= MAX_RECEIVER_CHAINS);
    }

    /// P20: a session whose sending counter reached u32::MAX refuses to encrypt instead of
    /// wrapping around, and the receiver refuses N = u32::MAX.
    #[test]
    fn p20_counter_overflow_is_refused() {
        let mut rng = StdRng::seed_from_u64(2);
        let (mut alice, mut bob) = pair(&mut rng);
        alice.set_sending_index_for_test(u32::MAX - 1);
        let last = alice.encrypt(b"last");
        assert!(last.is_ok());
        let before = alice.to_bytes();
        assert_eq!(
            alice.encrypt(b"x").err(),
            Some(EncryptError::CounterExhausted)
        );
        assert_eq!(alice.to_bytes(), before);
        let mut forged = last.map(|m| ratchet(&m)).unwrap_or_else(|e| panic!("{e}"));
        forged.header.counter = u32::MAX;
        let before = bob.to_bytes();
        assert_eq!(
            bob.decrypt(&mut rng, &forged, 0).err(),
            Some(DecryptError::BeyondChainEnd)
        );
        assert_eq!(bob.to_bytes(), before);
    }

    /// P6/P8: flipping any bit of the associated data (identity binding) on the receiving
    /// side fails and leaves that session byte-identical.
    #[test]
    fn p06_associated_data_bit_flips_fail_without_state_change() {
        let mut rng = StdRng::seed_from_u64(4);
        let (mut alice, bob) = pair(&mut rng);
        let m = alice
            .encrypt(b"bound")
            .map(|m| ratchet(&m))
            .unwrap_or_else(|e| panic!("{e}"));
        for bit in 0..bob.associated_data.len() * 8 {
            let mut other = bob.clone();
            other.associated_data[bit / 8] ^= 1 << (bit % 8);
            let before = other.to_bytes();
            assert_eq!(
                other.decrypt(&mut rng, &m, 0).err(),
                Some(DecryptError::AuthenticationFailed)
            );
            assert_eq!(other.to_bytes(), before);
        }
        let mut bob = bob;
        assert!(bob.decrypt(&mut rng, &m, 0).is_ok());
    }

    #[test]
    fn p21_session_debug_is_redacted() {
        let mut rng = StdRng::seed_from_u64(3);
        let (alice, _) = pair(&mut rng);
        let debug = format!("{alice:?}");
        let secret = hex::encode(*alice.ratchet_secret.to_bytes());
        assert!(!debug.contains(&secret));
        assert!(!debug.contains(&hex::encode(alice.root_key.as_bytes())));
        assert!(debug.starts_with("Session { remote_identity: IdentityKey("));
    }
}
