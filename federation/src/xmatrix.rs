//! The `Authorization: X-Matrix ...` header that authenticates federation requests.
//!
//! The sender signs the JSON object `{method, uri, origin, destination, content}` (where `uri` is the
//! path and query exactly as sent, and `content` is left out when there is no body) with its server
//! key, and sends the signature in the header:
//!
//! ```text
//! Authorization: X-Matrix origin="a.example",destination="b.example",key="ed25519:a_1",sig="..."
//! ```
//!
//! We *send* the strict form above (lower-case names, quoted values, no spaces, no backslashes).
//! We *parse* liberally, as RFC 9110 auth-params: names in any case and any order, values quoted
//! (with backslash escapes) or bare (bare values may contain `:`), optional whitespace around commas
//! and `=`, unknown parameters ignored. Repeating a known parameter is an error, so a header cannot
//! mean two things. The parser never panics, whatever the input.
//!
//! On verification the `destination` of the rebuilt object is always *our own* server name; a header
//! that names another destination is refused.

use ed25519_dalek::VerifyingKey;
use serde_json::{Map, Value};

use crate::ids::ServerName;
use crate::keys::{ServerSigningKey, VerifiedServerKeys, ED25519};
use crate::signing::{self, SigningError};

/// The authentication scheme name.
pub const SCHEME: &str = "X-Matrix";

/// The parameters of one X-Matrix header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XMatrixAuth {
    /// The server that sent (and signed) the request.
    pub origin: ServerName,
    /// The server the request was meant for, if the header says so.
    pub destination: Option<ServerName>,
    /// The id of the signing key, e.g. `ed25519:a_Abc1`.
    pub key: String,
    /// The unpadded base64 signature.
    pub sig: String,
}

