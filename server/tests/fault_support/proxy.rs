//! A TCP fault proxy: listens on a loopback address and forwards raw bytes (HTTPS passes
//! through untouched) to one upstream address, misbehaving on command.
//!
//! The mode can be changed at any time and applies to new *and* open connections:
//!
//! * [`Mode::Pass`] forwards everything.
//! * [`Mode::Drop`] resets every open connection (RST, via `SO_LINGER = 0`) and resets each new
//!   one right after accepting it: the peer sees "connection reset".
//! * [`Mode::Stall`] accepts new connections but does not connect upstream, and holds every
//!   byte read from open connections: the sender's request times out. Bytes held when the mode
//!   changes to `Pass` or `Slow` are then forwarded late (which is what a congested link does).
//! * [`Mode::Slow`] forwards at most `bytes_per_sec` per connection and direction.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything.
    Pass,
    /// Reset open and new connections.
    Drop,
    /// Accept, never forward.
    Stall,
    /// Forward at most this many bytes per second per connection and direction.
    Slow {
        /// The throttle.
        bytes_per_sec: u64,
    },
}

/// Counters of what the proxy did (to prove a fault really happened).
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections reset because of [`Mode::Drop`].
    pub resets: AtomicU64,
    /// Connections (new) or reads (open) held because of [`Mode::Stall`].
    pub stalls: AtomicU64,
    /// Bytes forwarded (both directions).
    pub bytes: AtomicU64,
    /// Bytes forwarded while in [`Mode::Slow`].
    pub slow_bytes: AtomicU64,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    /// The address clients connect to.
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    /// What happened so far.
    pub stats: Arc<Stats>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on `ip:0` and forwards to `upstream`, starting in [`Mode::Pass`].
    pub async fn start(ip: &str, upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, mode_rx) = watch::channel(Mode::Pass);
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(accept_loop(listener, upstream, mode_rx, stats.clone()));
        FaultProxy {
            addr,
            mode,
            stats,
            task,
        }
    }

    /// `https://ADDR`, for a `[federation] servers` pin.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Switches the mode (takes effect on open connections too).
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Reads one counter.
    pub fn count(&self, counter: impl Fn(&Stats) -> &AtomicU64) -> u64 {
        counter(&self.stats).load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        // Open connections see the sender side close and reset themselves.
        self.mode.send_replace(Mode::Drop);
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mode: watch::Receiver<Mode>,
    stats: Arc<Stats>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(client, upstream, mode.clone(), stats.clone()));
    }
}

fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// One client connection: wait out a stall, refuse on drop, else connect and pump both ways.
async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    stats: Arc<Stats>,
) {
    let _ = client.set_nodelay(true);
    loop {
        let current = *mode.borrow_and_update();
        match current {
            Mode::Drop => {
                stats.resets.fetch_add(1, Ordering::Relaxed);
                reset(&client);
                return;
            }
            Mode::Stall => {
                stats.stalls.fetch_add(1, Ordering::Relaxed);
                // Hold the connection unanswered until the mode changes.
                if mode.changed().await.is_err() {
                    reset(&client);
                    return;
                }
            }
            Mode::Pass | Mode::Slow { .. } => break,
        }
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        reset(&client);
        return;
    };
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // Either pump closing abnormally resets the whole connection.
    let (kill, killed) = watch::channel(false);
    let kill = Arc::new(kill);
    let up = tokio::spawn(pump(
        client_read,
        server_write,
        mode.clone(),
        killed.clone(),
        kill.clone(),
        stats.clone(),
    ));
    let down = tokio::spawn(pump(server_read, client_write, mode, killed, kill, stats));
    let _ = tokio::join!(up, down);
}

enum Next {
    /// Keep going.
    Continue,
    /// Reset both sockets and stop.
    Reset,
}

/// Copies `from` to `to` under the current mode until EOF (then half-closes `to`) or a reset.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    mut killed: watch::Receiver<bool>,
    kill: Arc<watch::Sender<bool>>,
    stats: Arc<Stats>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let outcome = loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
                Err(_) => break Next::Reset,
            },
            changed = mode.changed() => {
                if changed.is_err() || *mode.borrow_and_update() == Mode::Drop {
                    stats.resets.fetch_add(1, Ordering::Relaxed);
                    break Next::Reset;
                }
                continue;
            }
            _ = killed.changed() => break Next::Reset,
        };
        match forward(&buf[..n], &mut to, &mut mode, &mut killed, &stats).await {
            Next::Continue => {}
            Next::Reset => break Next::Reset,
        }
    };
    match outcome {
        Next::Reset => {
            kill.send_replace(true);
            reset(from.as_ref());
            reset(to.as_ref());
        }
        Next::Continue => {}
    }
}

/// Writes `data` to `to` as the mode allows: at once, throttled, held (stall) or not at all.
async fn forward(
    data: &[u8],
    to: &mut OwnedWriteHalf,
    mode: &mut watch::Receiver<Mode>,
    killed: &mut watch::Receiver<bool>,
    stats: &Stats,
) -> Next {
    let mut rest = data;
    while !rest.is_empty() {
        let current = *mode.borrow_and_update();
        match current {
            Mode::Drop => {
                stats.resets.fetch_add(1, Ordering::Relaxed);
                return Next::Reset;
            }
            Mode::Stall => {
                stats.stalls.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    changed = mode.changed() => if changed.is_err() { return Next::Reset },
                    _ = killed.changed() => return Next::Reset,
                }
            }
            Mode::Pass => {
                if to.write_all(rest).await.is_err() {
                    return Next::Reset;
                }
                stats.bytes.fetch_add(rest.len() as u64, Ordering::Relaxed);
                rest = &[];
            }
            Mode::Slow { bytes_per_sec } => {
                // Twenty slices a second.
                let slice = usize::try_from((bytes_per_sec / 20).max(1)).unwrap_or(usize::MAX);
                let (now, later) = rest.split_at(slice.min(rest.len()));
                if to.write_all(now).await.is_err() {
                    return Next::Reset;
                }
                stats.bytes.fetch_add(now.len() as u64, Ordering::Relaxed);
                stats
                    .slow_bytes
                    .fetch_add(now.len() as u64, Ordering::Relaxed);
                rest = later;
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = killed.changed() => return Next::Reset,
                }
            }
        }
    }
    Next::Continue
}
