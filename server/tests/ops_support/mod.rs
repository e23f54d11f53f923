//! Shared helpers for the `ops_*` integration tests: run the real `hushd` binary, make fresh
//! PostgreSQL databases, talk HTTP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Result type for tests.
pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The binary under test.
pub fn hushd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hushd"))
}

/// Output of a finished `hushd` command.
#[derive(Debug)]
pub struct Output {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// The exit code (-1 when killed by a signal).
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }
}

/// Runs `hushd ARGS` to completion with `env` added and `stdin` written to its input.
pub fn run(args: &[&str], env: &[(&str, &str)], cwd: &Path, stdin: &str) -> TestResult<Output> {
    let mut cmd = Command::new(hushd_bin());
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    clean_env(&mut cmd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    Ok(Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars() {
        if key.starts_with("HUSHD_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "warn");
}

/// A running `hushd`; killed when dropped.
pub struct Server {
    child: Child,
    /// Base URL from the `listening on` line, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    stderr: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `hushd ARGS` with `env` and waits for its `listening on` line (20 s at most).
    pub fn start(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> TestResult<Server> {
        let mut cmd = Command::new(hushd_bin());
        cmd.args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        clean_env(&mut cmd);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (line_tx, line_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if err_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match line_rx.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("listening on ") {
                        let url = rest.split(", ").next().unwrap_or(rest).to_owned();
                        return Ok(Server {
                            child,
                            url,
                            stderr: err_rx,
                        });
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let errors: Vec<String> = err_rx.try_iter().collect();
                    return Err(format!("hushd did not start: {}", errors.join("\n")).into());
                }
            }
        }
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) -> TestResult {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err("kill -TERM failed".into())
        }
    }

    /// Waits for the process to exit (at most `limit`).
    pub fn wait_exit(&mut self, limit: Duration) -> TestResult<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err("hushd did not exit in time".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything written to standard error so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A fresh PostgreSQL database, dropped when this is dropped.
pub use hush_testkit::pg::PgTestDb as PgDatabase;

/// A database URL for `backend` (`"sqlite"` in `dir`, or a fresh PostgreSQL database).
pub fn database(backend: &str, dir: &Path) -> TestResult<(String, Option<PgDatabase>)> {
    match backend {
        "sqlite" => Ok((format!("sqlite://{}", dir.join("hushd.db").display()), None)),
        _ => {
            let db = PgDatabase::create_blocking("ops");
            Ok((db.url.clone(), Some(db)))
        }
    }
}

/// Environment for a test server in `dir`: free port, given database, fresh signing key.
pub fn server_env(dir: &Path, database_url: &str) -> Vec<(String, String)> {
    vec![
        ("HUSHD_LISTEN".into(), "127.0.0.1:0".into()),
        ("HUSHD_DATABASE_URL".into(), database_url.into()),
        (
            "HUSHD_SIGNING_KEY_PATH".into(),
            dir.join("signing.key").display().to_string(),
        ),
    ]
}

/// Borrowed view of an owned environment list.
pub fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// An HTTP client for tests.
pub fn client() -> TestResult<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// Registers `user` with `m.login.dummy` (open registration): `(user_id, access_token)`.
pub async fn register(
    http: &reqwest::Client,
    base: &str,
    user: &str,
) -> TestResult<(String, String)> {
    let resp = http
        .post(format!("{base}/_matrix/client/v3/register"))
        .json(&json!({"username": user, "password": "correct horse battery", "auth": {"type": "m.login.dummy"}}))
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    if !status.is_success() {
        return Err(format!("register {user}: {status} {body}").into());
    }
    Ok((
        body["user_id"].as_str().unwrap_or_default().to_owned(),
        body["access_token"].as_str().unwrap_or_default().to_owned(),
    ))
}

/// `POST /login` with a password: the HTTP status and body.
pub async fn login(
    http: &reqwest::Client,
    base: &str,
    user: &str,
    password: &str,
) -> TestResult<(u16, Value)> {
    let resp = http
        .post(format!("{base}/_matrix/client/v3/login"))
        .json(&json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password}))
        .send()
        .await?;
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}
