//! `hushd`, the Hush homeserver.
//!
//! Exit codes: 0 success, 1 runtime error (database unreachable, listener failed...), 2 usage
//! or configuration error.

use std::io::{BufRead, IsTerminal, Read as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use futures::future::BoxFuture;
use tracing_subscriber::EnvFilter;
use zeroize::Zeroizing;

use hush_server::config::{self, Config, ConfigError, LogFormat, RegistrationMode};
use hush_server::metrics::Metrics;
use hush_server::middleware::{Ops, UserLookup};
use hush_server::ratelimit::RateLimiter;
use hush_server::serve::{self, Site};
use hush_server::state::AppState;
use hush_server::store::Store;
use hush_server::{admin, signing_key};

/// mimalloc hands freed memory back to the system. With glibc's allocator every thread arena
/// keeps the 19 MiB argon2 working buffer of the last password hash it served (glibc raises its
/// mmap threshold after the first free), which made a burst of logins cost hundreds of MB.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Hush homeserver. Without a command and without --config it starts a development server
/// on http://127.0.0.1:8008 (SQLite under ./data, open registration).
#[derive(Debug, Parser)]
#[command(name = "hushd", version, propagate_version = true)]
struct Cli {
    /// Configuration file (hushd.toml). HUSHD_* environment variables override its keys.
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the homeserver (the default command).
    Serve,
    /// Write a commented hushd.toml (registration closed) and a new Ed25519 signing key.
    Init {
        /// The server name (DNS name or host:port); part of every user ID, cannot change later.
        #[arg(long)]
        server_name: String,
        /// Directory for hushd.toml, signing.key and the SQLite database.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Operator commands against the configured database.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The server's federation signing key.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Replace the signing key with a new one; the old public key stays published under
    /// old_verify_keys. Restart the server afterwards.
    Rotate,
}

#[derive(Debug, Subcommand)]
enum FederationCommand {
    /// Destinations with their backlog, retry count and next attempt.
    List,
    /// End a destination's backoff so it is retried at once.
    Reset {
        /// The destination server name.
        destination: String,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// The outbound federation queue.
    Federation {
        #[command(subcommand)]
        command: FederationCommand,
    },
    /// Accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Registration tokens (for registration = "token").
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create an account. The password is read from --password-file, or from standard input
    /// (one line; prompted twice on a terminal).
    Create {
        /// Localpart (alice) or full user ID (@alice:example.org).
        name: String,
        /// File whose first line is the password.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Deactivate an account: it can no longer log in; its devices, tokens, keys and mailboxes
    /// are deleted.
    Deactivate {
        /// Localpart or full user ID.
        name: String,
    },
    /// List an account's devices.
    Devices {
        /// Localpart or full user ID.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a registration token and print it.
    Create {
        /// How many registrations it allows (default: unlimited).
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
        uses: Option<i64>,
        /// Lifetime, e.g. 30m, 12h, 7d, 2w (default: never expires).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        expires_in: Option<Duration>,
        /// Use this token instead of a random one ([A-Za-z0-9._~-], at most 64).
        #[arg(long)]
        token: Option<String>,
    },
    /// List registration tokens with their usage.
    List,
    /// Delete a registration token.
    Revoke {
        /// The token.
        token: String,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Load and validate the configuration (file + environment), then print it (secrets
    /// redacted).
    Check,
    /// Print a commented example hushd.toml with every key and its default.
    Example,
    /// Print the configuration reference as a Markdown table.
    Reference,
}

/// A failure with its exit code.
enum Failure {
    /// Usage or configuration error: exit 2.
    Usage(String),
    /// Runtime error: exit 1.
    Runtime(String),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Usage(format!("configuration error: {e}"))
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = e.exit_code();
            let _ = e.print();
            return ExitCode::from(u8::try_from(code).unwrap_or(2));
        }
    };
    // `serve` sizes its runtime from its configuration (read again, and used, by `run`).
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if matches!(cli.command, None | Some(Command::Serve)) {
        match load_serve_config(cli.config.as_deref()) {
            Ok(config) => {
                builder.worker_threads(config.runtime_threads());
            }
            Err(e) => return exit_with(Failure::from(e)),
        }
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hushd: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => exit_with(failure),
    }
}

/// The configuration of `serve`: the development defaults without a file, else the file's.
fn load_serve_config(path: Option<&std::path::Path>) -> Result<Config, ConfigError> {
    let base = if path.is_none() {
        Config::dev()
    } else {
        Config::default()
    };
    Config::load_with(base, path, |k| std::env::var(k).ok())
}

/// Prints a failure and turns it into the exit code.
fn exit_with(failure: Failure) -> ExitCode {
    match failure {
        Failure::Usage(message) => {
            eprintln!("hushd: {message}");
            ExitCode::from(2)
        }
        Failure::Runtime(message) => {
            eprintln!("hushd: {message}");
            ExitCode::from(1)
        }
    }
}

/// Runs the command.
async fn run(cli: Cli) -> Result<(), Failure> {
    let config_path = cli.config.as_deref();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let config = load_serve_config(config_path)?;
            init_logging(config.log_format, "info");
            serve_command(config, config_path.is_none()).await
        }
        Command::Init { server_name, dir } => init_command(&server_name, &dir),
        Command::Migrate => {
            let config = Config::load(config_path)?;
            init_logging(config.log_format, "warn");
            let store = connect(&config).await?;
            let backend = if store.is_postgres() {
                "postgres"
            } else {
                "sqlite"
            };
            println!("migrations applied ({backend})");
            Ok(())
        }
        Command::Admin { command } => {
            let config = Config::load(config_path)?;
            init_logging(config.log_format, "warn");
            let store = connect(&config).await?;
            admin_command(&config, &store, command).await
        }
        Command::Keys {
            command: KeysCommand::Rotate,
        } => {
            let config = Config::load(config_path)?;
            let (old, new) =
                hush_server::service::federation_keys::rotate(&config.signing_key_path)
                    .map_err(Failure::Runtime)?;
            println!("rotated: {old} -> {new} (restart hushd to use it)");
            Ok(())
        }
        Command::Config { command } => match command {
            ConfigCommand::Check => {
                let config = Config::load(config_path)?;
                out(&format!("configuration OK\n{config:#?}\n"));
                Ok(())
            }
            ConfigCommand::Example => {
                out(&format!("{}\n", config::example_toml(&Config::default())));
                Ok(())
            }
            ConfigCommand::Reference => {
                out(&config::reference_markdown());
                Ok(())
            }
        },
    }
}

/// Writes to standard output, ignoring a closed pipe (`hushd config example | head`).
fn out(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Logs to standard error; the level comes from `RUST_LOG` (else `default_level`).
fn init_logging(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Connects (creating the SQLite directory if needed) and runs migrations.
async fn connect(config: &Config) -> Result<Store, Failure> {
    if let Some(path) = config.database_url.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap_or(path);
        if let Some(parent) = Path::new(path).parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    Failure::Runtime(format!(
                        "database_url: cannot create {}: {e}",
                        parent.display()
                    ))
                })?;
            }
        }
    }
    Store::connect(&config.database_url).await.map_err(|e| {
        Failure::Runtime(format!(
            "database {}: {e}",
            config::redact_url(&config.database_url)
        ))
    })
}

