//! The command line: argument parsing (clap), one function per command, and the exit codes
//! scripts can rely on (see [`exit`]).

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use hush_federation::ids::UserId;
use serde_json::json;

use crate::api::{http_client, Api, ApiError};
use crate::engine::{Client, ClientError, SyncOutcome, MAX_MESSAGE_BYTES};
use crate::line_chunks::LineChunks;
use crate::profile::{
    default_data_dir, profile_dir, read_password, read_secret_file, PassphraseSource,
};
use crate::store::{Login, Store, StoreError, StoredMessage};
use crate::vault::{KdfParams, VaultError};

/// Exit codes.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Any other failure.
    pub const FAILURE: u8 = 1;
    /// Bad usage (clap's own code).
    pub const USAGE: u8 = 2;
    /// The local store: missing profile, wrong passphrase, damaged store.
    pub const STORE: u8 = 3;
    /// The server could not be reached or keeps rate limiting.
    pub const UNREACHABLE: u8 = 4;
    /// The server refused (wrong password, logged out, user name taken...).
    pub const REFUSED: u8 = 5;
    /// Sending is blocked by an unaccepted identity change of a verified contact.
    pub const UNTRUSTED: u8 = 6;
    /// Unknown user or no devices to encrypt to.
    pub const NO_RECIPIENT: u8 = 7;
    /// Stored and queued but not yet accepted by the server.
    pub const QUEUED: u8 = 8;
}

/// Hush: end-to-end encrypted messages over Matrix-style homeservers.
#[derive(Debug, Parser)]
#[command(name = "hush", version, propagate_version = true, after_help = EXIT_HELP)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

const EXIT_HELP: &str =
    "Exit codes: 0 ok, 1 failure, 2 usage, 3 local store (missing profile, wrong passphrase), \
4 server unreachable or rate limited, 5 refused by the server, 6 blocked by an identity change, \
7 unknown user or no devices, 8 message queued but not yet sent.";

/// Options of every command.
#[derive(Debug, Args)]
struct Global {
    /// Profile name (one account per profile).
    #[arg(long, global = true, env = "HUSH_PROFILE", default_value = "default")]
    profile: String,
    /// Directory holding the profiles (default: $XDG_DATA_HOME/hush or ~/.local/share/hush).
    #[arg(long, global = true, env = "HUSH_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// File whose first line is the store passphrase (else HUSH_PASSPHRASE, else a prompt).
    #[arg(long, global = true, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// Extra CA certificate (PEM) to trust for the homeserver; remembered by the profile.
    #[arg(long, global = true, env = "HUSH_CA_FILE", value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Argon2id memory (KiB) for a new store; only lower it for tests.
    #[arg(long, global = true, env = "HUSH_KDF_MEMORY_KIB", hide = true)]
    kdf_memory_kib: Option<u32>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create an account on a homeserver and set up this device.
    Register(RegisterArgs),
    /// Log in to an existing account as a new device.
    Login(LoginArgs),
    /// Log out: delete this device on the server and its local store.
    Logout,
    /// Show the account and device of this profile.
    Whoami,
    /// List, rename or remove this account's devices.
    Devices {
        #[command(subcommand)]
        command: Option<DevicesCommand>,
    },
    /// Send an encrypted message (from the argument, or standard input).
    Send(SendArgs),
    /// Receive messages and print them as they arrive.
    Listen(ListenArgs),
    /// Show the stored conversation with a user.
    History(HistoryArgs),
    /// Show the safety number with a user; mark them verified after comparing it.
    Verify(VerifyArgs),
    /// Accept a user's changed identity (after a warning) so sending works again.
    Trust(UserArg),
    /// Interactive terminal chat with a user.
    Chat(UserArg),
}

#[derive(Debug, Args)]
struct RegisterArgs {
    /// User name (localpart), e.g. alice.
    username: String,
    /// Homeserver URL, e.g. https://hs.example.org or http://127.0.0.1:8008.
    #[arg(long, env = "HUSH_SERVER")]
    server: String,
    /// File whose first line is the password (else a prompt).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Registration token, if the server requires one.
    #[arg(long)]
    token: Option<String>,
    /// File whose first line is the registration token.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Display name of this device.
    #[arg(long, default_value = "hush")]
    device_name: String,
}

