//! The commands that talk to a cluster's API apart from deployments: status, nodes, members,
//! tokens and the KV store, and how a gRPC status becomes an error message.

use std::path::PathBuf;

use anyhow::{anyhow, bail};
use hsu_proto::v1 as pb;
use hsu_sdk::client;
use serde::Serialize;

use crate::args::*;
use crate::load_config;
use crate::output::{print, table, Format};

/// A gRPC status as an error message: what went wrong, in the server's words.
pub(crate) fn status(s: tonic::Status) -> anyhow::Error {
    anyhow!("{}: {}", code_name(s.code()), s.message())
}

pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Unauthenticated => "unauthenticated",
        PermissionDenied => "permission denied",
        InvalidArgument => "invalid argument",
        NotFound => "not found",
        FailedPrecondition => "failed precondition",
        Unavailable => "unavailable",
        DeadlineExceeded => "deadline exceeded",
        OutOfRange => "out of range",
        Internal => "internal error",
        _ => "failed",
    }
}

#[derive(Serialize)]
pub(crate) struct KvOut {
    pub(crate) key: String,
    pub(crate) value: String,
    pub(crate) create_revision: u64,
    pub(crate) mod_revision: u64,
    pub(crate) version: u64,
    pub(crate) lease: u64,
}

pub(crate) fn kv_out(kv: pb::KeyValue) -> KvOut {
    KvOut {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        value: String::from_utf8_lossy(&kv.value).into_owned(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
    }
}

pub(crate) async fn client_command(
    config: &Option<PathBuf>,
    endpoint: Option<&str>,
    out: Format,
    command: Command,
) -> anyhow::Result<()> {
    let cfg = load_config(config)?;
    let (mut cluster, mut kv) = client::connect(&cfg, endpoint).await?;
    match command {
        Command::Status => {
            let s = cluster.status(pb::StatusRequest {}).await.map_err(status)?.into_inner();
            print(out, &s, |_| {
                let head = format!(
                    "cluster {}: leader {} (id {}), term {}, commit index {}\n\n",
                    s.cluster_name,
                    if s.leader.is_empty() { "<none>" } else { &s.leader },
                    s.leader_id,
                    s.term,
                    s.commit_index
                );
                let rows = s
                    .members
                    .iter()
                    .map(|m| {
                        vec![
                            m.id.to_string(),
                            m.name.clone(),
                            m.role.clone(),
                            m.address.clone(),
                            m.api_address.clone(),
                            if m.healthy { "healthy" } else { "unhealthy" }.into(),
                            m.matched_index.to_string(),
                        ]
                    })
                    .collect();
                head + &table(&["ID", "NAME", "ROLE", "ADDRESS", "API", "HEALTH", "MATCHED"], rows)
            })
        }
        Command::Node(NodeCommand::List) | Command::Get { what: GetWhat::Nodes, .. } => {
            let nodes = cluster.list_nodes(pb::ListNodesRequest {}).await.map_err(status)?.into_inner().nodes;
            print(out, &nodes, |_| {
                let rows = nodes
                    .iter()
                    .map(|n| {
                        let mut labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        labels.sort();
                        vec![
                            n.id.to_string(),
                            n.name.clone(),
                            n.role.clone(),
                            if n.ready { "ready" } else { "not ready" }.into(),
                            n.address.clone(),
                            format!("{:.1}", n.cpu_millis as f64 / 1000.0),
                            format!("{} MiB", n.memory_bytes >> 20),
                            n.units.to_string(),
                            labels.join(","),
                            n.version.clone(),
                        ]
                    })
                    .collect();
                table(&["ID", "NAME", "ROLE", "STATUS", "ADDRESS", "CPU", "MEMORY", "UNITS", "LABELS", "VERSION"], rows)
            })
        }
        Command::Node(NodeCommand::Leave { .. }) => {
            let r = cluster.leave(pb::LeaveRequest {}).await.map_err(status)?.into_inner();
            print(out, &serde_json::json!({"left": r.node_id}), |_| {
                format!("node {} left the cluster and is stopping\n", r.node_id)
            })
        }
        Command::Node(NodeCommand::Remove { id }) => {
            cluster.remove_node(pb::RemoveNodeRequest { id }).await.map_err(status)?;
            print(out, &serde_json::json!({"removed": id}), |_| {
                format!("node {id} removed; its certificate is revoked\n")
            })
        }
        Command::Token(TokenCommand::Create { ttl, uses, api, role, description }) => {
            let req = pb::CreateTokenRequest {
                kind: if api { pb::TokenKind::Api } else { pb::TokenKind::Join } as i32,
                ttl_seconds: ttl.map_or(0, |t| t.as_secs().max(1)),
                uses: uses.unwrap_or(0),
                role: match role {
                    ApiRoleArg::Admin => pb::ApiRole::Admin,
                    ApiRoleArg::ReadOnly => pb::ApiRole::ReadOnly,
                } as i32,
                description,
            };
            let r = cluster.create_token(req).await.map_err(status)?.into_inner();
            print(out, &r, |_| format!("{}\n", r.token))
        }
        Command::Token(TokenCommand::List) => {
            let tokens = cluster.list_tokens(pb::ListTokensRequest {}).await.map_err(status)?.into_inner().tokens;
            let kind = |t: &pb::TokenInfo| if t.kind == pb::TokenKind::Api as i32 { "api" } else { "join" };
            let role = |t: &pb::TokenInfo| if t.role == pb::ApiRole::ReadOnly as i32 { "read-only" } else { "admin" };
            print(out, &tokens, |_| {
                let rows = tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            kind(t).into(),
                            if kind(t) == "api" { role(t).into() } else { "-".into() },
                            if t.expires_unix_ms == 0 { "never".into() } else { t.expires_unix_ms.to_string() },
                            t.uses_left.map_or("unlimited".into(), |u| u.to_string()),
                            if t.revoked { "revoked" } else { "valid" }.into(),
                            t.description.clone(),
                        ]
                    })
                    .collect();
                table(&["ID", "KIND", "ROLE", "EXPIRES_MS", "USES_LEFT", "STATE", "DESCRIPTION"], rows)
            })
        }
        Command::Token(TokenCommand::Revoke { id }) => {
            cluster.revoke_token(pb::RevokeTokenRequest { id: id.clone() }).await.map_err(status)?;
            print(out, &serde_json::json!({"revoked": id}), |_| format!("token {id} revoked\n"))
        }
        Command::Kv(KvCommand::Put { key, value, if_revision, lease }) => {
            let revision = match if_revision {
                None => {
                    let r = kv
                        .put(pb::PutRequest { key: key.into_bytes(), value: value.into_bytes(), lease, prev_kv: false })
                        .await
                        .map_err(status)?
                        .into_inner();
                    r.header.map_or(0, |h| h.revision)
                }
                Some(rev) => {
                    let put = pb::RequestOp {
                        request: Some(pb::request_op::Request::Put(pb::PutRequest {
                            key: key.clone().into_bytes(),
                            value: value.into_bytes(),
                            lease,
                            prev_kv: false,
                        })),
                    };
                    let cmp = pb::Compare {
                        key: key.clone().into_bytes(),
                        target: pb::compare::Target::ModRevision as i32,
                        result: pb::compare::Result::Equal as i32,
                        value: vec![],
                        number: rev,
                    };
                    let r = kv
                        .txn(pb::TxnRequest { compare: vec![cmp], success: vec![put], failure: vec![] })
                        .await
                        .map_err(status)?
                        .into_inner();
                    if !r.succeeded {
                        bail!("failed precondition: {key} is no longer at revision {rev}; nothing was written");
                    }
                    r.header.map_or(0, |h| h.revision)
                }
            };
            print(out, &serde_json::json!({"revision": revision}), |_| format!("OK (revision {revision})\n"))
        }
        Command::Kv(KvCommand::Get { key, prefix, local, keys_only }) => {
            let consistency = if local { pb::Consistency::Local } else { pb::Consistency::Linearizable };
            let r = kv
                .range(pb::RangeRequest {
                    key: key.clone().into_bytes(),
                    prefix,
                    limit: 0,
                    consistency: consistency as i32,
                    keys_only,
                })
                .await
                .map_err(status)?
                .into_inner();
            if r.kvs.is_empty() && !prefix {
                bail!("not found: key {key:?}");
            }
            let kvs: Vec<KvOut> = r.kvs.into_iter().map(kv_out).collect();
            print(out, &kvs, |kvs| {
                let rows = kvs
                    .iter()
                    .map(|k| vec![k.key.clone(), k.value.clone(), k.mod_revision.to_string(), k.version.to_string()])
                    .collect();
                table(&["KEY", "VALUE", "REVISION", "VERSION"], rows)
            })
        }
        Command::Kv(KvCommand::Del { key, prefix }) => {
            let r = kv
                .delete(pb::DeleteRequest { key: key.into_bytes(), prefix, prev_kv: false })
                .await
                .map_err(status)?
                .into_inner();
            print(out, &serde_json::json!({"deleted": r.deleted}), |_| format!("deleted {}\n", r.deleted))
        }
        Command::Kv(KvCommand::Watch { key, prefix, from_revision, count }) => {
            let mut stream = kv
                .watch(pb::WatchRequest { key: key.into_bytes(), prefix, start_revision: from_revision })
                .await
                .map_err(status)?
                .into_inner();
            let mut seen = 0u64;
            while let Some(msg) = stream.message().await.map_err(status)? {
                if msg.compact_revision != 0 {
                    bail!(
                        "out of range: history up to revision {} is compacted; watch from a later revision",
                        msg.compact_revision
                    );
                }
                for e in msg.events {
                    let kind = if e.r#type == pb::event::EventType::Delete as i32 { "DELETE" } else { "PUT" };
                    let kv = kv_out(e.kv.unwrap_or_default());
                    match out {
                        Format::Table => println!("{kind} {} {} (revision {})", kv.key, kv.value, kv.mod_revision),
                        _ => println!("{}", serde_json::json!({"type": kind, "kv": kv})),
                    }
                    seen += 1;
                    if count.is_some_and(|c| seen >= c) {
                        return Ok(());
                    }
                }
            }
            Ok(())
        }
        Command::Node(_)
        | Command::Agent(_)
        | Command::Apply { .. }
        | Command::Get { .. }
        | Command::Describe { .. }
        | Command::Delete { .. }
        | Command::Rollout(_)
        | Command::Job(_)
        | Command::Logs { .. }
        | Command::Dev { .. } => unreachable!("handled before"),
    }
}
