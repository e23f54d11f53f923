//! Listeners: plain HTTP or HTTPS (rustls), HTTP/1.1 keep-alive and HTTP/2, and graceful
//! shutdown.
//!
//! Every address is bound before anything is served, so a taken port fails start-up. When all
//! are bound, one line `listening on URL[, URL...]` goes to standard output (with the real
//! ports, so `:0` works for tests). On shutdown each listener stops accepting, in-flight requests
//! get `shutdown_grace_secs` to finish, and then the caller's clean-up runs.

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum_server::tls_rustls::RustlsConfig;
use axum_server::Handle;

use crate::config::TlsConfig;

/// Why serving could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A configuration value is unusable (the key is named).
    #[error("{key}: {message}")]
    Config {
        /// Dotted config key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A listener failed while running.
    #[error("listener {addr}: {source}")]
    Listener {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// One group of addresses serving one router.
pub struct Site {
    /// Config key the addresses come from (for error messages).
    pub key: &'static str,
    /// Addresses to bind.
    pub addrs: Vec<SocketAddr>,
    /// What to serve there.
    pub router: Router,
}

/// Loads a rustls server configuration (ring provider, TLS 1.2 and 1.3, ALPN h2 and
/// http/1.1) from PEM files.
pub fn load_tls(tls: &TlsConfig) -> Result<rustls::ServerConfig, ServeError> {
    let certs = read_pem(&tls.cert, "tls.cert", |r| {
        rustls_pemfile::certs(r).collect::<Result<Vec<_>, _>>()
    })?;
    if certs.is_empty() {
        return Err(ServeError::Config {
            key: "tls.cert",
            message: format!("{}: no certificate found", tls.cert.display()),
        });
    }
    let key = read_pem(&tls.key, "tls.key", rustls_pemfile::private_key)?.ok_or_else(|| {
        ServeError::Config {
            key: "tls.key",
            message: format!("{}: no private key found", tls.key.display()),
        }
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Config {
            key: "tls",
            message: e.to_string(),
        })?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Config {
            key: "tls.key",
            message: format!("does not match tls.cert or is unusable: {e}"),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn read_pem<T>(
    path: &Path,
    key: &'static str,
    parse: impl FnOnce(&mut dyn std::io::BufRead) -> Result<T, std::io::Error>,
) -> Result<T, ServeError> {
    let file = std::fs::File::open(path).map_err(|e| ServeError::Config {
        key,
        message: format!("{}: {e}", path.display()),
    })?;
    let mut reader = std::io::BufReader::new(file);
    parse(&mut reader).map_err(|e| ServeError::Config {
        key,
        message: format!("{}: not PEM: {e}", path.display()),
    })
}

/// Binds every address of every site, prints the `listening on` line, serves until `shutdown`
/// resolves, then shuts down gracefully (at most `grace` for in-flight requests).
pub async fn serve(
    sites: Vec<Site>,
    tls: Option<rustls::ServerConfig>,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let tls = tls.map(|c| RustlsConfig::from_config(Arc::new(c)));
    let mut bound = Vec::new();
    for site in sites {
        for addr in &site.addrs {
            let listener = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|e| ServeError::Config {
                    key: site.key,
                    message: format!("cannot listen on {addr}: {e}"),
                })?;
            let local = listener.local_addr().unwrap_or(*addr);
            bound.push((local, listener, site.router.clone()));
        }
    }
    let urls: Vec<String> = bound
        .iter()
        .map(|(addr, _, _)| format!("{scheme}://{addr}"))
        .collect();
    tracing::info!(addresses = %urls.join(", "), "listening");
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "listening on {}", urls.join(", "));
    let _ = stdout.flush();
    drop(stdout);

    let mut handles = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (addr, listener, router) in bound {
        let handle = Handle::new();
        handles.push(handle.clone());
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        match &tls {
            Some(tls) => {
                let server = axum_server::from_tcp_rustls(listener, tls.clone()).handle(handle);
                tasks.spawn(async move { (addr, server.serve(service).await) });
            }
            None => {
                let server = axum_server::from_tcp(listener).handle(handle);
                tasks.spawn(async move { (addr, server.serve(service).await) });
            }
        }
    }

    tokio::pin!(shutdown);
    let mut failure = None;
    tokio::select! {
        () = &mut shutdown => {}
        Some(joined) = tasks.join_next() => {
            // A listener stopped on its own: that is an error; shut the others down too.
            failure = Some(match joined {
                Ok((addr, Err(source))) => ServeError::Listener { addr, source },
                Ok((addr, Ok(()))) => ServeError::Listener {
                    addr,
                    source: std::io::Error::other("stopped unexpectedly"),
                },
                Err(e) => ServeError::Listener {
                    addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                    source: std::io::Error::other(e.to_string()),
                },
            });
        }
    }
    let in_flight: usize = handles.iter().map(Handle::connection_count).sum();
    tracing::info!(
        connections = in_flight,
        grace_secs = grace.as_secs(),
        "shutting down: no new connections, finishing in-flight requests"
    );
    for handle in &handles {
        handle.graceful_shutdown(Some(grace));
    }
    while let Some(joined) = tasks.join_next().await {
        if let Ok((addr, Err(e))) = joined {
            tracing::warn!(%addr, error = %e, "listener ended with an error");
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
