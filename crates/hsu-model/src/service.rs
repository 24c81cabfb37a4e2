//! Services: the endpoint sets the controller keeps for each service a deployment provides
//! (`deploy::ServiceSpec`), from which every node's registry builds its view.
//!
//! A service is named in its namespace (`default/web`), like a Kubernetes Service. Its endpoints
//! are the instances of the deployment that provides it which their node reports running with
//! the service's port allocated; each says whether the instance is ready, and only ready ones are
//! handed to clients.

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// The endpoints of one service, as the leader's controller last wrote them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub namespace: String,
    pub name: String,
    /// The deployment that provides it.
    pub deployment: String,
    /// The template port it is reached on.
    pub port: String,
    /// Sorted by instance id.
    pub endpoints: Vec<Endpoint>,
}

/// One instance behind a service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    pub instance: String,
    pub node: NodeId,
    /// The port the instance listens on, on its node's loopback.
    pub port: u16,
    /// Its node reports it ready (readiness probe passing, or running without one).
    pub ready: bool,
}

impl ServiceRecord {
    /// The endpoints a client may be sent to.
    pub fn ready(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.iter().filter(|e| e.ready)
    }
}
