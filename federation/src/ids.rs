//! Validated Matrix identifiers: [`ServerName`], [`UserId`] and [`DeviceId`].
//!
//! Each type is checked once when it is parsed, so code that holds one never has to validate it again.
//! They serialise as plain JSON strings and refuse to deserialise from invalid ones.
//!
//! * A server name is `host[:port]`, where the host is a DNS name (`[A-Za-z0-9.-]`, at most 255
//!   characters), an IPv4 literal, or an IPv6 literal in brackets. Server names are case-sensitive.
//! * A user ID is `@localpart:server_name`, split at the *first* colon (the server name may carry a
//!   port). Existing IDs may use the historical localpart characters (any printable ASCII except
//!   `:`); new registrations must pass [`is_valid_new_localpart`] (`a-z 0-9 . _ = - / +`). The whole ID
//!   is at most 255 bytes.
//! * A device ID is opaque: 1–255 bytes without whitespace or control characters.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest user ID (and device ID) allowed, in bytes.
pub const MAX_ID_BYTES: usize = 255;
/// The longest DNS host name allowed in a server name, in characters.
pub const MAX_DNS_NAME_CHARS: usize = 255;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The identifier is empty.
    #[error("identifier is empty")]
    Empty,
    /// The identifier is longer than allowed.
    #[error("identifier is longer than {0} bytes")]
    TooLong(usize),
    /// A user ID does not start with `@`.
    #[error("user ID must start with '@'")]
    MissingSigil,
    /// A user ID has no `:` separating localpart and server name.
    #[error("user ID must contain ':' before the server name")]
    MissingColon,
    /// The localpart is empty or contains a character that is not allowed.
    #[error("invalid localpart")]
    InvalidLocalpart,
    /// The host part of a server name is not a DNS name, IPv4 or bracketed IPv6 literal.
    #[error("invalid host in server name")]
    InvalidHost,
    /// The port of a server name is not a number from 0 to 65535.
    #[error("invalid port in server name")]
    InvalidPort,
    /// A device ID contains whitespace or a control character.
    #[error("invalid character in device ID")]
    InvalidDeviceId,
}

/// Is `localpart` allowed for a *new* registration (`a-z 0-9 . _ = - / +`, non-empty)?
///
/// Callers that want to accept `"Alice"` should lower-case it first, as Synapse does.
pub fn is_valid_new_localpart(localpart: &str) -> bool {
    !localpart.is_empty()
        && localpart.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'.' | b'_' | b'=' | b'-' | b'/' | b'+')
        })
}

/// Is `localpart` allowed in an *existing* user ID (any printable ASCII except `:`, non-empty)?
pub fn is_valid_historical_localpart(localpart: &str) -> bool {
    !localpart.is_empty()
        && localpart
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b':')
}

/// Is `id` a valid opaque identifier (`[0-9A-Za-z-._~]`, 1–255 characters), the grammar of
/// transaction IDs and similar tokens?
pub fn is_valid_opaque_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// The host part of a server name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host<'a> {
    /// A DNS name such as `hs.example`.
    Dns(&'a str),
    /// An IPv4 literal.
    Ipv4(Ipv4Addr),
    /// An IPv6 literal (written in brackets in the server name).
    Ipv6(Ipv6Addr),
}

/// A validated server name, `host[:port]`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerName {
    full: String,
    /// Byte length of the host part (including brackets for IPv6).
    host_len: usize,
    port: Option<u16>,
}

impl ServerName {
    /// Parses and validates a server name.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        if text.is_empty() {
            return Err(IdError::Empty);
        }
        let (host, rest) = if text.starts_with('[') {
            let close = text.find(']').ok_or(IdError::InvalidHost)?;
            (&text[..=close], &text[close + 1..])
        } else {
            match text.find(':') {
                Some(colon) => (&text[..colon], &text[colon..]),
                None => (text, ""),
            }
        };
        let port = match rest {
            "" => None,
            _ => Some(parse_port(
                rest.strip_prefix(':').ok_or(IdError::InvalidHost)?,
            )?),
        };
        validate_host(host)?;
        Ok(Self {
            full: text.to_owned(),
            host_len: host.len(),
            port,
        })
    }

    /// The server name as written.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The host part as written (IPv6 literals keep their brackets).
    pub fn host_str(&self) -> &str {
        &self.full[..self.host_len]
    }

    /// The host part, classified.
    pub fn host(&self) -> Host<'_> {
        let host = self.host_str();
        if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            if let Ok(ip) = inner.parse() {
                return Host::Ipv6(ip);
            }
        }
        match host.parse() {
            Ok(ip) => Host::Ipv4(ip),
            Err(_) => Host::Dns(host),
        }
    }

    /// The explicit port, if the server name has one.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Is the host an IP literal (v4 or v6)?
    pub fn is_ip_literal(&self) -> bool {
        !matches!(self.host(), Host::Dns(_))
    }
}

