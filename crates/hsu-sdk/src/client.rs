//! The client side of the public API: the config file (`admin.conf`, kubeconfig-like) and
//! connected clients of the cluster's services, for the CLI, the benchmarks, the cluster tests
//! and programs of users. It links none of the node: no store, no consensus, no agent.

use std::path::Path;

use hsu_net::pki::{write_private, API_SERVER_NAME};
use hsu_proto::v1::cluster_client::ClusterClient;
use hsu_proto::v1::deployments_client::DeploymentsClient;
use hsu_proto::v1::kv_client::KvClient;
use hsu_proto::v1::registry_client::RegistryClient;
use serde::{Deserialize, Serialize};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Why a client could not be set up or connect.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The config file or an argument is wrong: what, where and what was expected.
    #[error("{0}")]
    Config(String),
    /// Reading or writing the config file failed.
    #[error("{0}")]
    Io(String),
    /// The endpoint did not answer or refused the TLS handshake.
    #[error("{0}")]
    Connect(String),
}

/// The metadata key every error of a store call carries: whether the request certainly had no
/// effect (`not-applied`: safe to send again) or may have (`unknown`). Clients decide from it,
/// never from the message text.
pub const OUTCOME_KEY: &str = "hsu-outcome";

/// What a client needs to reach and authenticate to a cluster. Either `cert` + `key` (mutual
/// TLS) or `token` (bearer). `Debug` leaves the secrets out.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct ClientConfig {
    /// HOST:PORT of any node's API.
    pub endpoint: String,
    /// The cluster CA certificate (PEM).
    pub ca: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("endpoint", &self.endpoint)
            .field("cert", &self.cert.is_some())
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ClientConfig {
    pub fn load(path: &Path) -> Result<Self, ClientError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))?;
        let cfg: ClientConfig =
            serde_saphyr::from_str(&text).map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))?;
        if cfg.endpoint.is_empty() {
            return Err(ClientError::Config(format!("{}: `endpoint` is missing", path.display())));
        }
        if cfg.token.is_none() && (cfg.cert.is_none() || cfg.key.is_none()) {
            return Err(ClientError::Config(format!("{}: needs either `cert` and `key`, or `token`", path.display())));
        }
        Ok(cfg)
    }

    /// Writes the file readable by its owner only: it holds a private key or a token.
    pub fn save(&self, path: &Path) -> Result<(), ClientError> {
        let text = serde_saphyr::to_string(self).map_err(|e| ClientError::Config(e.to_string()))?;
        write_private(path, text.as_bytes()).map_err(|e| ClientError::Io(format!("{}: {e}", path.display())))
    }
}

/// Adds the bearer token, when there is one, to every call.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Cluster = ClusterClient<InterceptedService<Channel, Bearer>>;
pub type Kv = KvClient<InterceptedService<Channel, Bearer>>;

pub type Deployments = DeploymentsClient<InterceptedService<Channel, Bearer>>;
pub type Registry = RegistryClient<InterceptedService<Channel, Bearer>>;

/// Connects to `endpoint` (or the config's) and returns the two service clients.
pub async fn connect(cfg: &ClientConfig, endpoint: Option<&str>) -> Result<(Cluster, Kv), ClientError> {
    let (channel, bearer) = connect_channel(cfg, endpoint).await?;
    Ok((ClusterClient::with_interceptor(channel.clone(), bearer.clone()), KvClient::with_interceptor(channel, bearer)))
}

/// Connects to `endpoint` (or the config's) for `hsu.v1.Deployments`.
pub async fn connect_deployments(cfg: &ClientConfig, endpoint: Option<&str>) -> Result<Deployments, ClientError> {
    let (channel, bearer) = connect_channel(cfg, endpoint).await?;
    Ok(DeploymentsClient::with_interceptor(channel, bearer))
}

/// Connects to `endpoint` (or the config's) for `hsu.v1.Registry`.
pub async fn connect_registry(cfg: &ClientConfig, endpoint: Option<&str>) -> Result<Registry, ClientError> {
    let (channel, bearer) = connect_channel(cfg, endpoint).await?;
    Ok(RegistryClient::with_interceptor(channel, bearer))
}

/// A channel to `endpoint` (or the config's) with the config's TLS identity, and its bearer interceptor.
pub async fn connect_channel(cfg: &ClientConfig, endpoint: Option<&str>) -> Result<(Channel, Bearer), ClientError> {
    let endpoint = endpoint.unwrap_or(&cfg.endpoint);
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&cfg.ca)).domain_name(API_SERVER_NAME);
    if let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = channel(endpoint, tls).await?;
    let bearer = match &cfg.token {
        Some(t) => Some(
            format!("Bearer {t}").parse().map_err(|_| ClientError::Config("the token is not printable text".into()))?,
        ),
        None => None,
    };
    Ok((channel, Bearer(bearer)))
}

/// A channel to `endpoint` with `tls`, connected (at most 5 s).
pub async fn channel(endpoint: &str, tls: ClientTlsConfig) -> Result<Channel, ClientError> {
    Channel::from_shared(format!("https://{endpoint}"))
        .map_err(|e| ClientError::Config(format!("endpoint {endpoint:?}: {e}")))?
        .tls_config(tls)
        .map_err(|e| ClientError::Config(format!("tls: {e}")))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| ClientError::Connect(format!("cannot connect to {endpoint}: {}", error_chain(&e))))
}

/// An error with its causes, for messages that say what actually went wrong.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
