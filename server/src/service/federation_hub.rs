//! Federation wiring: builds the outbound client, the remote key cache, the inbound
//! authentication context and the outbound sender from the configuration, and plugs the
//! remote-key proxy into the client API.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use hush_federation::client::{FederationClient, FederationClientConfig};
use hush_federation::ids::ServerName;
use hush_federation::wire;
use serde_json::Value;

use crate::config::{Config, FederationConfig};
use crate::service::federation_keys::{self, ServerKeys};
use crate::service::federation_policy::ServerPolicy;
use crate::service::keys::{RemoteFuture, RemoteKeys};
use crate::service::outbound::{
    OutboundConfig, OutboundSender, OutboundTask, RetryPolicy, SendFuture, TransactionTransport,
};
use crate::service::remote_keys::{FetchFuture, KeyCachePolicy, KeyFetcher, RemoteKeyCache};
use crate::state::AppState;
use crate::xmatrix_auth::InboundAuth;

/// Everything federation needs at run time. Shared behind an `Arc`.
pub struct Federation {
    /// This server's name.
    pub server_name: ServerName,
    /// Our signing keys (current and retired).
    pub keys: ServerKeys,
    /// How long published key documents are valid (ms).
    pub key_valid_for_ms: u64,
    /// The outbound HTTPS client.
    pub client: FederationClient,
    /// Allow/deny lists.
    pub policy: Arc<ServerPolicy>,
    /// Inbound authentication context.
    pub auth: Arc<InboundAuth>,
    /// The outbound sender.
    pub outbound: OutboundSender,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation")
            .field("server_name", &self.server_name)
            .field("key_id", &self.keys.current.key_id())
            .finish_non_exhaustive()
    }
}

/// The client-side configuration of the outbound client.
pub fn client_config(config: &FederationConfig) -> Result<FederationClientConfig, String> {
    let mut overrides = HashMap::new();
    for pin in &config.servers {
        let name = ServerName::parse(&pin.name)
            .map_err(|e| format!("federation.servers: `{}`: {e}", pin.name))?;
        overrides.insert(name, pin.url.clone());
    }
    Ok(FederationClientConfig {
        extra_ca_files: config.ca_files.clone(),
        overrides,
        request_timeout: Duration::from_secs(config.request_timeout_secs.max(1)),
        connect_timeout: Duration::from_secs(config.request_timeout_secs.clamp(1, 10)),
        ..FederationClientConfig::default()
    })
}

struct ClientFetcher(FederationClient);

impl KeyFetcher for ClientFetcher {
    fn fetch<'a>(&'a self, server: &'a ServerName) -> FetchFuture<'a> {
        Box::pin(async move {
            self.0
                .fetch_server_keys(server)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

struct ClientTransport(FederationClient);

impl TransactionTransport for ClientTransport {
    fn send<'a>(
        &'a self,
        destination: &'a ServerName,
        txn_id: &'a str,
        body: &'a Value,
    ) -> SendFuture<'a> {
        Box::pin(async move {
            let path = wire::send_transaction_path(txn_id);
            self.0
                .request_json(destination, Method::PUT, &path, Some(body))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

/// The client API's proxy for remote users' keys.
struct KeyProxy {
    client: FederationClient,
    policy: Arc<ServerPolicy>,
}

impl KeyProxy {
    async fn call(
        &self,
        destination: &str,
        path: &str,
        body: Value,
        timeout_ms: u64,
    ) -> Result<Value, String> {
        let name = ServerName::parse(destination).map_err(|e| e.to_string())?;
        if !self.policy.allows(&name) {
            return Err("This server does not federate with that server".to_owned());
        }
        let call = self
            .client
            .request_json(&name, Method::POST, path, Some(&body));
        match tokio::time::timeout(Duration::from_millis(timeout_ms.max(1)), call).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("{destination} did not answer in time")),
        }
    }
}

impl RemoteKeys for KeyProxy {
    fn query<'a>(&'a self, destination: &'a str, body: Value, timeout_ms: u64) -> RemoteFuture<'a> {
        Box::pin(self.call(destination, wire::KEYS_QUERY_PATH, body, timeout_ms))
    }

    fn claim<'a>(&'a self, destination: &'a str, body: Value, timeout_ms: u64) -> RemoteFuture<'a> {
        Box::pin(self.call(destination, wire::KEYS_CLAIM_PATH, body, timeout_ms))
    }
}

impl Federation {
    /// Loads the signing keys, builds the client and starts the outbound sender. Installs the
    /// remote-key proxy into `app`.
    pub fn start(
        app: &AppState,
        config: &Config,
    ) -> Result<(Arc<Federation>, OutboundTask), String> {
        let fed = &config.federation;
        let server_name =
            ServerName::parse(&config.server_name).map_err(|e| format!("server_name: {e}"))?;
        let keys = federation_keys::load(&config.signing_key_path)?;
        let policy = Arc::new(ServerPolicy::new(&fed.allow, &fed.deny)?);
        let signing = keys.current.clone();
        let client = FederationClient::new(server_name.clone(), signing, &client_config(fed)?)
            .map_err(|e| format!("federation client: {e}"))?;
        let key_cache = Arc::new(RemoteKeyCache::new(
            Arc::new(ClientFetcher(client.clone())),
            KeyCachePolicy::default(),
        ));
        let (outbound, task) = OutboundSender::start(
            app.store().clone(),
            Arc::new(ClientTransport(client.clone())),
            policy.clone(),
            OutboundConfig {
                origin: server_name.clone(),
                retry: RetryPolicy {
                    min_ms: fed.retry_min_ms,
                    max_ms: fed.retry_max_ms,
                },
                poll_interval: Duration::from_millis(fed.poll_interval_ms.max(1)),
            },
        );
        let contact = outbound.clone();
        let auth = Arc::new(InboundAuth {
            server_name: server_name.clone(),
            keys: key_cache,
            policy: policy.clone(),
            on_contact: Arc::new(move |origin| contact.contacted(origin)),
            max_body_bytes: config.limits.max_request_bytes,
        });
        app.set_remote_keys(Arc::new(KeyProxy {
            client: client.clone(),
            policy: policy.clone(),
        }));
        let federation = Arc::new(Federation {
            server_name,
            keys,
            key_valid_for_ms: fed.key_valid_for_secs.saturating_mul(1000),
            client,
            policy,
            auth,
            outbound,
        });
        Ok((federation, task))
    }
}

impl Federation {
    /// Stops the outbound sender (a transaction in flight stays stored for the next start) and
    /// logs what it delivered.
    pub async fn shutdown(&self, task: OutboundTask) {
        self.outbound.shutdown();
        task.join().await;
        let (txns, edus) = self.outbound.delivered();
        tracing::info!(
            transactions = txns,
            edus,
            "federation sender delivered {txns} transactions with {edus} EDUs"
        );
    }
}