#[derive(Debug, Args)]
struct LoginArgs {
    /// User name or full user ID.
    user: String,
    /// Homeserver URL.
    #[arg(long, env = "HUSH_SERVER")]
    server: String,
    /// File whose first line is the password (else a prompt).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Reuse this device ID. This profile makes a new identity key, so if the server still
    /// holds keys of that device they are replaced: the old device is logged out (its keys
    /// and undelivered messages are deleted) and contacts are told its key changed. Without
    /// this option the server assigns a new device ID.
    #[arg(long)]
    device_id: Option<String>,
    /// Display name of this device.
    #[arg(long, default_value = "hush")]
    device_name: String,
}

#[derive(Debug, Subcommand)]
enum DevicesCommand {
    /// List devices (the default).
    List,
    /// Rename a device.
    Rename {
        /// Device ID.
        device_id: String,
        /// New display name.
        name: String,
    },
    /// Remove a device (asks for the account password).
    Remove {
        /// Device ID.
        device_id: String,
        /// File whose first line is the password (else a prompt).
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct SendArgs {
    /// Recipient, e.g. @bob:beta.example.
    user: String,
    /// The message; read from standard input when absent.
    message: Option<String>,
    /// Send every line of standard input as its own message (empty lines are skipped). The
    /// lines that are ready go out together in batched requests; a line waits at most 0.2 s
    /// for more.
    #[arg(long, conflicts_with = "message")]
    lines: bool,
}

#[derive(Debug, Args)]
struct ListenArgs {
    /// Print one JSON object per line.
    #[arg(long)]
    json: bool,
    /// Fetch what is waiting, print it and exit.
    #[arg(long)]
    once: bool,
    /// Exit after this many messages.
    #[arg(long, value_name = "N")]
    count: Option<usize>,
    /// Exit after this many seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
}

#[derive(Debug, Args)]
struct HistoryArgs {
    /// The other user.
    user: String,
    /// Show at most this many (latest) messages.
    #[arg(long, default_value_t = 100)]
    limit: i64,
    /// Print one JSON object per line.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// The other user.
    user: String,
    /// Mark the user verified (only after comparing the safety number out of band).
    #[arg(long)]
    mark_verified: bool,
}

#[derive(Debug, Args)]
struct UserArg {
    /// The other user, e.g. @bob:beta.example.
    user: String,
}

/// A failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: u8,
    /// Sentence for standard error.
    pub message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self::new(exit::FAILURE, message)
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        let code = match &e {
            ApiError::Unreachable { .. } | ApiError::RateLimited { .. } => exit::UNREACHABLE,
            ApiError::Matrix { .. } => exit::REFUSED,
            ApiError::Protocol(_) | ApiError::Config(_) => exit::FAILURE,
        };
        Self::new(code, e.to_string())
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Self::new(exit::STORE, e.to_string())
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Api(e) => e.into(),
            ClientError::Store(e) => e.into(),
            ClientError::UnknownUser(_) | ClientError::NoDevices(_) => {
                Self::new(exit::NO_RECIPIENT, e.to_string())
            }
            ClientError::Untrusted { .. } => Self::new(exit::UNTRUSTED, e.to_string()),
            ClientError::Queued(_) => Self::new(exit::QUEUED, e.to_string()),
            ClientError::Crypto(_) | ClientError::Invalid(_) => {
                Self::new(exit::FAILURE, e.to_string())
            }
        }
    }
}

type CliResult<T = ()> = Result<T, Failure>;

struct Context {
    dir: PathBuf,
    passphrase: PassphraseSource,
    ca_file: Option<PathBuf>,
    kdf: KdfParams,
}

impl Context {
    fn from(global: &Global) -> CliResult<Self> {
        let data_dir = global.data_dir.clone().unwrap_or_else(default_data_dir);
        let dir =
            profile_dir(&data_dir, &global.profile).map_err(|m| Failure::new(exit::USAGE, m))?;
        let mut kdf = KdfParams::default();
        if let Some(m) = global.kdf_memory_kib {
            kdf.m_kib = m.max(8);
        }
        Ok(Self {
            dir,
            passphrase: PassphraseSource {
                file: global.passphrase_file.clone(),
            },
            ca_file: global.ca_file.clone(),
            kdf,
        })
    }

