//! The `hushd` command line against the real binary: configuration errors and exit codes,
//! environment overrides, `init`, `admin` on SQLite and PostgreSQL, graceful shutdown.

mod ops_support;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use ops_support::*;
use serde_json::Value;

fn write_config(dir: &std::path::Path, text: &str) -> TestResult<String> {
    let path = dir.join("hushd.toml");
    std::fs::write(&path, text)?;
    Ok(path.display().to_string())
}

#[test]
fn bad_config_names_the_key_and_exits_2() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cases = [
        ("listen = [\"localhost\"]\n", "listen: invalid address"),
        (
            "database_url = \"mysql://db/hush\"\n",
            "database_url: must start with sqlite:// or postgres://",
        ),
        ("colour = \"blue\"\n", "colour: unknown key"),
        ("[limits]\nsync_batch = \"lots\"\n", "limits.sync_batch:"),
        ("registration = \"sometimes\"\n", "registration:"),
        (
            "[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n",
            "tls.cert:",
        ),
        ("server_name = \n", "not valid TOML"),
    ];
    for (text, expected) in cases {
        let path = write_config(dir.path(), text)?;
        let out = run(&["--config", &path], &[], dir.path(), "")?;
        assert_eq!(out.code(), 2, "config {text:?}: {}", out.stderr);
        assert!(
            out.stderr.contains(expected),
            "config {text:?}: expected {expected:?} in {:?}",
            out.stderr
        );
    }
    let out = run(
        &["config", "check"],
        &[("HUSHD_LIMITS_SYNC_BATCH", "many")],
        dir.path(),
        "",
    )?;
    assert_eq!(out.code(), 2);
    assert!(
        out.stderr.contains("HUSHD_LIMITS_SYNC_BATCH"),
        "{}",
        out.stderr
    );
    let out = run(
        &["--config", "/nonexistent/hushd.toml"],
        &[],
        dir.path(),
        "",
    )?;
    assert_eq!(out.code(), 2);
    assert!(out.stderr.contains("/nonexistent/hushd.toml"));
    Ok(())
}

#[test]
fn usage_errors_exit_2_and_help_everywhere() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = run(&["--no-such-flag"], &[], dir.path(), "")?;
    assert_eq!(out.code(), 2);
    let out = run(
        &["admin", "token", "create", "--expires-in", "soon"],
        &[],
        dir.path(),
        "",
    )?;
    assert_eq!(out.code(), 2, "{}", out.stderr);
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["init", "--help"],
        vec!["admin", "--help"],
        vec!["admin", "user", "create", "--help"],
        vec!["admin", "token", "create", "--help"],
        vec!["migrate", "--help"],
    ] {
        let out = run(&args, &[], dir.path(), "")?;
        assert_eq!(out.code(), 0, "{args:?}");
        assert!(out.stdout.contains("Usage:"), "{args:?}: {}", out.stdout);
    }
    Ok(())
}

#[test]
fn config_check_applies_environment_overrides() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = write_config(
        dir.path(),
        "server_name = \"file.example\"\n[limits]\nsync_batch = 50\n",
    )?;
    let out = run(
        &["--config", &path, "config", "check"],
        &[
            ("HUSHD_SERVER_NAME", "env.example"),
            ("HUSHD_LIMITS_SYNC_BATCH", "25"),
            (
                "HUSHD_DATABASE_URL",
                "postgres://hush:s3cret@db.internal/hush",
            ),
            ("HUSHD_RATE_LIMITS_ENABLED", "false"),
        ],
        dir.path(),
        "",
    )?;
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(out.stdout.contains("\"env.example\""), "{}", out.stdout);
    assert!(out.stdout.contains("sync_batch: 25"), "{}", out.stdout);
    assert!(out.stdout.contains("enabled: false"), "{}", out.stdout);
    assert!(
        !out.stdout.contains("s3cret"),
        "password printed: {}",
        out.stdout
    );
    Ok(())
}