fn parse_port(text: &str) -> Result<u16, IdError> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IdError::InvalidPort);
    }
    text.parse().map_err(|_| IdError::InvalidPort)
}

fn validate_host(host: &str) -> Result<(), IdError> {
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or(IdError::InvalidHost)?;
        return inner
            .parse::<Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| IdError::InvalidHost);
    }
    if host.is_empty() || host.len() > MAX_DNS_NAME_CHARS {
        return Err(IdError::InvalidHost);
    }
    if host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        // Covers both DNS names and IPv4 literals (which are made of digits and dots).
        Ok(())
    } else {
        Err(IdError::InvalidHost)
    }
}

/// A validated user ID, `@localpart:server_name`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId {
    full: String,
    server: ServerName,
}

impl UserId {
    /// Parses and validates an existing user ID (historical localpart characters are accepted).
    pub fn parse(text: &str) -> Result<Self, IdError> {
        if text.is_empty() {
            return Err(IdError::Empty);
        }
        if text.len() > MAX_ID_BYTES {
            return Err(IdError::TooLong(MAX_ID_BYTES));
        }
        let rest = text.strip_prefix('@').ok_or(IdError::MissingSigil)?;
        let (localpart, server) = rest.split_once(':').ok_or(IdError::MissingColon)?;
        if !is_valid_historical_localpart(localpart) {
            return Err(IdError::InvalidLocalpart);
        }
        let server = ServerName::parse(server)?;
        Ok(Self {
            full: text.to_owned(),
            server,
        })
    }

    /// Builds the user ID of a *new* registration; the localpart must pass
    /// [`is_valid_new_localpart`].
    pub fn new(localpart: &str, server: &ServerName) -> Result<Self, IdError> {
        if !is_valid_new_localpart(localpart) {
            return Err(IdError::InvalidLocalpart);
        }
        Self::parse(&format!("@{localpart}:{server}"))
    }

    /// The user ID as written.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The part between `@` and the first `:`.
    pub fn localpart(&self) -> &str {
        let end = self.full.len() - self.server.as_str().len() - 1;
        &self.full[1..end]
    }

    /// The server the user belongs to.
    pub fn server_name(&self) -> &ServerName {
        &self.server
    }
}

/// A validated device ID: 1–255 bytes, no whitespace or control characters.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(String);

impl DeviceId {
    /// Parses and validates a device ID.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        if text.is_empty() {
            return Err(IdError::Empty);
        }
        if text.len() > MAX_ID_BYTES {
            return Err(IdError::TooLong(MAX_ID_BYTES));
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(IdError::InvalidDeviceId);
        }
        Ok(Self(text.to_owned()))
    }

    /// The device ID as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_id_impls {
    ($ty:ident, $what:literal) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($ty), self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = IdError;
            fn from_str(text: &str) -> Result<Self, IdError> {
                Self::parse(text)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = IdError;
            fn try_from(text: String) -> Result<Self, IdError> {
                Self::parse(&text)
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = IdError;
            fn try_from(text: &str) -> Result<Self, IdError> {
                Self::parse(text)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }

        impl From<$ty> for String {
            fn from(id: $ty) -> String {
                id.as_str().to_owned()
            }
        }

        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                Self::parse(&text)
                    .map_err(|e| serde::de::Error::custom(format_args!("invalid {}: {e}", $what)))
            }
        }
    };
}