/// Per-user rate limits look up access tokens through the API's auth.
struct StateUsers(AppState);

impl UserLookup for StateUsers {
    fn user_for_request<'a>(
        &'a self,
        parts: &'a http::request::Parts,
    ) -> BoxFuture<'a, Option<String>> {
        Box::pin(hush_server::auth::user_for_request(&self.0, parts))
    }
}

async fn serve_command(config: Config, dev: bool) -> Result<(), Failure> {
    for var in Config::unknown_env_vars(std::env::vars().map(|(k, _)| k)) {
        tracing::warn!(variable = %var, "unknown HUSHD_* environment variable ignored");
    }
    if config.registration == RegistrationMode::Open {
        let banner =
            "registration is OPEN: anyone who can reach this server can create an account. \
                      Development only; use `hushd init` for a real server.";
        tracing::warn!("{banner}");
        eprintln!("WARNING: {banner}");
    }
    let tls = match &config.tls {
        Some(tls) => Some(
            serve::load_tls(tls)
                .map_err(|e| Failure::Usage(format!("configuration error: {e}")))?,
        ),
        None => None,
    };
    if dev {
        if config.server_name.starts_with("localhost") {
            eprintln!(
                "WARNING: development server (no --config): server name {}, database {}",
                config.server_name,
                config::redact_url(&config.database_url)
            );
        }
        if !config.signing_key_path.exists() {
            let id = signing_key::generate(&config.signing_key_path)
                .map_err(|e| Failure::Runtime(format!("signing_key_path: {e}")))?;
            tracing::info!(key_id = %id, path = %config.signing_key_path.display(), "generated a development signing key");
        }
    }
    let key = signing_key::read(&config.signing_key_path).map_err(|e| {
        Failure::Usage(format!(
            "configuration error: signing_key_path: {e} (create one with `hushd init`)"
        ))
    })?;
    let store = connect(&config).await?;
    tracing::info!(
        server_name = %config.server_name,
        database = if store.is_postgres() { "postgres" } else { "sqlite" },
        key_id = %key.key_id(),
        registration = ?config.registration,
        "starting hushd {}",
        env!("CARGO_PKG_VERSION")
    );
    let config = Arc::new(config);
    let state = AppState::new(config.clone(), store.clone())
        .await
        .map_err(|e| Failure::Runtime(format!("cannot start: {e}")))?;

    let metrics = Arc::new(Metrics::new());
    let waiting = state.clone();
    metrics.set_waiting_syncs(Box::new(move || waiting.waiting_syncs()));
    let limiter = Arc::new(RateLimiter::new(&config.rate_limits));
    let background = spawn_background(&config, &store, &metrics, &limiter);

    let ops = Arc::new(Ops {
        metrics: metrics.clone(),
        limiter,
        users: Arc::new(StateUsers(state.clone())),
        trust_forwarded_for: config.trust_forwarded_for,
        max_body: config.limits.max_request_bytes,
        user_cache: Default::default(),
    });
    let metrics_router = {
        let metrics = metrics.clone();
        axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            http::header::CONTENT_TYPE,
                            hush_server::metrics::CONTENT_TYPE,
                        )],
                        metrics.render(),
                    )
                }
            }),
        )
    };
    let mut app = hush_server::api::router(state.clone());
    let (federation, federation_task) =
        hush_server::service::federation_hub::Federation::start(&state, &config)
            .map_err(|e| Failure::Usage(format!("configuration error: federation: {e}")))?;
    app = app.merge(hush_server::api::federation::router(
        state.clone(),
        federation.clone(),
    ));
    let separate_metrics = !config.metrics.listen.is_empty();
    if config.metrics.enabled && !separate_metrics {
        app = metrics_router.clone().merge(app);
    }
    let mut sites = vec![Site {
        key: "listen",
        addrs: config.listen.clone(),
        router: hush_server::middleware::wrap(app, ops),
    }];
    if config.metrics.enabled && separate_metrics {
        sites.push(Site {
            key: "metrics.listen",
            addrs: config.metrics.listen.clone(),
            router: metrics_router,
        });
    }
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let served = serve::serve(sites, tls, grace, serve::shutdown_signal()).await;
    federation.shutdown(federation_task).await;
    state.shutdown().await;
    for task in background {
        task.abort();
    }
    match served {
        Ok(()) => {
            tracing::info!("stopped");
            Ok(())
        }
        Err(e @ serve::ServeError::Config { .. }) => {
            Err(Failure::Usage(format!("configuration error: {e}")))
        }
        Err(e) => Err(Failure::Runtime(e.to_string())),
    }
}

