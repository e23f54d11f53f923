//! Unpadded standard base64, as Matrix uses it for keys and signatures.
//!
//! Matrix encodes keys and signatures with the RFC 4648 *standard* alphabet (`+` and `/`) and without
//! `=` padding. Decoders should still accept padded input, and other implementations (Python's
//! `base64` module among them) do not insist that the unused low bits of the last character are zero,
//! so [`decode_lenient`] accepts both.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;

/// Encoder: standard alphabet, no padding.
const ENCODER: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_encode_padding(false),
);

/// Decoder: standard alphabet, padding optional, non-zero trailing bits tolerated.
const DECODER: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// The input was not valid standard base64.
#[derive(Debug, thiserror::Error)]
#[error("invalid base64: {0}")]
pub struct Base64Error(#[from] base64::DecodeError);

/// Encodes bytes as unpadded standard base64 (`+/`, no `=`).
pub fn encode_unpadded(bytes: &[u8]) -> String {
    ENCODER.encode(bytes)
}

/// Decodes standard base64, with or without `=` padding.
///
/// The URL-safe alphabet (`-_`) is rejected: Matrix does not use it for keys or signatures.
pub fn decode_lenient(text: &str) -> Result<Vec<u8>, Base64Error> {
    Ok(DECODER.decode(text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_without_padding() {
        assert_eq!(encode_unpadded(b""), "");
        assert_eq!(encode_unpadded(b"f"), "Zg");
        assert_eq!(encode_unpadded(b"fo"), "Zm8");
        assert_eq!(encode_unpadded(b"foo"), "Zm9v");
        assert_eq!(encode_unpadded(&[0xfb, 0xff]), "+/8");
    }

    #[test]
    fn decodes_padded_and_unpadded() {
        assert_eq!(decode_lenient("Zg").unwrap(), b"f");
        assert_eq!(decode_lenient("Zg==").unwrap(), b"f");
        assert_eq!(decode_lenient("Zm8=").unwrap(), b"fo");
        assert_eq!(decode_lenient("+/8").unwrap(), vec![0xfb, 0xff]);
    }

    #[test]
    fn accepts_nonzero_trailing_bits() {
        // The appendix seed ends in '1', whose two low bits are not zero.
        let seed = decode_lenient("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1");
        assert_eq!(seed.map(|s| s.len()).ok(), Some(32));
    }

    #[test]
    fn rejects_url_safe_and_garbage() {
        assert!(decode_lenient("-_8").is_err());
        assert!(decode_lenient("a b").is_err());
        assert!(decode_lenient("Z").is_err());
    }
}