string_id_impls!(ServerName, "server name");
string_id_impls!(UserId, "user ID");
string_id_impls!(DeviceId, "device ID");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        for good in [
            "hs.example",
            "localhost",
            "localhost:8448",
            "1.2.3.4",
            "1.2.3.4:1234",
            "[1234:5678::abcd]",
            "[1234:5678::abcd]:5678",
            "[::1]",
            "Hs-1.Example",
            "hs:0",
            "hs:65535",
        ] {
            assert!(ServerName::parse(good).is_ok(), "{good} should be valid");
        }
        for bad in [
            "",
            ":8448",
            "hs.example:",
            "hs.example:65536",
            "hs.example:123456",
            "hs.example:80a",
            "hs.example:-1",
            "hs_example",
            "hs example",
            "[1234:5678::abcd",
            "[not-ip]",
            "[::1]x",
            "[::1]:",
            "hs:80:80",
            "ex\u{e4}mple.org",
        ] {
            assert!(ServerName::parse(bad).is_err(), "{bad:?} should be invalid");
        }
        let long = "a".repeat(256);
        assert_eq!(ServerName::parse(&long), Err(IdError::InvalidHost));
    }

    #[test]
    fn server_name_parts() {
        let name = ServerName::parse("[::1]:8448").unwrap();
        assert_eq!(name.host(), Host::Ipv6(Ipv6Addr::LOCALHOST));
        assert_eq!(name.host_str(), "[::1]");
        assert_eq!(name.port(), Some(8448));
        assert!(name.is_ip_literal());
        let name = ServerName::parse("127.0.0.2").unwrap();
        assert_eq!(name.host(), Host::Ipv4(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(name.port(), None);
        let name = ServerName::parse("hs.example:18448").unwrap();
        assert_eq!(name.host(), Host::Dns("hs.example"));
        assert_eq!(name.port(), Some(18448));
        assert!(!name.is_ip_literal());
        assert_eq!(name.to_string(), "hs.example:18448");
    }

    #[test]
    fn user_ids() {
        let id = UserId::parse("@alice:hs.example").unwrap();
        assert_eq!(id.localpart(), "alice");
        assert_eq!(id.server_name().as_str(), "hs.example");
        let id = UserId::parse("@a:localhost:8448").unwrap();
        assert_eq!(id.localpart(), "a");
        assert_eq!(id.server_name().port(), Some(8448));
        let id = UserId::parse("@Old$Style!:[::1]:80").unwrap();
        assert_eq!(id.localpart(), "Old$Style!");
        assert_eq!(id.server_name().host_str(), "[::1]");
        for bad in [
            "",
            "alice:hs",
            "@alice",
            "@:hs",
            "@al ice:hs",
            "@alice:",
            "@alice:bad host",
            "@\u{e9}:hs",
        ] {
            assert!(UserId::parse(bad).is_err(), "{bad:?} should be invalid");
        }
        let long = format!("@{}:hs.example", "a".repeat(250));
        assert_eq!(UserId::parse(&long), Err(IdError::TooLong(MAX_ID_BYTES)));
        let max = format!("@{}:hs.example", "a".repeat(255 - 12));
        assert_eq!(max.len(), 255);
        assert!(UserId::parse(&max).is_ok());
    }

    #[test]
    fn new_localparts() {
        assert!(is_valid_new_localpart("alice.b_c=d-e/f+g0"));
        assert!(!is_valid_new_localpart("Alice"));
        assert!(!is_valid_new_localpart(""));
        assert!(!is_valid_new_localpart("a!b"));
        assert!(!is_valid_new_localpart("a:b"));
        let server = ServerName::parse("hs").unwrap();
        assert_eq!(UserId::new("bob", &server).unwrap().as_str(), "@bob:hs");
        assert_eq!(UserId::new("Bob", &server), Err(IdError::InvalidLocalpart));
    }

    #[test]
    fn device_ids() {
        assert!(DeviceId::parse("GHTYAJCE").is_ok());
        assert!(DeviceId::parse("a:b/c").is_ok());
        assert!(DeviceId::parse("").is_err());
        assert!(DeviceId::parse("A B").is_err());
        assert!(DeviceId::parse("A\nB").is_err());
        assert!(DeviceId::parse(&"D".repeat(256)).is_err());
    }

    #[test]
    fn opaque_ids() {
        assert!(is_valid_opaque_id("abc-._~XYZ09"));
        assert!(!is_valid_opaque_id(""));
        assert!(!is_valid_opaque_id("a/b"));
        assert!(!is_valid_opaque_id(&"a".repeat(256)));
    }

    #[test]
    fn serde_round_trip() {
        let id: UserId = serde_json::from_str("\"@bob:hs:8448\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"@bob:hs:8448\"");
        assert!(serde_json::from_str::<UserId>("\"bob\"").is_err());
        assert!(serde_json::from_str::<ServerName>("\"bad host\"").is_err());
        let device: DeviceId = serde_json::from_str("\"DEV\"").unwrap();
        assert_eq!(device, "DEV");
    }
}
