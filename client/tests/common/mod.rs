//! End-to-end harness: real `hushd` processes (HTTPS with a test CA made by rcgen, or plain
//! HTTP behind a recording TCP relay), and the real `hush` binary run with its own profile
//! per device.
//!
//! `hushd` is taken from `HUSHD_BIN` if set; otherwise it is built once per test binary with
//! `cargo build -p hush-server --bin hushd` (`--release` for the benchmarks) and taken from
//! the workspace target directory.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `hushd` binary: `HUSHD_BIN` if set, else built once in the profile of this harness
/// (the tests, built with debug assertions, use a debug `hushd`; the benchmarks, built
/// without, a release one, so that server figures are not those of unoptimised code).
pub fn hushd_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("HUSHD_BIN") {
            return PathBuf::from(p);
        }
        let release = !cfg!(debug_assertions);
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_owned();
        let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        build.args(["build", "-p", "hush-server", "--bin", "hushd"]);
        if release {
            build.arg("--release");
        }
        let status = build
            .current_dir(&workspace)
            .status()
            .expect("cargo build hushd");
        assert!(status.success(), "building hushd failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target"));
        let bin = target
            .join(if release { "release" } else { "debug" })
            .join("hushd");
        eprintln!("using {}", bin.display());
        bin
    })
    .clone()
}

/// The `hush` binary under test.
pub fn hush_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hush"))
}

pub use hush_testkit::ca::TestCa;
use hush_testkit::net::free_port;

/// Which database the server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    /// SQLite in the server directory.
    Sqlite,
    /// A fresh PostgreSQL database on 127.0.0.1:5432.
    Postgres,
}

/// Creates a fresh PostgreSQL database and returns its URL. It outlives the test (servers may
/// still use it while the test ends); the next test process drops it (`hush_testkit::pg`).
pub fn fresh_postgres() -> String {
    hush_testkit::pg::PgTestDb::create_blocking("client").persist()
}

/// One running `hushd`.
pub struct Server {
    /// Server name `IP:PORT`.
    pub name: String,
    /// Base URL for clients.
    pub url: String,
    /// Working directory (config, database, log).
    pub dir: tempfile::TempDir,
    config: PathBuf,
    child: Option<Child>,
}

/// Options of a test server.
pub struct ServerOptions<'a> {
    /// HTTPS with this CA (None = plain HTTP).
    pub ca: Option<&'a TestCa>,
    /// Database.
    pub db: Db,
    /// Loopback IP (distinct per server in federation tests).
    pub ip: &'a str,
    /// Extra TOML appended to the config.
    pub extra: String,
}

impl Server {
    /// A single HTTPS server on 127.0.0.1 with SQLite and the default configuration.
    pub fn start_local(ca: &TestCa) -> Server {
        Server::start(ServerOptions {
            ca: Some(ca),
            db: Db::Sqlite,
            ip: "127.0.0.1",
            extra: String::new(),
        })
    }

