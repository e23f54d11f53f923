//! Double Ratchet key chains: the root key (KDF_RK), chain keys (KDF_CK), message keys and the
//! message AEAD (ChaCha20-Poly1305 with key and nonce derived from the message key).

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use zeroize::Zeroizing;

use crate::consts::{
    AEAD_KEY_LEN, AEAD_NONCE_LEN, CHAIN_KEY_SEED, INFO_MESSAGE_KEYS, INFO_RATCHET, KEY_LEN,
    MESSAGE_KEY_MATERIAL_LEN, MESSAGE_KEY_SEED,
};
use crate::kdf::{hkdf_array, hkdf_zero_salt_array, hmac_keyed, hmac_sha256, hmac_with};

/// The root key RK. Zeroized on drop.
#[derive(Clone)]
pub struct RootKey(Zeroizing<[u8; KEY_LEN]>);

impl RootKey {
    /// Wraps 32 secret bytes (the X3DH SK for the first root key).
    pub fn new(bytes: Zeroizing<[u8; KEY_LEN]>) -> Self {
        Self(bytes)
    }

    /// KDF_RK: HKDF-SHA256(salt = RK, IKM = DH output, info = "Hush-Ratchet-v1") -> 64 bytes,
    /// the new root key followed by a new chain key.
    pub fn step(&self, dh_output: &[u8; KEY_LEN]) -> (RootKey, ChainKey) {
        let okm = hkdf_array::<64>(Some(self.0.as_ref()), dh_output, INFO_RATCHET);
        let mut rk = Zeroizing::new([0u8; KEY_LEN]);
        let mut ck = Zeroizing::new([0u8; KEY_LEN]);
        rk.copy_from_slice(&okm[..KEY_LEN]);
        ck.copy_from_slice(&okm[KEY_LEN..]);
        (RootKey(rk), ChainKey::new(ck, 0))
    }

    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RootKey(..)")
    }
}

/// A sending or receiving chain key with the index of the next message key it yields.
#[derive(Clone)]
pub struct ChainKey {
    key: Zeroizing<[u8; KEY_LEN]>,
    index: u32,
}

impl ChainKey {
    /// Wraps a chain key positioned at `index`.
    pub fn new(key: Zeroizing<[u8; KEY_LEN]>, index: u32) -> Self {
        Self { key, index }
    }

    /// Index of the message key this chain key yields next.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// KDF_CK, message half: MK = HMAC-SHA256(CK, 0x01).
    pub fn message_key(&self) -> MessageKey {
        MessageKey {
            key: hmac_sha256(self.key.as_ref(), &[MESSAGE_KEY_SEED]),
            index: self.index,
        }
    }

    /// KDF_CK, chain half: CK' = HMAC-SHA256(CK, 0x02). `None` once the u32 index is exhausted.
    pub fn next(&self) -> Option<ChainKey> {
        let index = self.index.checked_add(1)?;
        Some(ChainKey {
            key: hmac_sha256(self.key.as_ref(), &[CHAIN_KEY_SEED]),
            index,
        })
    }

    /// Both halves of KDF_CK at once: (MK, CK') = (HMAC-SHA256(CK, 0x01),
    /// HMAC-SHA256(CK, 0x02)), the same values as [`ChainKey::message_key`] and
    /// [`ChainKey::next`], with the chain key absorbed into HMAC once instead of twice.
    /// `None` once the u32 index is exhausted.
    pub fn step(&self) -> Option<(MessageKey, ChainKey)> {
        let index = self.index.checked_add(1)?;
        let keyed = hmac_keyed(&self.key);
        let message_key = MessageKey {
            key: hmac_with(&keyed, &[MESSAGE_KEY_SEED]),
            index: self.index,
        };
        let next = ChainKey {
            key: hmac_with(&keyed, &[CHAIN_KEY_SEED]),
            index,
        };
        Some((message_key, next))
    }

    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.key
    }
}

impl fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainKey")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// A message key: used for exactly one message, then erased.
#[derive(Clone)]
pub struct MessageKey {
    key: Zeroizing<[u8; KEY_LEN]>,
    index: u32,
}

impl MessageKey {
    /// Wraps a stored (skipped) message key.
    pub fn new(key: Zeroizing<[u8; KEY_LEN]>, index: u32) -> Self {
        Self { key, index }
    }

    /// The message counter N this key belongs to.
    pub fn index(&self) -> u32 {
        self.index
    }

    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    /// HKDF-SHA256(salt = 32 zero bytes, IKM = MK, info = "Hush-MsgKeys-v1") -> 44 bytes:
    /// the ChaCha20-Poly1305 key (32) followed by the nonce (12).
    fn expand(&self) -> Zeroizing<[u8; MESSAGE_KEY_MATERIAL_LEN]> {
        hkdf_zero_salt_array::<MESSAGE_KEY_MATERIAL_LEN>(self.key.as_ref(), INFO_MESSAGE_KEYS)
    }