#[tokio::test]
async fn environment_overrides_reach_the_server() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = write_config(
        dir.path(),
        "server_name = \"file.example\"\nregistration = \"closed\"\n",
    )?;
    let (db, _pg) = database("sqlite", dir.path())?;
    // A config file means a real server: its signing key must exist (made by `init`).
    let keys = dir.path().join("keys").display().to_string();
    let out = run(
        &["init", "--server-name", "x.test", "--dir", &keys],
        &[],
        dir.path(),
        "",
    )?;
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let mut env = server_env(dir.path(), &db);
    env.push((
        "HUSHD_SIGNING_KEY_PATH".into(),
        format!("{keys}/signing.key"),
    ));
    env.push(("HUSHD_SERVER_NAME".into(), "env.example".into()));
    env.push(("HUSHD_REGISTRATION".into(), "open".into()));
    let server = Server::start(&["--config", &path], &env_refs(&env), dir.path())?;
    let http = client()?;
    let (user_id, _) = register(&http, &server.url, "alice").await?;
    assert_eq!(user_id, "@alice:env.example");
    Ok(())
}

#[tokio::test]
async fn init_writes_a_config_that_starts() -> TestResult {
    let dir = tempfile::tempdir()?;
    let home = dir.path().join("srv");
    let home_s = home.display().to_string();
    let out = run(
        &["init", "--server-name", "hush.test", "--dir", &home_s],
        &[],
        dir.path(),
        "",
    )?;
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let config_path = home.join("hushd.toml");
    let text = std::fs::read_to_string(&config_path)?;
    assert!(text.contains("server_name = \"hush.test\""));
    assert!(text.contains("registration = \"closed\""));
    assert!(
        text.contains("HUSHD_LIMITS_SYNC_BATCH"),
        "keys are documented"
    );
    let key = std::fs::read_to_string(home.join("signing.key"))?;
    assert!(key.starts_with("ed25519 "));
    let mode = std::fs::metadata(home.join("signing.key"))?
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // A second init must not overwrite anything.
    let again = run(
        &["init", "--server-name", "other.test", "--dir", &home_s],
        &[],
        dir.path(),
        "",
    )?;
    assert_eq!(again.code(), 1);
    assert_eq!(std::fs::read_to_string(home.join("signing.key"))?, key);

    let config_s = config_path.display().to_string();
    let server = Server::start(
        &["serve", "--config", &config_s],
        &[("HUSHD_LISTEN", "127.0.0.1:0")],
        dir.path(),
    )?;
    let http = client()?;
    let versions = http
        .get(format!("{}/_matrix/client/versions", server.url))
        .send()
        .await?;
    assert_eq!(versions.status(), 200);
    // Registration is closed in a generated config.
    let resp = http
        .post(format!("{}/_matrix/client/v3/register", server.url))
        .json(&serde_json::json!({"username": "mallory", "password": "x", "auth": {"type": "m.login.dummy"}}))
        .send()
        .await?;
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await?;
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    Ok(())
}