/// Why an X-Matrix header could not be parsed or verified.
#[derive(Debug, thiserror::Error)]
pub enum XMatrixError {
    /// The header does not use the X-Matrix scheme.
    #[error("not an X-Matrix authorization header")]
    NotXMatrix,
    /// The header is not valid auth-param syntax.
    #[error("malformed X-Matrix header: {0}")]
    Malformed(&'static str),
    /// A required parameter is missing.
    #[error("X-Matrix header lacks the {0} parameter")]
    MissingParam(&'static str),
    /// A known parameter appears twice.
    #[error("X-Matrix header repeats the {0} parameter")]
    DuplicateParam(&'static str),
    /// `origin` or `destination` is not a valid server name.
    #[error("X-Matrix {0} is not a valid server name")]
    InvalidServerName(&'static str),
    /// The header names a destination that is not us.
    #[error("request was addressed to {0}, not to this server")]
    WrongDestination(String),
    /// The origin's key document does not list the key the header names (refetch it, then refuse).
    #[error("unknown key {0} for the origin server")]
    UnknownKey(String),
    /// The key document passed for verification belongs to another server than the origin.
    #[error("keys of {0} cannot verify a request from another origin")]
    KeysForAnotherServer(String),
    /// The key id is not an ed25519 key.
    #[error("unsupported key algorithm in {0}")]
    UnsupportedKey(String),
    /// The signature is malformed or does not verify, or the object cannot be canonicalised.
    #[error(transparent)]
    Signature(#[from] SigningError),
}

impl XMatrixError {
    /// True for errors in the header's syntax (answered with 400), false for authentication
    /// failures (answered with 401).
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            Self::Malformed(_)
                | Self::MissingParam(_)
                | Self::DuplicateParam(_)
                | Self::InvalidServerName(_)
        )
    }
}

/// Builds the JSON object that an X-Matrix signature covers.
///
/// `uri` is the request target as sent (path plus `?query`, percent-encoded as on the wire);
/// `content` is the JSON body, or `None` when the request has no body.
pub fn request_object(
    method: &str,
    uri: &str,
    origin: &ServerName,
    destination: &ServerName,
    content: Option<&Value>,
) -> Value {
    let mut object = Map::new();
    object.insert("method".into(), Value::String(method.to_ascii_uppercase()));
    object.insert("uri".into(), Value::String(uri.to_owned()));
    object.insert("origin".into(), Value::String(origin.to_string()));
    object.insert("destination".into(), Value::String(destination.to_string()));
    if let Some(content) = content {
        object.insert("content".into(), content.clone());
    }
    Value::Object(object)
}

/// The bytes an X-Matrix signature covers: the canonical JSON of [`request_object`], computed
/// without copying `content`.
pub fn request_signing_bytes(
    method: &str,
    uri: &str,
    origin: &ServerName,
    destination: &ServerName,
    content: Option<&Value>,
) -> Result<Vec<u8>, SigningError> {
    let method = Value::String(method.to_ascii_uppercase());
    let uri = Value::String(uri.to_owned());
    let origin = Value::String(origin.to_string());
    let destination = Value::String(destination.to_string());
    let mut entries = vec![
        ("method", &method),
        ("uri", &uri),
        ("origin", &origin),
        ("destination", &destination),
    ];
    if let Some(content) = content {
        entries.push(("content", content));
    }
    Ok(crate::canonical::entries_to_canonical_bytes(entries)?)
}

/// [`request_signing_bytes`] for a body already in canonical JSON (`canonical_content`, the
/// exact bytes about to be sent): the body is spliced in instead of being serialized a second
/// time. `content` sorts before every other field of the signed object, so the result is
/// `{"content":` + body + `,` + the other fields.
pub fn request_signing_bytes_canonical(
    method: &str,
    uri: &str,
    origin: &ServerName,
    destination: &ServerName,
    canonical_content: &[u8],
) -> Result<Vec<u8>, SigningError> {
    let rest = request_signing_bytes(method, uri, origin, destination, None)?;
    let fields = rest.get(1..).unwrap_or_default();
    let mut out = Vec::with_capacity(canonical_content.len() + rest.len() + 12);
    out.extend_from_slice(b"{\"content\":");
    out.extend_from_slice(canonical_content);
    out.push(b',');
    out.extend_from_slice(fields);
    Ok(out)
}

/// [`sign_request`] for a body already in canonical JSON (see
/// [`request_signing_bytes_canonical`]).
pub fn sign_request_canonical(
    key: &ServerSigningKey,
    origin: &ServerName,
    destination: &ServerName,
    method: &str,
    uri: &str,
    canonical_content: &[u8],
) -> Result<XMatrixAuth, SigningError> {
    let bytes =
        request_signing_bytes_canonical(method, uri, origin, destination, canonical_content)?;
    let sig = signing::sign_bytes(&bytes, key.signing_key());
    Ok(XMatrixAuth {
        origin: origin.clone(),
        destination: Some(destination.clone()),
        key: key.key_id(),
        sig,
    })
}

/// Signs a request as `origin` with `key` and returns the header parameters.
pub fn sign_request(
    key: &ServerSigningKey,
    origin: &ServerName,
    destination: &ServerName,
    method: &str,
    uri: &str,
    content: Option<&Value>,
) -> Result<XMatrixAuth, SigningError> {
    let bytes = request_signing_bytes(method, uri, origin, destination, content)?;
    let sig = signing::sign_bytes(&bytes, key.signing_key());
    Ok(XMatrixAuth {
        origin: origin.clone(),
        destination: Some(destination.clone()),
        key: key.key_id(),
        sig,
    })
}

impl XMatrixAuth {
    /// The `Authorization` header value, in the strict form every implementation accepts.
    pub fn to_header_value(&self) -> String {
        let mut out = format!("{SCHEME} origin={}", quote(self.origin.as_str()));
        if let Some(destination) = &self.destination {
            out.push_str(",destination=");
            out.push_str(&quote(destination.as_str()));
        }
        out.push_str(",key=");
        out.push_str(&quote(&self.key));
        out.push_str(",sig=");
        out.push_str(&quote(&self.sig));
        out
    }

    /// Parses an `Authorization` header value.
    pub fn parse(header: &str) -> Result<Self, XMatrixError> {
        let header = header.trim_start();
        let scheme_end = header.find([' ', '\t']).unwrap_or(header.len());
        let (scheme, params) = header.split_at(scheme_end);
        if !scheme.eq_ignore_ascii_case(SCHEME) {
            return Err(XMatrixError::NotXMatrix);
        }
        let mut origin = None;
        let mut destination = None;
        let mut key = None;
        let mut sig = None;
        for param in AuthParams::new(params) {
            let (name, value) = param?;
            let (slot, label) = match name.to_ascii_lowercase().as_str() {
                "origin" => (&mut origin, "origin"),
                "destination" => (&mut destination, "destination"),
                "key" => (&mut key, "key"),
                "sig" => (&mut sig, "sig"),
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(XMatrixError::DuplicateParam(label));
            }
        }
        let origin = origin.ok_or(XMatrixError::MissingParam("origin"))?;
        let origin =
            ServerName::parse(&origin).map_err(|_| XMatrixError::InvalidServerName("origin"))?;
        let destination = destination
            .map(|d| ServerName::parse(&d))
            .transpose()
            .map_err(|_| XMatrixError::InvalidServerName("destination"))?;
        let key = key.ok_or(XMatrixError::MissingParam("key"))?;
        let sig = sig.ok_or(XMatrixError::MissingParam("sig"))?;
        Ok(Self {
            origin,
            destination,
            key,
            sig,
        })
    }

    /// Verifies the signature of a request we received.
    ///
    /// `our_name` is this server's name (used as `destination` whatever the header says; a header
    /// naming a different destination is refused). `key` is the origin's public key with id
    /// [`XMatrixAuth::key`], which the caller looked up.
    pub fn verify(
        &self,
        method: &str,
        uri: &str,
        content: Option<&Value>,
        our_name: &ServerName,
        key: &VerifyingKey,
    ) -> Result<(), XMatrixError> {
        if let Some(destination) = &self.destination {
            if destination != our_name {
                return Err(XMatrixError::WrongDestination(destination.to_string()));
            }
        }
        if crate::keys::split_key_id(&self.key).map(|(alg, _)| alg) != Some(ED25519) {
            return Err(XMatrixError::UnsupportedKey(self.key.clone()));
        }
        let bytes = request_signing_bytes(method, uri, &self.origin, our_name, content)?;
        signing::verify_bytes(&bytes, &self.sig, key)?;
        Ok(())
    }
}

impl XMatrixAuth {
    /// Verifies the request with the origin's verified key document: the key named in the header
    /// must be one of its current `verify_keys` (old keys do not authenticate new requests).
    ///
    /// The caller checks that `keys` are still valid (see [`VerifiedServerKeys::cache_until`]) and
    /// refetches them once on [`XMatrixError::UnknownKey`].
    pub fn verify_with_keys(
        &self,
        method: &str,
        uri: &str,
        content: Option<&Value>,
        our_name: &ServerName,
        keys: &VerifiedServerKeys,
    ) -> Result<(), XMatrixError> {
        if keys.server_name != self.origin {
            return Err(XMatrixError::KeysForAnotherServer(
                keys.server_name.to_string(),
            ));
        }
        let key = keys
            .verify_keys
            .get(&self.key)
            .ok_or_else(|| XMatrixError::UnknownKey(self.key.clone()))?;
        self.verify(method, uri, content, our_name, key)
    }
}

/// Quotes a header value, escaping `"` and `\` (which valid server names, key ids and base64 never
/// contain, so in practice nothing is escaped).
fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Iterator over `name=value` pairs of an auth-param list.
struct AuthParams<'a> {
    rest: &'a str,
    failed: bool,
}

impl<'a> AuthParams<'a> {
    fn new(params: &'a str) -> Self {
        Self {
            rest: params,
            failed: false,
        }
    }

    fn next_param(&mut self) -> Option<Result<(String, String), XMatrixError>> {
        let is_ows = |c: char| c == ' ' || c == '\t';
        self.rest = self
            .rest
            .trim_start_matches(|c: char| is_ows(c) || c == ',');
        if self.rest.is_empty() {
            return None;
        }
        let name_end = self
            .rest
            .find(|c: char| c == '=' || c == ',' || is_ows(c))
            .unwrap_or(self.rest.len());
        let name = &self.rest[..name_end];
        if name.is_empty() {
            return Some(Err(XMatrixError::Malformed("empty parameter name")));
        }
        if !name.bytes().all(is_token_byte) {
            return Some(Err(XMatrixError::Malformed("invalid parameter name")));
        }
        self.rest = self.rest[name_end..].trim_start_matches(is_ows);
        let Some(after_eq) = self.rest.strip_prefix('=') else {
            return Some(Err(XMatrixError::Malformed("parameter without '='")));
        };
        self.rest = after_eq.trim_start_matches(is_ows);
        let value = if let Some(quoted) = self.rest.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((index, c)) = chars.next() {
                match c {
                    '"' => {
                        end = Some(index + 1);
                        break;
                    }
                    '\\' => match chars.next() {
                        Some((_, escaped)) => value.push(escaped),
                        None => break,
                    },
                    c => value.push(c),
                }
            }
            let Some(end) = end else {
                return Some(Err(XMatrixError::Malformed("unterminated quoted value")));
            };
            self.rest = quoted[end..].trim_start_matches(is_ows);
            if !(self.rest.is_empty() || self.rest.starts_with(',')) {
                return Some(Err(XMatrixError::Malformed("text after a quoted value")));
            }
            value
        } else {
            let end = self.rest.find(',').unwrap_or(self.rest.len());
            let value = self.rest[..end].trim_end_matches(is_ows);
            if value.is_empty() {
                return Some(Err(XMatrixError::Malformed("empty parameter value")));
            }
            if value.contains(|c: char| is_ows(c) || c == '"' || c == '\\') {
                return Some(Err(XMatrixError::Malformed("invalid bare value")));
            }
            self.rest = &self.rest[end..];
            value.to_owned()
        };
        Some(Ok((name.to_owned(), value)))
    }
}

impl Iterator for AuthParams<'_> {
    type Item = Result<(String, String), XMatrixError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let item = self.next_param();
        if matches!(item, Some(Err(_))) {
            self.failed = true;
        }
        item
    }
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn name(s: &str) -> ServerName {
        ServerName::parse(s).unwrap()
    }

    fn key() -> ServerSigningKey {
        ServerSigningKey::from_seed("a_1", &[3u8; 32]).unwrap()
    }

    #[test]
    fn round_trip_with_body() {
        let key = key();
        let body = json!({"origin": "a.example", "origin_server_ts": 1, "pdus": [], "edus": []});
        let uri = "/_matrix/federation/v1/send/17";
        let auth = sign_request(
            &key,
            &name("a.example"),
            &name("b.example"),
            "PUT",
            uri,
            Some(&body),
        )
        .unwrap();
        let header = auth.to_header_value();
        assert!(header.starts_with(
            "X-Matrix origin=\"a.example\",destination=\"b.example\",key=\"ed25519:a_1\",sig=\""
        ));
        let parsed = XMatrixAuth::parse(&header).unwrap();
        assert_eq!(parsed, auth);
        parsed
            .verify(
                "PUT",
                uri,
                Some(&body),
                &name("b.example"),
                &key.verifying_key(),
            )
            .unwrap();
        // Anything else changed breaks it.
        let other_body = json!({"origin": "a.example"});
        assert!(parsed
            .verify(
                "PUT",
                uri,
                Some(&other_body),
                &name("b.example"),
                &key.verifying_key()
            )
            .is_err());
        assert!(parsed
            .verify("PUT", uri, None, &name("b.example"), &key.verifying_key())
            .is_err());
        assert!(parsed
            .verify(
                "POST",
                uri,
                Some(&body),
                &name("b.example"),
                &key.verifying_key()
            )
            .is_err());
        assert!(parsed
            .verify(
                "PUT",
                "/_matrix/federation/v1/send/18",
                Some(&body),
                &name("b.example"),
                &key.verifying_key()
            )
            .is_err());
        let other_key = ServerSigningKey::from_seed("a_1", &[4u8; 32]).unwrap();
        assert!(parsed
            .verify(
                "PUT",
                uri,
                Some(&body),
                &name("b.example"),
                &other_key.verifying_key()
            )
            .is_err());
    }

    #[test]
    fn spliced_canonical_content_signs_the_same_bytes() {
        let key = key();
        let body = json!({"edus": [{"content": {"b": 1, "a": "\u{e9}\n"}, "edu_type": "x"}],
            "origin": "a.example", "origin_server_ts": 5, "pdus": []});
        let canonical = crate::canonical::to_canonical_bytes(&body).unwrap();
        let uri = "/_matrix/federation/v1/send/1?x=%20";
        let (a, b) = (name("a.example"), name("b.example"));
        assert_eq!(
            request_signing_bytes_canonical("put", uri, &a, &b, &canonical).unwrap(),
            request_signing_bytes("put", uri, &a, &b, Some(&body)).unwrap()
        );
        let auth = sign_request_canonical(&key, &a, &b, "PUT", uri, &canonical).unwrap();
        assert_eq!(
            auth,
            sign_request(&key, &a, &b, "PUT", uri, Some(&body)).unwrap()
        );
        auth.verify("PUT", uri, Some(&body), &b, &key.verifying_key())
            .unwrap();
    }

    #[test]
    fn get_without_content_and_query_in_uri() {
        let key = key();
        let uri = "/_matrix/federation/v1/user/devices/%40alice%3Ab.example?x=1";
        let auth = sign_request(
            &key,
            &name("a.example"),
            &name("b.example"),
            "get",
            uri,
            None,
        )
        .unwrap();
        let parsed = XMatrixAuth::parse(&auth.to_header_value()).unwrap();
        parsed
            .verify("GET", uri, None, &name("b.example"), &key.verifying_key())
            .unwrap();
        assert!(parsed
            .verify(
                "GET",
                "/_matrix/federation/v1/user/devices/@alice:b.example?x=1",
                None,
                &name("b.example"),
                &key.verifying_key()
            )
            .is_err());
        assert!(parsed
            .verify(
                "GET",
                uri,
                Some(&json!({})),
                &name("b.example"),
                &key.verifying_key()
            )
            .is_err());
    }

    #[test]
    fn destination_mismatch_is_refused() {
        let key = key();
        let auth = sign_request(
            &key,
            &name("a.example"),
            &name("b.example"),
            "GET",
            "/x",
            None,
        )
        .unwrap();
        let err = auth.verify("GET", "/x", None, &name("c.example"), &key.verifying_key());
        assert!(matches!(err, Err(XMatrixError::WrongDestination(_))));
        // Without a destination param, our own name is used, so the signature fails for c.example.
        let mut no_dest = auth.clone();
        no_dest.destination = None;
        assert!(matches!(
            no_dest.verify("GET", "/x", None, &name("c.example"), &key.verifying_key()),
            Err(XMatrixError::Signature(SigningError::BadSignature))
        ));
        no_dest
            .verify("GET", "/x", None, &name("b.example"), &key.verifying_key())
            .unwrap();
    }

    #[test]
    fn liberal_parsing() {
        let expected = XMatrixAuth {
            origin: name("a.example:8448"),
            destination: Some(name("b.example")),
            key: "ed25519:a_1".into(),
            sig: "c2ln+/".into(),
        };
        for header in [
            r#"X-Matrix origin="a.example:8448",destination="b.example",key="ed25519:a_1",sig="c2ln+/""#,
            r#"x-matrix ORIGIN="a.example:8448", Destination="b.example" ,Key="ed25519:a_1",  sig="c2ln+/""#,
            r#"X-Matrix key=ed25519:a_1,sig=c2ln+/,origin=a.example:8448,destination=b.example"#,
            r#"X-Matrix   origin = "a.example:8448" , destination="b.ex\ample",key="ed25519:a_1",sig="c2ln+/",extra="x, y""#,
            r#"X-Matrix origin=a.example:8448,,destination=b.example,key="ed25519:a_1",sig="c2ln+/",unknown=1,"#,
            "\tX-Matrix\torigin=\"a.example:8448\",destination=\"b.example\",key=\"ed25519:a_1\",sig=\"c2ln+/\"",
        ] {
            assert_eq!(XMatrixAuth::parse(header).unwrap(), expected, "{header}");
        }
        let no_dest =
            XMatrixAuth::parse(r#"X-Matrix origin=a.example,key="ed25519:a_1",sig="c2ln""#)
                .unwrap();
        assert_eq!(no_dest.destination, None);
    }

    #[test]
    fn malformed_headers() {
        type Check = fn(&XMatrixError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, XMatrixError::NotXMatrix)),
            ("Bearer abc", |e| matches!(e, XMatrixError::NotXMatrix)),
            ("X-Matrixorigin=a", |e| {
                matches!(e, XMatrixError::NotXMatrix)
            }),
            ("X-Matrix", |e| {
                matches!(e, XMatrixError::MissingParam("origin"))
            }),
            ("X-Matrix origin=a,key=ed25519:1", |e| {
                matches!(e, XMatrixError::MissingParam("sig"))
            }),
            ("X-Matrix origin=a,sig=x", |e| {
                matches!(e, XMatrixError::MissingParam("key"))
            }),
            ("X-Matrix origin=\"a,key=k,sig=s", |e| {
                matches!(e, XMatrixError::Malformed(_))
            }),
            ("X-Matrix origin=\"a\\", |e| {
                matches!(e, XMatrixError::Malformed(_))
            }),
            ("X-Matrix origin", |e| {
                matches!(e, XMatrixError::Malformed(_))
            }),
            ("X-Matrix =a", |e| matches!(e, XMatrixError::Malformed(_))),
            ("X-Matrix origin=", |e| {
                matches!(e, XMatrixError::Malformed(_))
            }),
            ("X-Matrix origin=\"a\"b,key=k,sig=s", |e| {
                matches!(e, XMatrixError::Malformed(_))
            }),
            ("X-Matrix origin=a b,key=k,sig=s", |e| {
                matches!(e, XMatrixError::Malformed(_))
            }),
            ("X-Matrix or\"igin=a", |e| {
                matches!(e, XMatrixError::Malformed(_))
            }),
            ("X-Matrix origin=a,origin=b,key=k,sig=s", |e| {
                matches!(e, XMatrixError::DuplicateParam("origin"))
            }),
            ("X-Matrix origin=\"bad host\",key=k,sig=s", |e| {
                matches!(e, XMatrixError::InvalidServerName("origin"))
            }),
            ("X-Matrix origin=a,destination=\"b:x\",key=k,sig=s", |e| {
                matches!(e, XMatrixError::InvalidServerName("destination"))
            }),
        ];
        for (header, check) in cases {
            match XMatrixAuth::parse(header) {
                Ok(auth) => panic!("{header:?} parsed as {auth:?}"),
                Err(e) => assert!(check(&e), "{header:?} gave {e:?}"),
            }
        }
        assert!(XMatrixAuth::parse("X-Matrix origin=\"é\u{0}\"").is_err());
    }

    #[test]
    fn unsupported_key_algorithm() {
        let key = key();
        let mut auth = sign_request(&key, &name("a"), &name("b"), "GET", "/x", None).unwrap();
        auth.key = "curve25519:a_1".into();
        assert!(matches!(
            auth.verify("GET", "/x", None, &name("b"), &key.verifying_key()),
            Err(XMatrixError::UnsupportedKey(_))
        ));
        auth.key = "ed25519:a_1".into();
        auth.sig = "not base64!".into();
        assert!(matches!(
            auth.verify("GET", "/x", None, &name("b"), &key.verifying_key()),
            Err(XMatrixError::Signature(SigningError::MalformedSignature))
        ));
    }

    #[test]
    fn verify_with_key_documents() {
        use crate::keys::{build_key_document, verify_key_document, OldVerifyKey};
        let key = key();
        let retired = ServerSigningKey::from_seed("old", &[5u8; 32]).unwrap();
        let origin = name("a.example");
        let old = [OldVerifyKey {
            key_id: retired.key_id(),
            key: retired.verifying_key(),
            expired_ts: 1,
        }];
        let document = build_key_document(&origin, &[&key], &old, 10_000).unwrap();
        let keys = verify_key_document(&document, &origin, 1).unwrap();
        let auth = sign_request(&key, &origin, &name("b.example"), "GET", "/x", None).unwrap();
        auth.verify_with_keys("GET", "/x", None, &name("b.example"), &keys)
            .unwrap();
        // Signed with a retired key: refused.
        let stale = sign_request(&retired, &origin, &name("b.example"), "GET", "/x", None).unwrap();
        assert!(matches!(
            stale.verify_with_keys("GET", "/x", None, &name("b.example"), &keys),
            Err(XMatrixError::UnknownKey(_))
        ));
        // Keys of another server cannot vouch for this origin.
        let other = build_key_document(&name("c.example"), &[&key], &[], 10_000).unwrap();
        let other = verify_key_document(&other, &name("c.example"), 1).unwrap();
        assert!(matches!(
            auth.verify_with_keys("GET", "/x", None, &name("b.example"), &other),
            Err(XMatrixError::KeysForAnotherServer(_))
        ));
    }

    #[test]
    fn malformed_vs_auth_failure_classification() {
        assert!(XMatrixError::Malformed("x").is_malformed());
        assert!(XMatrixError::MissingParam("sig").is_malformed());
        assert!(!XMatrixError::WrongDestination("x".into()).is_malformed());
        assert!(!XMatrixError::Signature(SigningError::BadSignature).is_malformed());
    }
}
