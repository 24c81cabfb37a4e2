//! `hsu logs`: the log files of a deployment's instances, from whichever nodes run them. The node
//! that serves the API asks each instance's node over QUIC (a server stream of `METHOD_LOGS`)
//! and merges what comes back, line by line, each line marked with its instance.

use hsu_model::keys;
use hsu_model::state::{InstanceRecord, OwnerKind};
use hsu_model::{encode_record, NodeId};
use hsu_store::{Consistency, KeyRange};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::node::Node;
use crate::peer::{node_server_name, parse_addr, LogAsk, PeerError, METHOD_LOGS};
use crate::records::{self, NodeRecord};

/// Lines of one instance's log.
#[derive(Clone, Debug)]
pub struct LogLines {
    pub instance: String,
    pub node: String,
    pub text: String,
}

/// The log of a unit of the agent in `agent_dir`, for `hsu logs`.
pub(crate) fn serve_log(agent_dir: &std::path::Path, ask: LogAsk) -> Result<mpsc::Receiver<Vec<u8>>, String> {
    let name = hsu_model::unit::UnitName::new(&ask.unit)?;
    let dir = hsu_agent::record::unit_dir(agent_dir, name.as_str());
    if !dir.exists() {
        return Err(format!("no unit {} here", name.as_str()));
    }
    let path = dir.join(if ask.stderr { "stderr.log" } else { "stdout.log" });
    let (head, offset) = hsu_agent::logs::read_tail(&path, ask.tail as usize).map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        if !head.is_empty() && tx.send(head).await.is_err() {
            return;
        }
        if ask.follow {
            hsu_agent::logs::follow(path, offset, Duration::from_millis(200), tx).await;
        }
    });
    Ok(rx)
}

/// Longest line passed on whole; longer ones are cut.
const MAX_LINE: usize = 64 * 1024;

impl Node {
    /// This node's own log of `ask.unit`, as chunks.
    pub(crate) fn local_log(&self, ask: LogAsk) -> Result<mpsc::Receiver<Vec<u8>>, String> {
        serve_log(&self.agent_dir(), ask)
    }

    /// The logs of a deployment's instances (or of one instance), merged; lines keep their order
    /// within an instance.
    pub async fn logs(
        &self,
        namespace: &str,
        deployment: &str,
        instance: Option<&str>,
        ask: LogAsk,
    ) -> Result<mpsc::Receiver<LogLines>, PeerError> {
        let r = self.range(KeyRange::from(&keys::INSTANCES.all()), 0, Consistency::Linearizable).await?;
        let mut wanted: Vec<InstanceRecord> = Vec::new();
        for kv in r.kvs {
            let i: InstanceRecord = records::decode(&kv.key, &kv.value)?;
            let hit = match instance {
                Some(name) => i.id == name,
                None => i.namespace == namespace && i.owner == deployment && i.owner_kind == OwnerKind::Deployment,
            };
            if hit {
                wanted.push(i);
            }
        }
        if wanted.is_empty() {
            return Err(PeerError::NotFound(match instance {
                Some(name) => format!("instance {name}"),
                None => format!("instances of deployment {namespace}/{deployment}"),
            }));
        }
        let nodes: Vec<NodeRecord> = self.list_local(&keys::NODES.all())?;
        let name_of = |id: NodeId| nodes.iter().find(|n| n.id == id).map_or(format!("node-{id}"), |n| n.name.clone());
        let (tx, rx) = mpsc::channel(64);
        for i in wanted {
            let ask = LogAsk { unit: i.id.clone(), ..ask.clone() };
            let node_name = name_of(i.node);
            let source = if i.node == self.id() {
                self.local_log(ask).map_err(PeerError::Invalid)
            } else {
                let addr = nodes.iter().find(|n| n.id == i.node).map(|n| n.address.clone()).unwrap_or_default();
                self.remote_log(i.node, &addr, &ask).await
            };
            let tx = tx.clone();
            let instance = i.id.clone();
            match source {
                Ok(mut chunks) => {
                    tokio::spawn(async move {
                        let mut partial = Vec::new();
                        loop {
                            // Also end when the client has gone, so that a quiet log being
                            // followed does not keep this task (and its source) alive.
                            let chunk = tokio::select! {
                                c = chunks.recv() => c,
                                () = tx.closed() => return,
                            };
                            let Some(chunk) = chunk else { break };
                            partial.extend_from_slice(&chunk);
                            // Whole lines only, so lines of different instances never interleave;
                            // a line longer than MAX_LINE is cut.
                            let end = partial.iter().rposition(|b| *b == b'\n').map(|e| e + 1);
                            let end = end.or((partial.len() > MAX_LINE).then_some(partial.len()));
                            if let Some(end) = end {
                                let mut lines: Vec<u8> = partial.drain(..end).collect();
                                if lines.last() != Some(&b'\n') {
                                    lines.push(b'\n');
                                }
                                let text = String::from_utf8_lossy(&lines).into_owned();
                                let out = LogLines { instance: instance.clone(), node: node_name.clone(), text };
                                if tx.send(out).await.is_err() {
                                    return;
                                }
                            }
                        }
                        if !partial.is_empty() {
                            let text = String::from_utf8_lossy(&partial).into_owned() + "\n";
                            let _ = tx.send(LogLines { instance, node: node_name, text }).await;
                        }
                    });
                }
                Err(e) => {
                    let text = format!("(no log from node {node_name}: {e})\n");
                    let _ = tx.send(LogLines { instance, node: node_name, text }).await;
                }
            }
        }
        Ok(rx)
    }

    async fn remote_log(&self, id: NodeId, addr: &str, ask: &LogAsk) -> Result<mpsc::Receiver<Vec<u8>>, PeerError> {
        let addr = parse_addr(addr).map_err(PeerError::Invalid)?;
        let body = encode_record(ask).map_err(|e| PeerError::Invalid(e.to_string()))?;
        let mut frames = self
            .endpoint()
            .stream(addr, &node_server_name(id), METHOD_LOGS, &body)
            .await
            .map_err(|e| PeerError::Store(hsu_store::Error::Unavailable(e.to_string())))?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(Ok(frame)) = frames.recv().await {
                if tx.send(frame).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}