    async fn open_store(&self) -> CliResult<Store> {
        if !Store::exists(&self.dir) {
            return Err(StoreError::Missing(self.dir.clone()).into());
        }
        let pass = self
            .passphrase
            .read(false)
            .map_err(|m| Failure::new(exit::STORE, m))?;
        Store::open(&self.dir, &pass).await.map_err(|e| match e {
            StoreError::Vault(VaultError::WrongPassphrase) => Failure::new(
                exit::STORE,
                "the passphrase is wrong (the local store could not be unlocked)",
            ),
            other => other.into(),
        })
    }

    /// Opens the profile's store and API connection (finishing device setup if needed).
    async fn client(&self) -> CliResult<Client> {
        let store = self.open_store().await?;
        let login = store.login().await?.ok_or_else(|| {
            Failure::new(
                exit::STORE,
                "this profile is not logged in; run `hush login`",
            )
        })?;
        let ca = match &self.ca_file {
            Some(p) => Some(p.clone()),
            None => store.setting("ca_file").await?.map(PathBuf::from),
        };
        let http = http_client(ca.as_deref())?;
        let api = Api::new(http, &login.server_url).with_token(&login.access_token);
        let has_account: bool = {
            let mut tx = store.begin().await?;
            let ok = store
                .account(&mut tx, &login.user_id, &login.device_id)
                .await
                .is_ok();
            tx.rollback().await.map_err(StoreError::from)?;
            ok
        };
        let client = Client::new(store, api, login);
        if !has_account {
            client.bootstrap().await?;
        } else if !client.keys_published().await? {
            // An earlier setup stored the account but did not finish uploading its keys.
            client.publish_keys().await?;
        }
        Ok(client)
    }
}

/// Parses arguments, runs the command and returns the exit code.
pub async fn run() -> u8 {
    let cli = Cli::parse();
    let result = match Context::from(&cli.global) {
        Ok(ctx) => dispatch(&ctx, cli.command).await,
        Err(f) => Err(f),
    };
    match result {
        Ok(()) => exit::OK,
        Err(f) => {
            eprintln!("hush: {}", f.message);
            f.code
        }
    }
}

async fn dispatch(ctx: &Context, command: Command) -> CliResult {
    match command {
        Command::Register(a) => register(ctx, a).await,
        Command::Login(a) => login(ctx, a).await,
        Command::Logout => logout(ctx).await,
        Command::Whoami => whoami(ctx).await,
        Command::Devices { command } => devices(ctx, command.unwrap_or(DevicesCommand::List)).await,
        Command::Send(a) => send(ctx, a).await,
        Command::Listen(a) => listen(ctx, a).await,
        Command::History(a) => history(ctx, a).await,
        Command::Verify(a) => verify(ctx, a).await,
        Command::Trust(a) => trust(ctx, &a.user).await,
        Command::Chat(a) => {
            let user = parse_user(&a.user)?;
            let client = ctx.client().await?;
            crate::tui::run(client, &user).await.map_err(Failure::from)
        }
    }
}

fn parse_user(text: &str) -> CliResult<String> {
    UserId::parse(text)
        .map(|u| u.as_str().to_owned())
        .map_err(|e| {
            Failure::new(
                exit::USAGE,
                format!("{text:?} is not a user ID like @bob:example.org ({e})"),
            )
        })
}