    /// Starts a server and waits until it answers.
    pub fn start(opts: ServerOptions<'_>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port(opts.ip);
        let name = format!("{}:{port}", opts.ip);
        let database_url = match opts.db {
            Db::Sqlite => format!("sqlite://{}", dir.path().join("hushd.db").display()),
            Db::Postgres => fresh_postgres(),
        };
        let init = Command::new(hushd_bin())
            .args(["init", "--server-name", &name, "--dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "hushd init: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let tls = match opts.ca {
            Some(ca) => {
                let (cert, key) = ca.issue(opts.ip, dir.path());
                format!(
                    "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                    cert.display(),
                    key.display()
                )
            }
            None => String::new(),
        };
        let config = format!(
            "server_name = \"{name}\"\nlisten = [\"{name}\"]\ndatabase_url = \"{database_url}\"\n\
             registration = \"open\"\nsigning_key_path = \"{}\"\nshutdown_grace_secs = 2\n\n{tls}\n\
             [rate_limits]\nenabled = false\n\n{}\n",
            dir.path().join("signing.key").display(),
            opts.extra,
        );
        let config_path = dir.path().join("test.toml");
        std::fs::write(&config_path, config).unwrap();
        let scheme = if opts.ca.is_some() { "https" } else { "http" };
        let mut server = Server {
            url: format!("{scheme}://{name}"),
            name,
            dir,
            config: config_path,
            child: None,
        };
        server.launch();
        server
    }

    /// Starts the process and waits for `/versions` (checked with `curl`-free TCP connect).
    pub fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("hushd.log"))
            .unwrap();
        let child = Command::new(hushd_bin())
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(&self.name).is_ok() {
                std::thread::sleep(Duration::from_millis(100));
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("hushd exited with {status}; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "hushd did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hushd.log")).unwrap_or_default()
    }

    /// Every file of the server directory (database, WAL, log...).
    pub fn files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect()
    }

    /// Stops the server with SIGTERM and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A device: one `hush` profile.
#[derive(Clone)]
pub struct Device {
    /// Data directory shared by the test's profiles.
    pub data_dir: PathBuf,
    /// Profile name.
    pub profile: String,
    /// Server URL.
    pub server: String,
    /// CA file, if HTTPS.
    pub ca: Option<PathBuf>,
    /// Full user ID.
    pub user_id: String,
}

/// The password used for every test account.
pub const PASSWORD: &str = "correct horse battery staple";
/// The store passphrase used for every test profile.
pub const PASSPHRASE: &str = "test passphrase for the local store";

/// What one `hush` run did.
#[derive(Debug)]
pub struct Run {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Panics unless the exit code is 0.
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "hush failed: {self:?}");
        self
    }

    /// The JSON lines of stdout.
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Device {
    /// Opens this device's client store (with [`PASSPHRASE`]) as an engine `Client`, logged in
    /// as the stored login, for tests that drive the library directly.
    pub async fn open_client(&self) -> hush_client::engine::Client {
        use hush_client::api::{http_client, Api};
        let store = hush_client::store::Store::open(
            &self.profile_dir(),
            &hush_client::vault::Passphrase::new(PASSPHRASE.into()),
        )
        .await
        .unwrap();
        let login = store.login().await.unwrap().unwrap();
        let http = http_client(self.ca.as_deref()).unwrap();
        let api = Api::new(http, &login.server_url).with_token(&login.access_token);
        hush_client::engine::Client::new(store, api, login)
    }
}

impl Device {
    /// The base command with the profile's environment.
    pub fn command(&self) -> Command {
        let mut c = Command::new(hush_bin());
        c.env("HUSH_DATA_DIR", &self.data_dir)
            .env("HUSH_PROFILE", &self.profile)
            .env("HUSH_PASSPHRASE", PASSPHRASE)
            .env("HUSH_KDF_MEMORY_KIB", "1024")
            .env_remove("HUSH_CA_FILE")
            .env_remove("HUSH_SERVER")
            .stdin(Stdio::null());
        c
    }

    /// Runs `hush ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command().args(args).output().unwrap())
    }

    /// Runs `hush ARGS` with `input` on standard input.
    pub fn run_with_input(&self, args: &[&str], input: &str) -> Run {
        use std::io::Write;
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        Run::from(child.wait_with_output().unwrap())
    }

    fn password_file(&self) -> PathBuf {
        let p = self.data_dir.join(format!("{}.password", self.profile));
        std::fs::write(&p, PASSWORD).unwrap();
        p
    }

    fn account_args(&self, verb: &str, name: &str) -> Vec<String> {
        let mut args = vec![
            verb.to_owned(),
            name.to_owned(),
            "--server".into(),
            self.server.clone(),
        ];
        args.push("--password-file".into());
        args.push(self.password_file().display().to_string());
        if let Some(ca) = &self.ca {
            args.push("--ca-file".into());
            args.push(ca.display().to_string());
        }
        args
    }

