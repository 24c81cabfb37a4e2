//! The public gRPC API: `hsu.v1.Cluster`, `hsu.v1.KV`, `hsu.v1.Deployments` and `hsu.v1.Registry`, plus `grpc.health.v1` and server
//! reflection, over TCP with TLS. Clients authenticate with a certificate of the cluster CA
//! (the admin credential) or a bearer API token; the TLS layer refuses revoked node certificates
//! at the handshake, the services check roles per call ([`auth`]).

pub mod auth;
mod cluster;
pub mod convert;
mod deploy;
pub mod kv;
mod registry;

use std::sync::Arc;
use std::time::Duration;

use hsu_net::pki::{self, RevocationCheck};
use hsu_proto::v1::cluster_server::ClusterServer;
use hsu_proto::v1::deployments_server::DeploymentsServer;
use hsu_proto::v1::kv_server::KvServer;
use hsu_proto::v1::registry_server::RegistryServer;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::error::NodeError;
use crate::node::Node;

/// Largest gRPC message the API accepts or sends.
pub const MAX_MESSAGE: usize = 4 << 20;

/// Binds the API address and serves it until the node stops.
pub(crate) fn spawn(node: Node, ca_der: Vec<u8>, is_revoked: RevocationCheck) -> Result<(), NodeError> {
    let tls = pki::server_config_optional_client_auth(&node.pki().node, ca_der, is_revoked, &[b"h2"])?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let addr = node.api_addr();
    let listener = std::net::TcpListener::bind(addr).map_err(|e| NodeError::Io(format!("api address {addr}: {e}")))?;
    listener.set_nonblocking(true).map_err(|e| NodeError::Io(e.to_string()))?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| NodeError::Io(e.to_string()))?;

    // TLS handshakes run in their own tasks, so a slow or silent client holds up nobody else.
    let (conn_tx, conn_rx) = tokio::sync::mpsc::channel(64);
    let accept_node = node.clone();
    tokio::spawn(
        async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(c) => c,
                        Err(e) => { tracing::warn!("api accept failed: {e}"); continue; }
                    },
                    _ = accept_node.stopped() => return,
                };
                // gRPC writes a reply as several small TLS records: with Nagle's algorithm on, the
                // later ones wait for the client's delayed ACK (40 ms) before they leave.
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(%peer, "api socket: TCP_NODELAY not set: {e}");
                }
                let (acceptor, tx) = (acceptor.clone(), conn_tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok::<_, std::io::Error>(tls)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "api tls handshake refused: {e}"),
                        Err(_) => tracing::debug!(%peer, "api tls handshake timed out"),
                    }
                });
            }
        }
        .instrument(tracing::info_span!("api_accept", %addr)),
    );

    let (health_reporter, health) = tonic_health::server::health_reporter();
    // Reflection describes every service served here, health included, in both protocol
    // versions (v1alpha for older clients such as grpcurl before 1.9). The descriptor set also
    // holds hsu.core.v1 (served by integrated units, not here), so the names are listed.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(hsu_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("hsu.v1.Cluster")
            .with_service_name("hsu.v1.KV")
            .with_service_name("hsu.v1.Deployments")
            .with_service_name("hsu.v1.Registry")
            .with_service_name("grpc.health.v1.Health")
    };
    let reflection = reflection_builder().build_v1().map_err(|e| NodeError::Api(format!("reflection: {e}")))?;
    let reflection_v1alpha =
        reflection_builder().build_v1alpha().map_err(|e| NodeError::Api(format!("reflection: {e}")))?;
    let cluster = ClusterServer::new(cluster::ClusterApi { node: node.clone() })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let kv = KvServer::new(kv::KvApi { node: node.clone() })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let deployments = DeploymentsServer::new(deploy::DeploymentsApi { node: node.clone() })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let registry = RegistryServer::new(registry::RegistryApi { node: node.clone() })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let serve_node = node.clone();
    tokio::spawn(
        async move {
            health_reporter.set_serving::<ClusterServer<cluster::ClusterApi>>().await;
            health_reporter.set_serving::<KvServer<kv::KvApi>>().await;
            health_reporter.set_serving::<DeploymentsServer<deploy::DeploymentsApi>>().await;
            health_reporter.set_serving::<RegistryServer<registry::RegistryApi>>().await;
            let incoming = tokio_stream::wrappers::ReceiverStream::new(conn_rx);
            let result = tonic::transport::Server::builder()
                .layer(status_codes::Layer)
                .add_service(health)
                .add_service(reflection)
                .add_service(reflection_v1alpha)
                .add_service(cluster)
                .add_service(kv)
                .add_service(deployments)
                .add_service(registry)
                .serve_with_incoming_shutdown(incoming, serve_node.stopped())
                .await;
            if let Err(e) = result {
                tracing::error!("api server stopped: {e}");
            }
        }
        .instrument(tracing::info_span!("api", %addr)),
    );
    Ok(())
}

/// gRPC's codes for a request the server could not take, where tonic picks others: a message
/// over the size limit is `RESOURCE_EXHAUSTED` (tonic answers `OUT_OF_RANGE`) and one that does
/// not decode is `INVALID_ARGUMENT` (tonic answers `INTERNAL`), as grpc-go and etcd answer. Both
/// come before any handler ran, as trailers-only responses, so their headers are rewritten.
mod status_codes {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    #[derive(Clone, Copy)]
    pub struct Layer;

    impl<S> tower::Layer<S> for Layer {
        type Service = Codes<S>;
        fn layer(&self, inner: S) -> Codes<S> {
            Codes(inner)
        }
    }

    #[derive(Clone)]
    pub struct Codes<S>(S);

    impl<S, B, RB> tower::Service<http::Request<B>> for Codes<S>
    where
        S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
        S::Future: Send + 'static,
    {
        type Response = S::Response;
        type Error = S::Error;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.0.poll_ready(cx)
        }

        fn call(&mut self, req: http::Request<B>) -> Self::Future {
            let response = self.0.call(req);
            Box::pin(async move {
                let mut response = response.await?;
                remap(response.headers_mut());
                Ok(response)
            })
        }
    }

    /// The rewrite, by tonic's own wording of the two refusals.
    pub(super) fn remap(headers: &mut http::HeaderMap) {
        let code = headers.get("grpc-status").and_then(|v| v.to_str().ok()).map(str::to_string);
        let message = headers.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or_default().to_lowercase();
        let new = match code.as_deref() {
            // tonic: "Error, decoded message length too large: found N bytes, the limit is: M bytes"
            Some("11")
                if message.contains("message%20length%20too%20large")
                    || message.contains("message length too large") =>
            {
                "8"
            }
            // tonic: "failed to decode Protobuf message: ..."
            Some("13") if message.contains("failed%20to%20decode") || message.contains("failed to decode") => "3",
            _ => return,
        };
        headers.insert("grpc-status", http::HeaderValue::from_static(new));
    }
}
