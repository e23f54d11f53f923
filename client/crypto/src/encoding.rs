//! Byte-level encodings: type-tagged public keys (`Encode(PK)`), a bounds-checked reader and
//! writer for the binary wire and state formats, and unpadded base64.
//!
//! Every decoder here returns [`DecodeError`] on bad input; none panics.

use zeroize::Zeroizing;

use crate::consts::{ENCODED_KEY_LEN, KEY_LEN};
use crate::errors::{DecodeError, KeyError};

/// `Encode(PK)`: one type byte followed by the 32 key bytes.
pub fn encode_key(type_byte: u8, key: &[u8; KEY_LEN]) -> [u8; ENCODED_KEY_LEN] {
    let mut out = [0u8; ENCODED_KEY_LEN];
    out[0] = type_byte;
    out[1..].copy_from_slice(key);
    out
}

/// Inverse of [`encode_key`]: checks the length and the type byte.
pub fn decode_key(type_byte: u8, bytes: &[u8]) -> Result<[u8; KEY_LEN], KeyError> {
    if bytes.len() != ENCODED_KEY_LEN {
        return Err(KeyError::InvalidLength {
            expected: ENCODED_KEY_LEN,
            actual: bytes.len(),
        });
    }
    if bytes[0] != type_byte {
        return Err(KeyError::WrongKeyType {
            expected: type_byte,
            actual: bytes[0],
        });
    }
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(&bytes[1..]);
    Ok(out)
}

/// Copies a slice into a 32-byte array, checking the length.
pub fn key_bytes(bytes: &[u8]) -> Result<[u8; KEY_LEN], KeyError> {
    <[u8; KEY_LEN]>::try_from(bytes).map_err(|_| KeyError::InvalidLength {
        expected: KEY_LEN,
        actual: bytes.len(),
    })
}

/// Unpadded standard base64, the Matrix encoding of keys, signatures and bodies.
pub fn base64_encode(bytes: &[u8]) -> String {
    hush_federation::base64::encode_unpadded(bytes)
}

/// Decodes base64 with or without padding (Matrix senders differ).
pub fn base64_decode(text: &str) -> Result<Vec<u8>, KeyError> {
    hush_federation::base64::decode_lenient(text).map_err(|_| KeyError::InvalidBase64)
}

/// Appends fields to a byte buffer that zeroizes itself when dropped.
#[derive(Default)]
pub struct Writer {
    buf: Zeroizing<Vec<u8>>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    /// Appends a big-endian u16.
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// Appends a big-endian u32.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// Appends a big-endian u64.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// Appends raw bytes (fixed-length fields).
    pub fn raw(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }

    /// Appends a u16-length-prefixed byte string; longer inputs are truncated by the caller's
    /// validation (identifiers are checked against [`crate::consts::MAX_ID_LEN`] on entry).
    pub fn bytes16(&mut self, v: &[u8]) {
        let len = u16::try_from(v.len()).unwrap_or(u16::MAX);
        self.u16(len);
        self.raw(&v[..usize::from(len)]);
    }

    /// Appends a u32-length-prefixed byte string.
    pub fn bytes32(&mut self, v: &[u8]) {
        let len = u32::try_from(v.len()).unwrap_or(u32::MAX);
        self.u32(len);
        self.raw(&v[..len as usize]);
    }

    /// Appends an optional value: a 0 byte, or a 1 byte followed by the value.
    pub fn option<T>(&mut self, v: Option<&T>, f: impl FnOnce(&mut Self, &T)) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                f(self, v);
            }
        }
    }

    /// The bytes written so far.
    pub fn into_bytes(self) -> Zeroizing<Vec<u8>> {
        self.buf
    }
}

/// Reads fields from a byte slice, failing cleanly on truncation.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Reads a fixed-size array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    /// Reads a big-endian u16.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Reads a big-endian u64.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Reads a u16-length-prefixed byte string of at most `max` bytes.
    pub fn bytes16(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(DecodeError::TooLong { field, len, max });
        }
        self.take(len)
    }

    /// Reads a u32-length-prefixed byte string of at most `max` bytes.
    pub fn bytes32(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(self.u32()?).unwrap_or(usize::MAX);
        if len > max {
            return Err(DecodeError::TooLong { field, len, max });
        }
        self.take(len)
    }

    /// Reads a UTF-8 identifier written with [`Writer::bytes16`].
    pub fn string16(&mut self, field: &'static str, max: usize) -> Result<String, DecodeError> {
        let bytes = self.bytes16(field, max)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::InvalidField(field))
    }

    /// Reads a presence byte (0 or 1) and then the value if present.
    pub fn option<T>(
        &mut self,
        field: &'static str,
        f: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => f(self).map(Some),
            _ => Err(DecodeError::InvalidField(field)),
        }
    }

    /// Reads a count and checks it against a bound.
    pub fn count(&mut self, field: &'static str, max: usize) -> Result<usize, DecodeError> {
        let n = usize::try_from(self.u32()?).unwrap_or(usize::MAX);
        if n > max {
            return Err(DecodeError::TooLong { field, len: n, max });
        }
        Ok(n)
    }

    /// The unread bytes.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Succeeds only if every byte was read.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.buf.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::{KEY_TYPE_ED25519, KEY_TYPE_X25519};

    #[test]
    fn p22_key_encodings_are_fixed_length_and_type_tagged() {
        let key = [7u8; 32];
        let x = encode_key(KEY_TYPE_X25519, &key);
        let e = encode_key(KEY_TYPE_ED25519, &key);
        assert_ne!(x, e, "encodings of different key kinds must not overlap");
        assert_eq!(decode_key(KEY_TYPE_X25519, &x), Ok(key));
        assert_eq!(decode_key(KEY_TYPE_ED25519, &e), Ok(key));
        assert!(matches!(
            decode_key(KEY_TYPE_X25519, &e),
            Err(KeyError::WrongKeyType { .. })
        ));
        assert!(matches!(
            decode_key(KEY_TYPE_X25519, &x[..32]),
            Err(KeyError::InvalidLength { .. })
        ));
        let mut long = x.to_vec();
        long.push(0);
        assert!(matches!(
            decode_key(KEY_TYPE_X25519, &long),
            Err(KeyError::InvalidLength { .. })
        ));
    }

    #[test]
    fn reader_rejects_truncation_and_trailing_bytes() {
        let mut w = Writer::new();
        w.u32(5);
        w.bytes16(b"abc");
        let bytes = w.into_bytes();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u32(), Ok(5));
        assert_eq!(r.bytes16("x", 10), Ok(&b"abc"[..]));
        assert!(r.finish().is_ok());
        let mut r = Reader::new(&bytes[..5]);
        assert_eq!(r.u32(), Ok(5));
        assert_eq!(r.bytes16("x", 10), Err(DecodeError::Truncated));
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u32(), Ok(5));
        assert!(matches!(r.finish(), Err(DecodeError::TrailingBytes(5))));
        let mut r = Reader::new(&bytes[4..]);
        assert!(matches!(
            r.bytes16("x", 2),
            Err(DecodeError::TooLong { .. })
        ));
    }
}