    /// Encrypts one message; consumes the key.
    pub fn encrypt(self, plaintext: &[u8], associated_data: &[u8]) -> Vec<u8> {
        let material = self.expand();
        let (key, nonce) = split_material(&material);
        aead_seal(&key, &nonce, plaintext, associated_data)
    }

    /// Decrypts one message; `None` on authentication failure.
    pub fn decrypt(&self, ciphertext: &[u8], associated_data: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let material = self.expand();
        let (key, nonce) = split_material(&material);
        aead_open(&key, &nonce, ciphertext, associated_data)
    }
}

impl fmt::Debug for MessageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageKey")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

fn split_material(
    material: &[u8; MESSAGE_KEY_MATERIAL_LEN],
) -> (Zeroizing<[u8; AEAD_KEY_LEN]>, [u8; AEAD_NONCE_LEN]) {
    let mut key = Zeroizing::new([0u8; AEAD_KEY_LEN]);
    let mut nonce = [0u8; AEAD_NONCE_LEN];
    key.copy_from_slice(&material[..AEAD_KEY_LEN]);
    nonce.copy_from_slice(&material[AEAD_KEY_LEN..]);
    (key, nonce)
}

/// ChaCha20-Poly1305 (RFC 8439) seal: ciphertext || 16-byte tag.
pub(crate) fn aead_seal(
    key: &[u8; AEAD_KEY_LEN],
    nonce: &[u8; AEAD_NONCE_LEN],
    plaintext: &[u8],
    associated_data: &[u8],
) -> Vec<u8> {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    let payload = Payload {
        msg: plaintext,
        aad: associated_data,
    };
    // Encryption fails only for inputs beyond 256 GiB; plaintexts are bounded far below that.
    cipher
        .encrypt(Nonce::from_slice(nonce), payload)
        .unwrap_or_default()
}

