//! For programs that use HSU: [`client`] reaches a cluster's API (the config file, TLS or a
//! token, the service clients); [`Core`] is for integrated units written in Rust: serve
//! `hsu.core.v1.Core` on the address the agent passes in `HSU_CORE_ADDR`, report health, and
//! learn when the agent asks the unit to shut down.
//!
//! ```no_run
//! # async fn run() -> Result<(), hsu_sdk::Error> {
//! let mut core = hsu_sdk::Core::start("my-service", "1.2.3").await?;
//! core.set_health(true, "");
//! let grace = core.shutdown_requested().await; // the agent's Shutdown{grace}
//! // finish in-flight work within `grace`, then:
//! core.stop().await; // answers what is in flight, then exit 0
//! # Ok(()) }
//! ```

pub mod client;

use std::net::SocketAddr;
use std::time::Duration;

use hsu_proto::core::v1::core_server::{Core as CoreService, CoreServer};
use hsu_proto::core::v1::{
    HealthRequest, HealthResponse, HealthStatus, InfoRequest, InfoResponse, PingRequest, PingResponse, ShutdownRequest,
    ShutdownResponse,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("HSU_CORE_ADDR is not set: this process was not started by an HSU agent as an integrated unit")]
    NoAddress,
    #[error("HSU_CORE_ADDR {0:?} is not HOST:PORT")]
    BadAddress(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// The unit's side of `hsu.core.v1.Core`, served until the process exits.
pub struct Core {
    health: watch::Sender<(bool, String)>,
    shutdown: watch::Receiver<Option<Duration>>,
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Core {
    /// Serves Core on `HSU_CORE_ADDR`. Health starts as not serving.
    pub async fn start(name: &str, version: &str) -> Result<Core, Error> {
        let text = std::env::var("HSU_CORE_ADDR").map_err(|_| Error::NoAddress)?;
        let addr: SocketAddr = text.parse().map_err(|_| Error::BadAddress(text.clone()))?;
        Core::start_on(addr, name, version).await
    }

    /// Serves Core on `addr` (for tests and for units that choose their own address).
    pub async fn start_on(addr: SocketAddr, name: &str, version: &str) -> Result<Core, Error> {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Listen { addr, source })?;
        let addr = listener.local_addr().map_err(|source| Error::Listen { addr, source })?;
        let (health, health_rx) = watch::channel((false, "starting".to_string()));
        let (shutdown_tx, shutdown) = watch::channel(None);
        let service =
            Service { name: name.to_string(), version: version.to_string(), health: health_rx, shutdown: shutdown_tx };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            tonic::transport::Server::builder().add_service(CoreServer::new(service)).serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
        );
        Ok(Core { health, shutdown, addr, stop, server })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What `Health` answers from now on.
    pub fn set_health(&self, serving: bool, message: &str) {
        self.health.send_replace((serving, message.to_string()));
    }

    /// Stops serving Core once the calls in flight (the agent's `Shutdown` among them) have been
    /// answered. Call it before the process exits.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
    }

    /// Resolves when the agent calls `Shutdown`, with the grace period it allows.
    pub async fn shutdown_requested(&mut self) -> Duration {
        match self.shutdown.wait_for(Option::is_some).await {
            Ok(g) => g.unwrap_or_default(),
            Err(_) => std::future::pending().await,
        }
    }
}

struct Service {
    name: String,
    version: String,
    health: watch::Receiver<(bool, String)>,
    shutdown: watch::Sender<Option<Duration>>,
}

#[tonic::async_trait]
impl CoreService for Service {
    async fn ping(&self, req: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse { payload: req.into_inner().payload }))
    }

    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(InfoResponse {
            name: self.name.clone(),
            version: self.version.clone(),
            runtime: "rust/hsu-sdk".into(),
            pid: std::process::id(),
        }))
    }

    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthResponse>, Status> {
        let (serving, message) = self.health.borrow().clone();
        let status = if serving { HealthStatus::Serving } else { HealthStatus::NotServing };
        Ok(Response::new(HealthResponse { status: status as i32, message }))
    }

    async fn shutdown(&self, req: Request<ShutdownRequest>) -> Result<Response<ShutdownResponse>, Status> {
        self.shutdown.send_replace(Some(Duration::from_millis(req.into_inner().grace_ms)));
        Ok(Response::new(ShutdownResponse {}))
    }
}