/// Timers: the mailbox depth gauge and the rate-limit bucket sweep.
fn spawn_background(
    config: &Config,
    store: &Store,
    metrics: &Arc<Metrics>,
    limiter: &Arc<RateLimiter>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    if config.metrics.enabled {
        let store = store.clone();
        let metrics = metrics.clone();
        let period = Duration::from_secs(config.metrics.refresh_secs);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match store.inbox_total().await {
                    Ok(depth) => metrics.set_mailbox_depth(depth),
                    Err(e) => {
                        metrics.mailbox_refresh_failed();
                        tracing::warn!(error = %e, "cannot read the mailbox depth");
                    }
                }
            }
        }));
    }
    let limiter = limiter.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            limiter.sweep(std::time::Instant::now());
        }
    }));
    tasks
}

fn init_command(server_name: &str, dir: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::Runtime(format!("{}: {e}", dir.display())))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| Failure::Runtime(format!("{}: {e}", dir.display())))?;
    let config_path = dir.join("hushd.toml");
    let key_path = dir.join("signing.key");
    for path in [&config_path, &key_path] {
        if path.exists() {
            return Err(Failure::Runtime(format!(
                "{} already exists; not overwriting",
                path.display()
            )));
        }
    }
    let config = Config {
        server_name: server_name.to_owned(),
        database_url: format!("sqlite://{}", dir.join("data/hushd.db").display()),
        signing_key_path: key_path.clone(),
        registration: RegistrationMode::Closed,
        ..Config::default()
    };
    config.validate()?;
    let key_id = signing_key::generate(&key_path)
        .map_err(|e| Failure::Runtime(format!("signing key: {e}")))?;
    let mut text = config::example_toml(&config);
    text.push('\n');
    std::fs::write(&config_path, text)
        .map_err(|e| Failure::Runtime(format!("{}: {e}", config_path.display())))?;
    println!(
        "wrote {} and {} (server signing key {key_id})",
        config_path.display(),
        key_path.display()
    );
    println!("start with: hushd --config {}", config_path.display());
    println!(
        "create the first account with: hushd --config {} admin user create NAME",
        config_path.display()
    );
    Ok(())
}

