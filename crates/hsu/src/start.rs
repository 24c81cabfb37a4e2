//! A server node's start-up: the composition of what `crate::node` holds (the store member
//! and the QUIC endpoint) with what serves and drives it: the node-to-node handler, the public
//! API, the controllers that run while it leads, the agent of its own units and the feed of its
//! service registry. Only this
//! module knows all of them; none of them knows it.

use std::sync::{Arc, OnceLock};

use hsu_agent::OnExit;
use hsu_control::controller::{self, ControllerConfig};

use crate::datadir::{DataDir, NodeState, Pki};
use crate::error::NodeError;
use crate::node::{Node, Tuning};
use crate::serve::PeerHandler;

impl Node {
    /// Starts the node of data directory `dir`: its QUIC endpoint, its store member, its API,
    /// the controllers and the agent of its units.
    pub async fn start(dir: &DataDir, state: NodeState, pki: Pki, tuning: Tuning) -> Result<Node, NodeError> {
        let cell: Arc<OnceLock<Node>> = Arc::new(OnceLock::new());
        let handler = Arc::new(PeerHandler { node: cell.clone() });
        let (node, wiring) = Node::open(dir, state, pki, tuning.clone(), handler).await?;
        let _ = cell.set(node.clone());
        crate::api::spawn(node.clone(), wiring.ca_der, wiring.is_revoked)?;
        let config = ControllerConfig { node_grace: tuning.node_grace, ..Default::default() };
        let stopping = node.clone();
        tokio::spawn(controller::run(node.store().clone(), node.reports().clone(), config, async move {
            stopping.stopped().await
        }));
        let on_exit = if tuning.stop_units_on_exit { OnExit::Stop } else { OnExit::Keep };
        let units = crate::units::spawn_for_server(node.clone(), dir.agent_dir(), tuning.labels.clone(), on_exit)?;
        node.set_units(units);
        tokio::spawn(crate::services::feed(node.clone()));
        node.spawn_keepers();
        Ok(node)
    }
}