/// Creates the store first (so passphrase problems show before anything happens on the
/// server), then runs `remote`; on failure the new store is removed again.
async fn new_profile<F, Fut>(ctx: &Context, server: &str, remote: F) -> CliResult<Client>
where
    F: FnOnce(Api) -> Fut,
    Fut: std::future::Future<Output = Result<crate::api::LoginResponse, ApiError>>,
{
    if Store::exists(&ctx.dir) {
        return Err(Failure::new(
            exit::STORE,
            format!(
                "profile directory {} already holds an account; use --profile NAME or `hush logout`",
                ctx.dir.display()
            ),
        ));
    }
    let server = server.trim_end_matches('/').to_owned();
    if !(server.starts_with("https://") || server.starts_with("http://")) {
        return Err(Failure::new(
            exit::USAGE,
            "--server must be a URL such as https://hs.example.org",
        ));
    }
    let pass = ctx
        .passphrase
        .read(true)
        .map_err(|m| Failure::new(exit::STORE, m))?;
    let http = http_client(ctx.ca_file.as_deref())?;
    let api = Api::new(http, &server);
    api.versions().await?;
    let store = Store::create(&ctx.dir, &pass, ctx.kdf).await?;
    let answer = match remote(api.clone()).await {
        Ok(a) => a,
        Err(e) => {
            let path = store.path().to_owned();
            store.close().await;
            remove_store(&path);
            return Err(e.into());
        }
    };
    let login = Login {
        server_url: server,
        user_id: answer.user_id.clone(),
        device_id: answer.device_id.clone(),
        access_token: zeroize::Zeroizing::new(answer.access_token.clone()),
    };
    let mut tx = store.begin().await?;
    store.save_login(&mut tx, &login).await?;
    if let Some(ca) = &ctx.ca_file {
        let abs = std::fs::canonicalize(ca).unwrap_or_else(|_| ca.clone());
        store
            .set_setting(&mut tx, "ca_file", &abs.to_string_lossy())
            .await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    let client = Client::new(store, api.with_token(&answer.access_token), login);
    eprintln!(
        "Setting up encryption keys for device {}...",
        answer.device_id
    );
    client.bootstrap().await?;
    Ok(client)
}

fn remove_store(db: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

async fn register(ctx: &Context, a: RegisterArgs) -> CliResult {
    let password = read_password(a.password_file.as_deref(), "Password for the new account: ")?;
    let token = match (&a.token, &a.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(f)) => Some(read_secret_file(f)?.to_string()),
        (None, None) => None,
    };
    let client = new_profile(ctx, &a.server, |api| async move {
        api.register(&a.username, &password, token.as_deref(), &a.device_name)
            .await
    })
    .await?;
    println!(
        "Registered {} (device {})",
        client.user_id(),
        client.login().device_id
    );
    client.into_store().close().await;
    Ok(())
}

async fn login(ctx: &Context, a: LoginArgs) -> CliResult {
    let password = read_password(a.password_file.as_deref(), "Password: ")?;
    let client = new_profile(ctx, &a.server, |api| async move {
        let device_id = a.device_id.as_deref();
        let answer = api
            .login(&a.user, &password, device_id, &a.device_name)
            .await?;
        if device_id.is_none() {
            return Ok(answer);
        }
        // A reused device ID gets a new identity key (this profile is new, the old keys are
        // gone), but the server still holds the old device keys and refuses a different
        // upload. Replace the device: logging out deletes it with its keys and inbox (whose
        // messages were encrypted to the old identity), then log in again under that ID.
        let authed = api.clone().with_token(&answer.access_token);
        if !authed
            .device_has_keys(&answer.user_id, &answer.device_id)
            .await?
        {
            return Ok(answer);
        }
        eprintln!(
            "Device {} already has keys from an earlier installation; replacing it with a new identity key (your contacts will be told that this device's key changed).",
            answer.device_id
        );
        authed.logout().await?;
        api.login(&a.user, &password, device_id, &a.device_name)
            .await
    })
    .await?;
    println!(
        "Logged in as {} (device {})",
        client.user_id(),
        client.login().device_id
    );
    client.into_store().close().await;
    Ok(())
}

async fn logout(ctx: &Context) -> CliResult {
    let client = ctx.client().await?;
    match client.api().logout().await {
        Ok(()) => {}
        Err(e) if e.is_unknown_token() => {}
        Err(e) => return Err(e.into()),
    }
    let path = client.store().path().to_owned();
    client.into_store().close().await;
    remove_store(&path);
    println!("Logged out; this device and its local store were deleted.");
    Ok(())
}

async fn whoami(ctx: &Context) -> CliResult {
    let client = ctx.client().await?;
    let (user, device) = client.api().whoami().await?;
    println!("user:    {user}");
    println!("device:  {}", device.unwrap_or_default());
    println!("server:  {}", client.login().server_url);
    println!("store:   {}", client.store().path().display());
    Ok(())
}

async fn devices(ctx: &Context, command: DevicesCommand) -> CliResult {
    let client = ctx.client().await?;
    match command {
        DevicesCommand::List => {
            let list = client.api().devices().await?;
            let own = client.user_id().to_owned();
            let (_, notices) = client.refresh_devices(std::slice::from_ref(&own)).await?;
            print_notices(&notices, false);
            let mut tx = client.store().begin().await?;
            let pins = client.store().pinned_devices(&mut tx, &own).await?;
            tx.rollback().await.map_err(StoreError::from)?;
            for d in list {
                let key = pins
                    .iter()
                    .find(|p| p.device_id == d.device_id)
                    .map(|p| p.ed25519.clone())
                    .unwrap_or_else(|| "(no keys)".into());
                let this = if d.device_id == client.login().device_id {
                    " (this device)"
                } else {
                    ""
                };
                println!(
                    "{}\t{}\t{}{}",
                    d.device_id,
                    d.display_name.unwrap_or_default(),
                    key,
                    this
                );
            }
        }
        DevicesCommand::Rename { device_id, name } => {
            client.api().rename_device(&device_id, &name).await?;
            println!("Renamed {device_id}.");
        }
        DevicesCommand::Remove {
            device_id,
            password_file,
        } => {
            if device_id == client.login().device_id {
                return Err(Failure::new(
                    exit::USAGE,
                    "to remove this device use `hush logout`",
                ));
            }
            let password = read_password(password_file.as_deref(), "Account password: ")?;
            client
                .api()
                .delete_device(&device_id, client.user_id(), &password)
                .await?;
            println!("Removed {device_id}.");
        }
    }
    Ok(())
}

fn print_notices(notices: &[String], json: bool) {
    for n in notices {
        if json {
            println!("{}", json!({"type": "notice", "text": n}));
        } else {
            eprintln!("! {n}");
        }
    }
}

async fn send(ctx: &Context, a: SendArgs) -> CliResult {
    let peer = parse_user(&a.user)?;
    let client = ctx.client().await?;
    let texts: Vec<String> = if a.lines {
        Vec::new()
    } else if let Some(m) = a.message {
        vec![m]
    } else {
        if std::io::stdin().is_terminal() {
            eprintln!("Type the message, then Ctrl-D:");
        }
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        let text = text.trim_end_matches('\n').to_owned();
        vec![text]
    };
    if a.lines {
        let sent = send_lines(&client, &peer).await?;
        println!("Sent {sent} messages to {peer}.");
        return Ok(());
    }
    for text in texts {
        let report = client.send_text(&peer, &text).await?;
        print_notices(&report.notices, false);
        println!(
            "Sent to {peer} ({} devices, id {}).",
            report.devices, report.msg_id
        );
    }
    Ok(())
}

/// `send --lines`: standard input in chunks of the lines that are ready ([`LineChunks`]: a
/// chunk closes when the input pauses for [`LINGER`](crate::line_chunks::LINGER),
/// [`MAX_WAIT`](crate::line_chunks::MAX_WAIT) after its first line, at
/// [`MAX_CHUNK_LINES`](crate::line_chunks::MAX_CHUNK_LINES) lines or at the end), each chunk
/// sent by one [`Client::send_many`] (batched requests, one at a time so the order is kept). Empty lines are skipped; a line that is too
/// long stops the run after the lines before it were sent. Returns how many were sent.
async fn send_lines(client: &Client, peer: &str) -> CliResult<usize> {
    let mut chunks = LineChunks::spawn(std::io::BufReader::new(std::io::stdin()));
    let mut sent = 0usize;
    let mut line_no = 0usize;
    while let Some(chunk) = chunks.next_chunk().await {
        let chunk = chunk.map_err(|e| format!("cannot read standard input: {e}"))?;
        let mut texts = Vec::with_capacity(chunk.len());
        let mut too_long = None;
        for line in chunk {
            line_no += 1;
            if line.len() > MAX_MESSAGE_BYTES {
                too_long = Some(line_no);
                break;
            }
            if !line.is_empty() {
                texts.push(line);
            }
        }
        if !texts.is_empty() {
            let reports = client.send_many(peer, &texts, 1).await?;
            for report in &reports {
                print_notices(&report.notices, false);
            }
            sent += reports.len();
        }
        if let Some(n) = too_long {
            return Err(ClientError::Invalid(format!(
                "line {n} is too long (at most {MAX_MESSAGE_BYTES} bytes); the {sent} messages before it were sent"
            ))
            .into());
        }
    }
    Ok(sent)
}

/// `HH:MM:SS` (UTC) of a millisecond timestamp.
pub fn clock(ts_ms: u64) -> String {
    let s = (ts_ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

fn print_message(m: &StoredMessage, json: bool) {
    if json {
        println!(
            "{}",
            json!({
                "type": "message", "seq": m.seq, "msg_id": m.msg_id, "peer": m.peer,
                "from": m.sender_user, "device": m.sender_device, "outgoing": m.outgoing,
                "ts": m.ts, "state": m.state, "body": m.body,
            })
        );
    } else if m.outgoing {
        println!(
            "[{}] you ({}) -> {}: {}",
            clock(m.ts),
            m.sender_device,
            m.peer,
            m.body
        );
    } else {
        println!(
            "[{}] {} ({}): {}",
            clock(m.ts),
            m.sender_user,
            m.sender_device,
            m.body
        );
    }
}

fn print_outcome(o: &SyncOutcome, json: bool) {
    print_notices(&o.notices, json);
    for m in &o.messages {
        print_message(m, json);
    }
    let _ = std::io::stdout().flush();
}

async fn listen(ctx: &Context, a: ListenArgs) -> CliResult {
    let client = ctx.client().await?;
    if let Err(e) = client.flush_outbox().await {
        eprintln!("! queued messages not sent yet: {e}");
    }
    let deadline = a.timeout.map(|s| Instant::now() + Duration::from_secs(s));
    let mut received = 0usize;
    let mut first = true;
    loop {
        let timeout_ms = if a.once || first {
            0
        } else {
            match deadline {
                Some(d) => d
                    .saturating_duration_since(Instant::now())
                    .as_millis()
                    .min(30_000) as u64,
                None => 30_000,
            }
        };
        let outcome = tokio::select! {
            r = client.sync_once(timeout_ms) => r?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        first = false;
        print_outcome(&outcome, a.json);
        received += outcome.messages.len();
        if a.count.is_some_and(|n| received >= n) {
            return Ok(());
        }
        if a.once && outcome.empty {
            return Ok(());
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(());
        }
    }
}

async fn history(ctx: &Context, a: HistoryArgs) -> CliResult {
    let peer = parse_user(&a.user)?;
    let store = ctx.open_store().await?;
    for m in store.history(&peer, a.limit.max(1)).await? {
        if a.json {
            print_message(&m, true);
        } else {
            let mark = match m.state.as_str() {
                "pending" => " (not sent yet)",
                _ => "",
            };
            let who = if m.outgoing {
                "you".to_owned()
            } else {
                m.sender_user.clone()
            };
            println!("[{}] {who}: {}{mark}", clock(m.ts), m.body);
        }
    }
    Ok(())
}

async fn verify(ctx: &Context, a: VerifyArgs) -> CliResult {
    let peer = parse_user(&a.user)?;
    let client = ctx.client().await?;
    let (fp, mine, theirs, verified) = client.safety_number(&peer).await?;
    println!("Safety number with {peer}:\n");
    let grouped = fp.grouped();
    let groups: Vec<&str> = grouped.split(' ').collect();
    for row in groups.chunks(4) {
        println!("    {}", row.join(" "));
    }
    println!("\nCompare it with {peer} in person or over a trusted channel.");
    println!("\nYour devices ({}):", client.user_id());
    for d in &mine {
        println!("    {}  {}", d.device_id, d.ed25519);
    }
    println!("Their devices:");
    for d in &theirs {
        let state = if d.approved {
            ""
        } else {
            "  (NOT ACCEPTED: identity changed)"
        };
        println!("    {}  {}{state}", d.device_id, d.ed25519);
    }
    if a.mark_verified {
        client.mark_verified(&peer).await?;
        println!("\n{peer} is now marked verified; any future key change will block sending until you accept it.");
    } else if verified {
        println!("\n{peer} is verified.");
    } else {
        println!("\n{peer} is not verified. If the numbers match, run `hush verify {peer} --mark-verified`.");
    }
    Ok(())
}

async fn trust(ctx: &Context, user: &str) -> CliResult {
    let peer = parse_user(user)?;
    let client = ctx.client().await?;
    let n = client.trust(&peer).await?;
    if n == 0 {
        println!("Nothing to accept: every device of {peer} is already trusted.");
    } else {
        println!("Accepted the current identity of {n} device(s) of {peer}.");
        if client.is_verified(&peer).await? {
            println!("Compare safety numbers again with `hush verify {peer}`.");
        }
    }
    Ok(())
}