/// ChaCha20-Poly1305 open; `None` on authentication failure.
pub(crate) fn aead_open(
    key: &[u8; AEAD_KEY_LEN],
    nonce: &[u8; AEAD_NONCE_LEN],
    ciphertext: &[u8],
    associated_data: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    let payload = Payload {
        msg: ciphertext,
        aad: associated_data,
    };
    cipher
        .decrypt(Nonce::from_slice(nonce), payload)
        .ok()
        .map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap_or_default()
    }

    fn h32(s: &str) -> [u8; 32] {
        crate::encoding::key_bytes(&h(s)).unwrap_or([0; 32])
    }

    const RFC8439_PLAINTEXT: &[u8] = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";

    /// RFC 8439 section 2.8.2 through the crate's seal and open.
    #[test]
    fn rfc8439_aead_vector() {
        let key: [u8; 32] = core::array::from_fn(|i| 0x80 + i as u8);
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&h("070000004041424344454647"));
        let aad = h("50515253c0c1c2c3c4c5c6c7");
        let sealed = aead_seal(&key, &nonce, RFC8439_PLAINTEXT, &aad);
        let expected_ct = "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b6116";
        assert_eq!(hex::encode(&sealed[..RFC8439_PLAINTEXT.len()]), expected_ct);
        assert_eq!(
            hex::encode(&sealed[RFC8439_PLAINTEXT.len()..]),
            "1ae10b594f09e26a7e902ecbd0600691"
        );
        let opened = aead_open(&key, &nonce, &sealed, &aad);
        assert_eq!(
            opened.as_deref().map(Vec::as_slice),
            Some(RFC8439_PLAINTEXT)
        );
        let mut bad = sealed.clone();
        bad[0] ^= 1;
        assert!(aead_open(&key, &nonce, &bad, &aad).is_none());
    }

    /// RFC 8439 appendix A.5: decryption of a given ciphertext.
    #[test]
    fn rfc8439_appendix_a5_decryption() {
        let key = h32("1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0");
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&h("000000000102030405060708"));
        let aad = h("f33388860000000000004e91");
        let ct = h("64a0861575861af460f062c79be643bd5e805cfd345cf389f108670ac76c8cb24c6cfc18755d43eea09ee94e382d26b0bdb7b73c321b0100d4f03b7f355894cf332f830e710b97ce98c8a84abd0b948114ad176e008d33bd60f982b1ff37c8559797a06ef4f0ef61c186324e2b3506383606907b6a7c02b0f9f6157b53c867e4b9166c767b804d46a59b5216cde7a4e99040c5a40433225ee282a1b0a06c523eaf4534d7f83fa1155b0047718cbc546a0d072b04b3564eea1b422273f548271a0bb2316053fa76991955ebd63159434ecebb4e466dae5a1073a6727627097a1049e617d91d361094fa68f0ff77987130305beaba2eda04df997b714d6c6f2c29a6ad5cb4022b02709b");
        let tag = h("eead9d67890cbb22392336fea1851f38");
        let mut sealed = ct.clone();
        sealed.extend_from_slice(&tag);
        let opened = aead_open(&key, &nonce, &sealed, &aad);
        let text = opened.map(|p| String::from_utf8_lossy(&p).into_owned());
        assert!(text
            .as_deref()
            .unwrap_or("")
            .starts_with("Internet-Drafts are draft documents valid for a maximum of six months"));
    }

    /// libsignal KAT (reference 8.2 item 2): the KDF_CK chain step.
    #[test]
    fn libsignal_chain_key_kat() {
        let ck = ChainKey::new(
            Zeroizing::new(h32(
                "8ab72d6f4cc5ac0d387eaf463378ddb28edd07385b1cb01250c715982e7ad48f",
            )),
            0,
        );
        assert_eq!(
            hex::encode(ck.message_key().as_bytes()),
            "fae95235beda3d2e00b41cf2e655dada2405b4388cae0d251a51bcd2ebdd2e40"
        );
        let next = ck.next();
        assert_eq!(
            next.as_ref().map(|n| hex::encode(n.as_bytes())),
            Some("28e8f8fee54b801eef7c5cfb2f17f32c7b334485bbb70fac6ec10342a246d15d".to_owned())
        );
        assert_eq!(next.map(|n| n.index()), Some(1));
    }

    /// P20: the chain index never wraps around.
    #[test]
    fn p20_chain_index_does_not_wrap() {
        let ck = ChainKey::new(Zeroizing::new([1; 32]), u32::MAX);
        assert!(ck.next().is_none());
        assert!(ck.step().is_none());
    }

    /// The combined KDF_CK step yields exactly the separate halves, along a chain.
    #[test]
    fn combined_step_matches_message_key_and_next() {
        let mut ck = ChainKey::new(Zeroizing::new([0x42; 32]), 7);
        for _ in 0..50 {
            let (mk, next) = match ck.step() {
                Some(pair) => pair,
                None => panic!("index 7..57 cannot be exhausted"),
            };
            let separate_mk = ck.message_key();
            let separate_next = ck.next();
            assert_eq!(mk.as_bytes(), separate_mk.as_bytes());
            assert_eq!(mk.index(), separate_mk.index());
            assert_eq!(
                Some(next.as_bytes()),
                separate_next.as_ref().map(|c| c.as_bytes())
            );
            assert_eq!(
                Some(next.index()),
                separate_next.as_ref().map(|c| c.index())
            );
            ck = next;
        }
    }

    /// The message-key expansion equals HKDF-SHA256 with 32 zero bytes of salt, as specified.
    #[test]
    fn message_key_expansion_is_the_specified_hkdf() {
        let mk = MessageKey::new(Zeroizing::new([0x33; 32]), 0);
        let mut expected = [0u8; MESSAGE_KEY_MATERIAL_LEN];
        assert!(crate::kdf::hkdf_sha256(
            Some(&[0u8; KEY_LEN]),
            mk.as_bytes(),
            INFO_MESSAGE_KEYS,
            &mut expected
        )
        .is_some());
        assert_eq!(*mk.expand(), expected);
    }

    #[test]
    fn message_key_round_trip_and_key_separation() {
        let ck = ChainKey::new(Zeroizing::new([7; 32]), 0);
        let mk = ck.message_key();
        let ct = mk.clone().encrypt(b"hello", b"ad");
        assert_eq!(
            mk.decrypt(&ct, b"ad").as_deref().map(Vec::as_slice),
            Some(&b"hello"[..])
        );
        assert!(mk.decrypt(&ct, b"ae").is_none());
        let next_mk = ck.next().map(|c| c.message_key());
        assert!(next_mk.and_then(|k| k.decrypt(&ct, b"ad")).is_none());
    }

    #[test]
    fn debug_output_is_redacted() {
        let rk = RootKey::new(Zeroizing::new([0xab; 32]));
        let ck = ChainKey::new(Zeroizing::new([0xab; 32]), 3);
        let text = format!("{rk:?} {ck:?} {:?}", ck.message_key());
        assert!(!text.contains("ab, ") && !text.contains("abab") && !text.contains("171"));
    }
}