async fn admin_commands_on(backend: &str) -> TestResult {
    let dir = tempfile::tempdir()?;
    let (db, _pg) = database(backend, dir.path())?;
    let env = server_env(dir.path(), &db);
    let mut env_r = env_refs(&env);
    env_r.push(("HUSHD_SERVER_NAME", "admin.test"));
    let cwd = dir.path();

    let out = run(&["migrate"], &env_r, cwd, "")?;
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let out = run(
        &["admin", "user", "create", "Alice"],
        &env_r,
        cwd,
        "hunter2 with spaces\n",
    )?;
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(out.stdout.contains("@alice:admin.test"), "{}", out.stdout);
    let out = run(
        &["admin", "user", "create", "alice"],
        &env_r,
        cwd,
        "other\n",
    )?;
    assert_eq!(out.code(), 1, "a taken name fails: {}", out.stdout);
    let pw_file = dir.path().join("pw");
    std::fs::write(&pw_file, "from a file\n")?;
    let pw_s = pw_file.display().to_string();
    let out = run(
        &[
            "admin",
            "user",
            "create",
            "@bob:admin.test",
            "--password-file",
            &pw_s,
        ],
        &env_r,
        cwd,
        "",
    )?;
    assert_eq!(out.code(), 0, "{}", out.stderr);

    // Tokens: create (random and chosen), list, revoke.
    let out = run(
        &[
            "admin",
            "token",
            "create",
            "--uses",
            "2",
            "--expires-in",
            "1h",
        ],
        &env_r,
        cwd,
        "",
    )?;
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let random_token = out.stdout.trim().to_owned();
    assert!(!random_token.is_empty());
    let out = run(
        &["admin", "token", "create", "--token", "welcome-1"],
        &env_r,
        cwd,
        "",
    )?;
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let out = run(&["admin", "token", "list"], &env_r, cwd, "")?;
    assert_eq!(out.code(), 0);
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with(&random_token))
        .ok_or("token not listed")?;
    assert!(line.split_whitespace().nth(1) == Some("2"), "{line}");
    assert!(out.stdout.contains("welcome-1"));
    let out = run(&["admin", "token", "revoke", "welcome-1"], &env_r, cwd, "")?;
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let out = run(&["admin", "token", "list"], &env_r, cwd, "")?;
    assert!(!out.stdout.contains("welcome-1"));
    let out = run(&["admin", "token", "revoke", "welcome-1"], &env_r, cwd, "")?;
    assert_eq!(out.code(), 1, "revoking an unknown token fails");

    // The accounts work: log in with the passwords given, see the devices, deactivate.
    let server = Server::start(&[], &env_r, cwd)?;
    let http = client()?;
    let (status, body) = login(&http, &server.url, "alice", "hunter2 with spaces").await?;
    assert_eq!(status, 200, "{body}");
    let device = body["device_id"].as_str().unwrap_or_default().to_owned();
    let (status, _) = login(&http, &server.url, "bob", "from a file").await?;
    assert_eq!(status, 200);
    let out = run(&["admin", "user", "devices", "alice"], &env_r, cwd, "")?;
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(out.stdout.contains(&device), "{}", out.stdout);
    let out = run(&["admin", "user", "deactivate", "alice"], &env_r, cwd, "")?;
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let (status, body) = login(&http, &server.url, "alice", "hunter2 with spaces").await?;
    assert_eq!(status, 403, "{body}");
    Ok(())
}

#[tokio::test]
async fn admin_commands_sqlite() -> TestResult {
    admin_commands_on("sqlite").await
}

#[tokio::test]
async fn admin_commands_postgres() -> TestResult {
    admin_commands_on("postgres").await
}

#[tokio::test]
async fn sigterm_during_long_poll_finishes_it_and_exits_0() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (db, _pg) = database("sqlite", dir.path())?;
    let env = server_env(dir.path(), &db);
    let mut server = Server::start(&[], &env_refs(&env), dir.path())?;
    let http = client()?;
    let (_, token) = register(&http, &server.url, "sleeper").await?;
    let first: Value = http
        .get(format!("{}/_matrix/client/v3/sync", server.url))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    let since = first["next_batch"]
        .as_str()
        .ok_or("no next_batch")?
        .to_owned();
    let url = format!(
        "{}/_matrix/client/v3/sync?since={since}&timeout=3000",
        server.url
    );
    let started = Instant::now();
    let poll = tokio::spawn({
        let http = http.clone();
        let token = token.clone();
        async move { http.get(url).bearer_auth(token).send().await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.terminate()?;
    let resp = poll.await??;
    assert_eq!(resp.status(), 200, "the in-flight long-poll is answered");
    let body: Value = resp.json().await?;
    assert!(body["next_batch"].is_string());
    let status = tokio::task::spawn_blocking(move || {
        let status = server.wait_exit(Duration::from_secs(15));
        (status, server)
    })
    .await?;
    let (status, server) = status;
    assert_eq!(status?.code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(15));
    // Nothing listens any more.
    let after = http
        .get(format!("{}/_matrix/client/versions", server.url))
        .send()
        .await;
    assert!(after.is_err());
    Ok(())
}

#[test]
fn operations_doc_has_the_generated_config_reference() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = run(&["config", "reference"], &[], dir.path(), "")?;
    assert_eq!(out.code(), 0);
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/operations.md"
    ))?;
    assert!(
        doc.contains(&out.stdout),
        "docs/operations.md is out of date: paste the output of `hushd config reference`"
    );
    let example = run(&["config", "example"], &[], dir.path(), "")?;
    let path = dir.path().join("example.toml");
    std::fs::write(&path, &example.stdout)?;
    let path_s = path.display().to_string();
    let check = run(
        &["--config", &path_s, "config", "check"],
        &[],
        dir.path(),
        "",
    )?;
    assert_eq!(check.code(), 0, "the example parses: {}", check.stderr);
    Ok(())
}
