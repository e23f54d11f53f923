//! Property tests of the X-Matrix header: the parser never panics, accepts every spelling the
//! specification allows, and signatures round-trip for arbitrary requests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use hush_federation::ids::ServerName;
use hush_federation::keys::ServerSigningKey;
use hush_federation::signing::signing_bytes;
use hush_federation::xmatrix::{request_object, request_signing_bytes, sign_request, XMatrixAuth};
use proptest::prelude::*;
use serde_json::Value;

fn server_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9][a-z0-9.-]{0,20}(:[0-9]{1,4})?",
        "127\\.0\\.0\\.[0-9]{1,2}(:[0-9]{1,4})?",
        Just("[::1]:8448".to_owned()),
    ]
}

fn key_id() -> impl Strategy<Value = String> {
    "ed25519:[a-zA-Z0-9_]{1,10}"
}

fn signature() -> impl Strategy<Value = String> {
    "[A-Za-z0-9+/]{1,90}"
}

/// Writes `name=value` with random case, quoting and whitespace.
fn spell(name: &str, value: &str, upper: bool, quoted: bool, space: bool) -> String {
    let name = if upper {
        name.to_ascii_uppercase()
    } else {
        name.to_owned()
    };
    let value = if quoted || value.contains(':') && value.starts_with('[') {
        format!("\"{value}\"")
    } else {
        value.to_owned()
    };
    if space {
        format!(" {name} = {value} ")
    } else {
        format!("{name}={value}")
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn never_panics_on_any_string(header in any::<String>()) {
        let _ = XMatrixAuth::parse(&header);
    }

    #[test]
    fn never_panics_after_the_scheme(params in "[ -~\t\u{80}-\u{10ffff}]{0,80}") {
        let _ = XMatrixAuth::parse(&format!("X-Matrix {params}"));
    }

    #[test]
    fn never_panics_on_param_like_noise(parts in prop::collection::vec("[a-z]{0,3}|=|,|\"|\\\\| |:", 0..30)) {
        let _ = XMatrixAuth::parse(&format!("X-Matrix {}", parts.concat()));
    }

    #[test]
    fn fast_signing_bytes_equal_the_generic_path(
        method in "[a-zA-Z]{1,7}",
        uri in "/[ -~\u{e9}]{0,30}",
        origin in server_name(),
        destination in server_name(),
        content in prop::option::of(prop::collection::btree_map("[a-z\"\\\\\u{1}]{0,4}", "[ -~\u{2028}]{0,6}", 0..5)),
    ) {
        let origin = ServerName::parse(&origin).unwrap();
        let destination = ServerName::parse(&destination).unwrap();
        let content = content.map(|c| serde_json::to_value(c).unwrap());
        let generic = signing_bytes(&request_object(&method, &uri, &origin, &destination, content.as_ref())).unwrap();
        let fast = request_signing_bytes(&method, &uri, &origin, &destination, content.as_ref()).unwrap();
        prop_assert_eq!(fast, generic);
    }

    #[test]
    fn strict_form_round_trips(origin in server_name(), destination in prop::option::of(server_name()), key in key_id(), sig in signature()) {
        let auth = XMatrixAuth {
            origin: ServerName::parse(&origin).unwrap(),
            destination: destination.map(|d| ServerName::parse(&d).unwrap()),
            key,
            sig,
        };
        prop_assert_eq!(XMatrixAuth::parse(&auth.to_header_value()).unwrap(), auth);
    }

    #[test]
    fn liberal_spellings_parse_the_same(
        origin in server_name(),
        destination in server_name(),
        key in key_id(),
        sig in signature(),
        order in Just([0usize, 1, 2, 3]).prop_shuffle(),
        styles in prop::collection::vec((any::<bool>(), any::<bool>(), any::<bool>()), 4),
        unknown in prop::option::of("[a-z]{1,5}"),
    ) {
        let values = [("origin", &origin), ("destination", &destination), ("key", &key), ("sig", &sig)];
        let mut params: Vec<String> = order
            .iter()
            .zip(&styles)
            .map(|(index, (upper, quoted, space))| {
                let (name, value) = values[*index];
                spell(name, value, *upper, *quoted, *space)
            })
            .collect();
        if let Some(unknown) = unknown {
            params.insert(1, format!("{unknown}x=\"ignored, really\""));
        }
        let header = format!("X-Matrix {}", params.join(","));
        let parsed = XMatrixAuth::parse(&header).unwrap();
        prop_assert_eq!(parsed.origin.as_str(), origin.as_str());
        prop_assert_eq!(parsed.destination.as_ref().map(ServerName::as_str), Some(destination.as_str()));
        prop_assert_eq!(parsed.key, key);
        prop_assert_eq!(parsed.sig, sig);
    }

}

proptest! {
    // Key generation and signing are slow in debug builds; fewer cases suffice.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn signatures_verify_for_any_request(
        method in "GET|PUT|POST|DELETE",
        uri in "/_matrix/[a-zA-Z0-9%/?=&._~-]{0,40}",
        body in prop::option::of(prop::collection::btree_map("[a-z\u{e9}]{1,4}", any::<i32>(), 0..4)),
        seed in any::<[u8; 32]>(),
    ) {
        let key = ServerSigningKey::from_seed("p", &seed).unwrap();
        let origin = ServerName::parse("a.example").unwrap();
        let destination = ServerName::parse("b.example:8448").unwrap();
        let content = body.map(|b| serde_json::to_value(b).unwrap());
        let auth = sign_request(&key, &origin, &destination, &method, &uri, content.as_ref()).unwrap();
        let parsed = XMatrixAuth::parse(&auth.to_header_value()).unwrap();
        prop_assert!(parsed.verify(&method, &uri, content.as_ref(), &destination, &key.verifying_key()).is_ok());
        let other: Option<Value> = match &content {
            Some(_) => None,
            None => Some(serde_json::json!({})),
        };
        prop_assert!(parsed.verify(&method, &uri, other.as_ref(), &destination, &key.verifying_key()).is_err());
    }
}