    /// Registers `name` on `server` as a new profile.
    pub fn register(
        data_dir: &Path,
        profile: &str,
        server: &Server,
        ca: Option<&TestCa>,
        name: &str,
    ) -> Device {
        let mut d = Device {
            data_dir: data_dir.to_owned(),
            profile: profile.to_owned(),
            server: server.url.clone(),
            ca: ca.map(|c| c.pem_path.clone()),
            user_id: format!("@{name}:{}", server.name),
        };
        let args = d.account_args("register", name);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = d.run(&args).ok();
        assert!(out.stdout.contains(&d.user_id), "{out:?}");
        d.user_id = format!("@{name}:{}", server.name);
        d
    }

    /// Logs in as another device of the same user in a new profile.
    pub fn login_new_device(&self, profile: &str, extra: &[&str]) -> Device {
        let d = Device {
            profile: profile.to_owned(),
            ..self.clone()
        };
        let localpart = self
            .user_id
            .trim_start_matches('@')
            .split(':')
            .next()
            .unwrap()
            .to_owned();
        let mut args = d.account_args("login", &localpart);
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        d.run(&args).ok();
        d
    }

    /// `hush send USER MESSAGE`.
    pub fn send(&self, to: &Device, text: &str) -> Run {
        self.run(&["send", &to.user_id, text])
    }

    /// `hush listen --once --json`: everything waiting, as JSON values.
    pub fn receive(&self) -> Vec<Value> {
        self.run(&["listen", "--once", "--json"]).ok().json_lines()
    }

    /// The bodies of the message lines among `values`.
    pub fn bodies(values: &[Value]) -> Vec<String> {
        values
            .iter()
            .filter(|v| v["type"] == "message")
            .map(|v| v["body"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The directory of this profile.
    pub fn profile_dir(&self) -> PathBuf {
        self.data_dir.join("profiles").join(&self.profile)
    }

    /// The files of this profile's store.
    pub fn store_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.profile_dir())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect()
    }
}

/// A plain TCP relay that records every byte in both directions (the "captured HTTP bodies").
pub struct Recorder {
    /// Address clients connect to.
    pub url: String,
    /// Everything seen.
    pub bytes: Arc<Mutex<Vec<u8>>>,
    _thread: std::thread::JoinHandle<()>,
}

impl Recorder {
    /// Relays `127.0.0.1:PORT` to `target` (`IP:PORT`).
    pub fn start(target: &str) -> Recorder {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let target = target.to_owned();
        let sink = Arc::clone(&bytes);
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { return };
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let sink = Arc::clone(&sink);
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let mut buf = [0u8; 16384];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => {
                                    let _ = to.shutdown(std::net::Shutdown::Write);
                                    return;
                                }
                                Ok(n) => {
                                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                                    if to.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    });
                }
            }
        });
        Recorder {
            url,
            bytes,
            _thread: thread,
        }
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

impl Device {
    /// `hush listen --json --count N --timeout SECS`: waits for `n` messages (federation
    /// delivers asynchronously), then checks that nothing more arrives.
    pub fn receive_n(&self, n: usize, secs: u64) -> Vec<Value> {
        let mut all = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Device::bodies(&all).len() < n && Instant::now() < deadline {
            let out = self
                .run(&[
                    "listen",
                    "--json",
                    "--count",
                    &n.to_string(),
                    "--timeout",
                    "5",
                ])
                .ok();
            all.extend(out.json_lines());
        }
        all.extend(self.receive());
        all
    }
}

/// The `[federation]` section for a test server trusting `ca`.
pub fn federation_section(ca: &TestCa) -> String {
    format!(
        "[federation]\nca_files = [\"{}\"]\nretry_min_ms = 200\nretry_max_ms = 1000\npoll_interval_ms = 20\n",
        ca.pem_path.display()
    )
}
