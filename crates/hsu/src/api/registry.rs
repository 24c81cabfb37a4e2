//! `hsu.v1.Registry` over the node's registry view: resolve a service, watch it, list them all.

use std::collections::BTreeMap;
use std::pin::Pin;

use hsu_model::cluster::NodeRecord;
use hsu_model::keys;
use hsu_model::service::ServiceRecord;
use hsu_model::NodeId;
use hsu_proto::v1 as pb;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::auth::{authorize, Need};
use super::convert::namespace_or_default;
use crate::node::Node;

pub struct RegistryApi {
    pub node: Node,
}

impl RegistryApi {
    fn node_names(&self) -> BTreeMap<NodeId, String> {
        let nodes: Vec<NodeRecord> = self.node.list_local(&keys::NODES.all()).unwrap_or_default();
        nodes.into_iter().map(|n| (n.id, n.name)).collect()
    }
}

/// The message for `record` (`None`: the service does not exist).
fn info(
    namespace: &str,
    name: &str,
    record: Option<ServiceRecord>,
    names: &BTreeMap<NodeId, String>,
) -> pb::ServiceInfo {
    let Some(r) = record else {
        return pb::ServiceInfo { namespace: namespace.into(), name: name.into(), ..Default::default() };
    };
    pb::ServiceInfo {
        namespace: r.namespace,
        name: r.name,
        deployment: r.deployment,
        port: r.port,
        endpoints: r
            .endpoints
            .into_iter()
            .map(|e| pb::ServiceEndpoint {
                instance: e.instance,
                node: names.get(&e.node).cloned().unwrap_or_else(|| format!("node-{}", e.node)),
                node_id: e.node,
                address: format!("127.0.0.1:{}", e.port),
                ready: e.ready,
            })
            .collect(),
        exists: true,
    }
}

fn checked(req: &pb::ServiceRequest) -> Result<(String, String), Status> {
    if req.name.is_empty() {
        return Err(Status::invalid_argument("name: a service name is required"));
    }
    Ok((namespace_or_default(&req.namespace).to_string(), req.name.clone()))
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::ServiceInfo, Status>> + Send>>;

#[tonic::async_trait]
impl pb::registry_server::Registry for RegistryApi {
    async fn resolve(&self, req: Request<pb::ServiceRequest>) -> Result<Response<pb::ServiceInfo>, Status> {
        authorize(&self.node, &req, Need::Read)?;
        let (ns, name) = checked(req.get_ref())?;
        match self.node.registry().resolve(&ns, &name) {
            Some(r) => Ok(Response::new(info(&ns, &name, Some(r), &self.node_names()))),
            None => Err(Status::not_found(format!("service {ns}/{name}: no deployment provides it"))),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<pb::ServiceRequest>) -> Result<Response<Self::WatchStream>, Status> {
        authorize(&self.node, &req, Need::Read)?;
        let (ns, name) = checked(req.get_ref())?;
        let mut watch = self.node.registry().watch(&ns, &name);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let api = RegistryApi { node: self.node.clone() };
        tokio::spawn(async move {
            let mut now = watch.current();
            loop {
                if tx.send(Ok(info(&ns, &name, now, &api.node_names()))).await.is_err() {
                    return;
                }
                // A client that went away ends the watch at once, not at the next change.
                now = tokio::select! {
                    next = watch.changed() => match next {
                        Ok(next) => next,
                        Err(_) => return,
                    },
                    () = tx.closed() => return,
                    () = api.node.stopped() => return,
                };
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn list_services(
        &self,
        req: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        authorize(&self.node, &req, Need::Read)?;
        let ns = req.get_ref().namespace.clone();
        let names = self.node_names();
        let services = self
            .node
            .registry()
            .list((!ns.is_empty()).then_some(ns.as_str()))
            .into_iter()
            .map(|r| {
                let (ns, name) = (r.namespace.clone(), r.name.clone());
                info(&ns, &name, Some(r), &names)
            })
            .collect();
        Ok(Response::new(pb::ListServicesResponse { services }))
    }
}