async fn admin_command(
    config: &Config,
    store: &Store,
    command: AdminCommand,
) -> Result<(), Failure> {
    let runtime = |e: admin::AdminError| Failure::Runtime(e.to_string());
    match command {
        AdminCommand::Federation { command } => match command {
            FederationCommand::List => {
                let text = hush_server::service::federation_admin::list(store)
                    .await
                    .map_err(|e| Failure::Runtime(e.to_string()))?;
                print!("{text}");
            }
            FederationCommand::Reset { destination } => {
                let now = i64::try_from(hush_federation::keys::unix_millis_now()).unwrap_or(0);
                let known = hush_server::service::federation_admin::reset(store, &destination, now)
                    .await
                    .map_err(|e| Failure::Runtime(e.to_string()))?;
                if !known {
                    return Err(Failure::Usage(format!("unknown destination {destination}")));
                }
                println!("reset {destination}");
            }
        },
        AdminCommand::User { command } => match command {
            UserCommand::Create {
                name,
                password_file,
            } => {
                let password = read_password(password_file.as_deref())?;
                let user_id = admin::create_user(
                    store,
                    &config.server_name,
                    &name,
                    Some(password.to_string()),
                )
                .await
                .map_err(runtime)?;
                println!("created {user_id}");
            }
            UserCommand::Deactivate { name } => {
                let user_id = admin::deactivate_user(store, &config.server_name, &name)
                    .await
                    .map_err(runtime)?;
                println!("deactivated {user_id}");
            }
            UserCommand::Devices { name } => {
                let devices = admin::list_devices(store, &config.server_name, &name)
                    .await
                    .map_err(runtime)?;
                println!(
                    "{:<16} {:<24} {:<40} LAST SEEN",
                    "DEVICE", "NAME", "LAST IP"
                );
                for d in devices {
                    println!(
                        "{:<16} {:<24} {:<40} {}",
                        d.device_id,
                        d.display_name.as_deref().unwrap_or("-"),
                        d.last_seen_ip.as_deref().unwrap_or("-"),
                        d.last_seen_ts.map(format_ms).unwrap_or_else(|| "-".into())
                    );
                }
            }
        },
        AdminCommand::Token { command } => match command {
            TokenCommand::Create {
                uses,
                expires_in,
                token,
            } => {
                let expiry_ts = expires_in.map(|d| {
                    now_ms().saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                });
                let row =
                    admin::create_registration_token(store, token.as_deref(), uses, expiry_ts)
                        .await
                        .map_err(runtime)?;
                println!("{}", row.token);
            }
            TokenCommand::List => {
                let tokens = admin::list_registration_tokens(store)
                    .await
                    .map_err(runtime)?;
                println!(
                    "{:<40} {:>8} {:>9} EXPIRES",
                    "TOKEN", "ALLOWED", "COMPLETED"
                );
                for t in tokens {
                    println!(
                        "{:<40} {:>8} {:>9} {}",
                        t.token,
                        t.uses_allowed
                            .map(|u| u.to_string())
                            .unwrap_or_else(|| "unlimited".into()),
                        t.completed,
                        t.expiry_ts.map(format_ms).unwrap_or_else(|| "never".into())
                    );
                }
            }
            TokenCommand::Revoke { token } => {
                admin::revoke_registration_token(store, &token)
                    .await
                    .map_err(runtime)?;
                println!("revoked {token}");
            }
        },
    }
    Ok(())
}

