//! A line-oriented tool that exposes Hush's canonical JSON, signed JSON, key documents and X-Matrix
//! headers to other programs, so tests can check them against other Matrix implementations (the
//! Python interop tests use it with `signedjson` and `canonicaljson`).
//!
//! Each line on stdin is one JSON command; each answer is one JSON line on stdout, either
//! `{"ok": true, ...}` or `{"ok": false, "error": "..."}`. Seeds and keys are unpadded base64.
//!
//! | `op` | fields | answer |
//! |---|---|---|
//! | `canonical` | `json_text` | `canonical` (string) |
//! | `public_key` | `seed` | `public_key` |
//! | `sign` | `seed`, `entity`, `key_id`, `value` | `value` (signed) |
//! | `verify` | `public_key`, `entity`, `key_id`, `value` | — |
//! | `key_document` | `seed`, `version`, `server_name`, `valid_until_ts` | `value` |
//! | `verify_key_document` | `value`, `server_name`, optional `now_ms` | `key_ids` |
//! | `xmatrix_header` | `seed`, `version`, `origin`, `destination`, `method`, `uri`, optional `content` | `header` |
//! | `xmatrix_verify` | `header`, `public_key`, `method`, `uri`, `destination`, optional `content` | `origin`, `key` |

use std::io::{BufRead as _, Write as _};

use ed25519_dalek::{SigningKey, VerifyingKey};
use hush_federation::base64::{decode_lenient, encode_unpadded};
use hush_federation::canonical::to_canonical_string;
use hush_federation::ids::ServerName;
use hush_federation::keys::{
    build_key_document, unix_millis_now, verify_key_document, ServerSigningKey,
};
use hush_federation::signing::{sign_json, verify_json};
use hush_federation::xmatrix::{sign_request, XMatrixAuth};
use serde_json::{json, Value};

fn field<'a>(command: &'a Value, name: &str) -> Result<&'a Value, String> {
    command
        .get(name)
        .ok_or_else(|| format!("missing field {name}"))
}

fn text<'a>(command: &'a Value, name: &str) -> Result<&'a str, String> {
    field(command, name)?
        .as_str()
        .ok_or_else(|| format!("{name} must be a string"))
}

fn seed(command: &Value) -> Result<[u8; 32], String> {
    let bytes = decode_lenient(text(command, "seed")?).map_err(|e| e.to_string())?;
    bytes
        .try_into()
        .map_err(|_| "seed must be 32 bytes".to_owned())
}

fn public_key(command: &Value) -> Result<VerifyingKey, String> {
    let bytes = decode_lenient(text(command, "public_key")?).map_err(|e| e.to_string())?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "public key must be 32 bytes".to_owned())?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| e.to_string())
}

fn server_name(command: &Value, name: &str) -> Result<ServerName, String> {
    ServerName::parse(text(command, name)?).map_err(|e| e.to_string())
}

fn content(command: &Value) -> Option<&Value> {
    command.get("content").filter(|c| !c.is_null())
}

fn run(command: &Value) -> Result<Value, String> {
    match text(command, "op")? {
        "canonical" => {
            let value: Value =
                serde_json::from_str(text(command, "json_text")?).map_err(|e| e.to_string())?;
            let canonical = to_canonical_string(&value).map_err(|e| e.to_string())?;
            Ok(json!({"canonical": canonical}))
        }
        "public_key" => {
            let key = SigningKey::from_bytes(&seed(command)?);
            Ok(json!({"public_key": encode_unpadded(key.verifying_key().as_bytes())}))
        }
        "sign" => {
            let key = SigningKey::from_bytes(&seed(command)?);
            let mut value = field(command, "value")?.clone();
            sign_json(
                &mut value,
                text(command, "entity")?,
                text(command, "key_id")?,
                &key,
            )
            .map_err(|e| e.to_string())?;
            Ok(json!({"value": value}))
        }
        "verify" => {
            let key = public_key(command)?;
            verify_json(
                field(command, "value")?,
                text(command, "entity")?,
                text(command, "key_id")?,
                &key,
            )
            .map_err(|e| e.to_string())?;
            Ok(json!({}))
        }
        "key_document" => {
            let key = ServerSigningKey::from_seed(text(command, "version")?, &seed(command)?)
                .map_err(|e| e.to_string())?;
            let valid_until_ts = field(command, "valid_until_ts")?
                .as_u64()
                .ok_or("valid_until_ts must be an integer")?;
            let document = build_key_document(
                &server_name(command, "server_name")?,
                &[&key],
                &[],
                valid_until_ts,
            )
            .map_err(|e| e.to_string())?;
            Ok(json!({"value": document}))
        }
        "verify_key_document" => {
            let now = command
                .get("now_ms")
                .and_then(Value::as_u64)
                .unwrap_or_else(unix_millis_now);
            let verified = verify_key_document(
                field(command, "value")?,
                &server_name(command, "server_name")?,
                now,
            )
            .map_err(|e| e.to_string())?;
            Ok(json!({"key_ids": verified.verify_keys.keys().collect::<Vec<_>>()}))
        }
        "xmatrix_header" => {
            let key = ServerSigningKey::from_seed(text(command, "version")?, &seed(command)?)
                .map_err(|e| e.to_string())?;
            let auth = sign_request(
                &key,
                &server_name(command, "origin")?,
                &server_name(command, "destination")?,
                text(command, "method")?,
                text(command, "uri")?,
                content(command),
            )
            .map_err(|e| e.to_string())?;
            Ok(json!({"header": auth.to_header_value()}))
        }
        "xmatrix_verify" => {
            let auth = XMatrixAuth::parse(text(command, "header")?).map_err(|e| e.to_string())?;
            auth.verify(
                text(command, "method")?,
                text(command, "uri")?,
                content(command),
                &server_name(command, "destination")?,
                &public_key(command)?,
            )
            .map_err(|e| e.to_string())?;
            Ok(json!({"origin": auth.origin, "key": auth.key}))
        }
        other => Err(format!("unknown op {other}")),
    }
}

fn main() -> std::io::Result<()> {
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let answer = match serde_json::from_str::<Value>(&line)
            .map_err(|e| e.to_string())
            .and_then(|c| run(&c))
        {
            Ok(Value::Object(mut fields)) => {
                fields.insert("ok".into(), Value::Bool(true));
                Value::Object(fields)
            }
            Ok(other) => json!({"ok": true, "result": other}),
            Err(error) => json!({"ok": false, "error": error}),
        };
        writeln!(stdout, "{answer}")?;
        stdout.flush()?;
    }
    Ok(())
}