/// The password from a file's first line, or from standard input (prompted twice on a
/// terminal). Only a trailing newline is removed.
fn read_password(file: Option<&Path>) -> Result<Zeroizing<String>, Failure> {
    let line =
        match file {
            Some(path) => {
                let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    Failure::Usage(format!("--password-file {}: {e}", path.display()))
                })?);
                Zeroizing::new(text.lines().next().unwrap_or_default().to_owned())
            }
            None if std::io::stdin().is_terminal() => {
                let first = Zeroizing::new(
                    rpassword::prompt_password("password: ")
                        .map_err(|e| Failure::Runtime(format!("reading the password: {e}")))?,
                );
                let second = Zeroizing::new(
                    rpassword::prompt_password("again: ")
                        .map_err(|e| Failure::Runtime(format!("reading the password: {e}")))?,
                );
                if *first != *second {
                    return Err(Failure::Usage("the passwords differ".into()));
                }
                first
            }
            None => {
                let mut line = Zeroizing::new(String::new());
                std::io::stdin().lock().read_line(&mut line).map_err(|e| {
                    Failure::Runtime(format!("reading the password from stdin: {e}"))
                })?;
                let mut rest = Zeroizing::new(Vec::new());
                let _ = std::io::stdin().lock().read_to_end(&mut rest);
                let trimmed = line.trim_end_matches(['\n', '\r']).to_owned();
                Zeroizing::new(trimmed)
            }
        };
    if line.is_empty() {
        return Err(Failure::Usage("the password is empty".into()));
    }
    Ok(line)
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Parses `90s`, `30m`, `12h`, `7d`, `2w` (or plain seconds).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number with a unit (30m, 12h, 7d, 2w)"))?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use s, m, h, d or w)"
            ))
        }
    };
    if n == 0 {
        return Err("the duration must be positive".into());
    }
    n.checked_mul(factor)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?}: too long"))
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
fn format_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(1_209_600)));
        assert!(parse_duration("3x").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(format_ms(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_ms(1_798_761_599_000), "2026-12-31 23:59:59 UTC");
    }
}
