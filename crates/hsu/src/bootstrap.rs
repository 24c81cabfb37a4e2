//! The three ways a node starts: `init` creates a cluster, `join` enrolls into one, `run`
//! restarts a node from its data directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hsu_model::keys;
use hsu_model::NodeId;
use hsu_net::pki::{self, cert_der_to_pem, generate_csr, CertifiedKey, ClusterCa, API_SERVER_NAME};
use hsu_net::token::JoinToken;
use hsu_proto::v1 as pb;
use hsu_store::{Member, Request, Txn};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::agent_node::AgentNode;
use crate::datadir::{DataDir, JoinedVia, NodeState, Pki};
use crate::error::NodeError;
use crate::node::{validate_name, Node, Tuning};
use crate::peer::PeerRequest;
use crate::records::{self, ApiRole, CaRecord, ClusterInfo, NodeRecord, TokenKind};
use hsu_sdk::client::{channel, error_chain, ClientConfig};

/// Certificates are valid for a year; the CA for ten.
const CERT_DAYS: u32 = 365;

pub struct InitOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub api: SocketAddr,
    pub name: Option<String>,
    pub cluster_name: String,
    pub voters: u32,
    pub tuning: Tuning,
}

/// What `init` made: the running node and the first join token.
pub struct Initialized {
    pub node: Node,
    pub join_token: String,
}

/// The machine's host name made into a node name, the default when `--name` is not given.
pub fn default_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "node".into());
    let name: String = raw
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    let name = name.trim_matches('-').to_string();
    if name.is_empty() {
        "node".into()
    } else {
        name
    }
}

/// Creates a new cluster with this node as its first voter.
pub async fn init(opts: InitOptions) -> Result<Initialized, NodeError> {
    let name = opts.name.clone().unwrap_or_else(default_name);
    validate_name(&name).map_err(NodeError::Config)?;
    validate_voters(opts.voters)?;
    let dir = DataDir::new(&opts.data_dir);
    dir.create()?;
    let ca = ClusterCa::generate(&opts.cluster_name)?;
    let node_cert = ca.issue_node(1, CERT_DAYS)?;
    let admin = ca.issue_admin("admin", CERT_DAYS)?;
    let state = NodeState {
        id: 1,
        name: name.clone(),
        cluster_name: opts.cluster_name.clone(),
        listen: opts.listen,
        api: opts.api,
        voters: opts.voters,
        joined_via: None,
    };
    let pki = Pki { ca_pem: ca.cert_pem().to_string(), node: node_cert, ca_key_pem: Some(ca.key_pem()) };
    dir.save_pki(&pki)?;
    dir.save_state(&state)?;

    let node = Node::start(&dir, state, pki.clone(), opts.tuning).await?;
    node.store().initialize(BTreeMap::from([(1, Member::new(&name, opts.listen.to_string()))])).await?;
    node.wait_for_leader(Duration::from_secs(10)).await?;
    let now = records::now_ms();
    let record = NodeRecord {
        cert_sha256: records::leaf_fingerprint(&pki.node.cert_pem)
            .ok_or_else(|| NodeError::Config("the node certificate does not parse".into()))?,
        id: 1,
        name,
        address: opts.listen.to_string(),
        api_address: opts.api.to_string(),
        joined_ms: now,
        version: env!("CARGO_PKG_VERSION").to_string(),
        removed: false,
        agent_only: false,
    };
    let txn = Txn {
        success: vec![
            records::put(&keys::CLUSTER.key(()), &ClusterInfo { name: opts.cluster_name.clone(), created_ms: now })?,
            records::put(&keys::CA.key(()), &CaRecord { cert_pem: ca.cert_pem().to_string() })?,
            records::put(&keys::NODES.key(1), &record)?,
            records::put(&keys::NEXT_NODE_ID.key(()), &2)?,
        ],
        ..Default::default()
    };
    node.propose(Request::Txn(txn)).await?;
    let (token, _) = node
        .create_token(
            TokenKind::Join,
            ApiRole::Admin,
            Some(Duration::from_secs(24 * 3600)),
            None,
            "created by init".into(),
        )
        .await?;
    let join_token = token.to_string();
    let admin_conf = ClientConfig {
        endpoint: opts.api.to_string(),
        ca: ca.cert_pem().to_string(),
        cert: Some(admin.cert_pem),
        key: Some(admin.key_pem),
        token: None,
    };
    admin_conf.save(&dir.admin_conf())?;
    pki::write_private(&dir.join_token(), format!("{join_token}\n").as_bytes())
        .map_err(|e| NodeError::Io(format!("{}: {e}", dir.join_token().display())))?;
    Ok(Initialized { node, join_token })
}

pub struct JoinOptions {
    /// HOST:PORT of any node's API.
    pub server: String,
    pub token: String,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub api: SocketAddr,
    pub name: Option<String>,
    pub role: pb::Role,
    pub voters: u32,
    pub tuning: Tuning,
}

/// Enrolls this machine into a cluster and starts it as a node. `progress` receives one line per
/// step (checking the CA, enrolled as node N, catching up, added as voter/learner).
pub async fn join(opts: JoinOptions, progress: impl Fn(&str)) -> Result<Node, NodeError> {
    if opts.role == pb::Role::Agent {
        return Err(NodeError::Config("an agent-only node starts with `join_agent`".into()));
    }
    let (dir, state, pki, _) = enroll(&opts, false, &progress).await?;
    // 3. Start, then ask the leader to add this node to Raft, as itself.
    let node = Node::start(&dir, state, pki.clone(), opts.tuning).await?;
    add_self(&opts.server, &pki, opts.role, opts.voters, &node, &progress).await?;
    Ok(node)
}

/// Enrolls this machine as an agent-only node (no CA key, not in Raft) and starts it: it learns
/// the servers' node-to-node addresses from its enrollment.
pub async fn join_agent(opts: JoinOptions, progress: impl Fn(&str)) -> Result<AgentNode, NodeError> {
    let (dir, state, pki, servers) = enroll(&opts, true, &progress).await?;
    progress(&format!(
        "{} servers: {}",
        servers.len(),
        servers.iter().map(|(_, a)| a.as_str()).collect::<Vec<_>>().join(", ")
    ));
    let node = AgentNode::start(&dir, state, pki, opts.tuning).await?;
    node.set_servers(servers);
    Ok(node)
}

/// Checks the CA, enrolls with the token and a CSR, and saves the node's data directory.
/// Returns it with the servers' node-to-node addresses.
async fn enroll(
    opts: &JoinOptions,
    agent_only: bool,
    progress: &impl Fn(&str),
) -> Result<(DataDir, NodeState, Pki, Vec<(NodeId, String)>), NodeError> {
    let name = opts.name.clone().unwrap_or_else(default_name);
    validate_name(&name).map_err(NodeError::Config)?;
    validate_voters(opts.voters)?;
    let token = JoinToken::parse(&opts.token).map_err(|e| NodeError::Config(format!("--token: {e}")))?;
    let dir = DataDir::new(&opts.data_dir);
    if dir.exists() {
        return Err(NodeError::Config(format!(
            "{} already holds a node; use `hsu node run --data-dir {}`",
            opts.data_dir.display(),
            opts.data_dir.display()
        )));
    }
    // 1. Pin the CA by the hash in the token before anything secret leaves this machine.
    progress(&format!("checking the cluster CA of {} against the token", opts.server));
    let ca_der = pin_ca(&opts.server, token.ca_hash).await?;
    let ca_pem = cert_der_to_pem(&ca_der);
    progress("the cluster CA matches the token");

    // 2. Enroll: the token and a CSR for a key that never leaves this machine.
    let (csr_pem, key_pem) = generate_csr()?;
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem)).domain_name(API_SERVER_NAME);
    let mut cluster = pb::cluster_client::ClusterClient::new(channel(&opts.server, tls).await?);
    let grant = cluster
        .join(pb::JoinRequest {
            token: opts.token.clone(),
            csr_pem,
            name: name.clone(),
            address: opts.listen.to_string(),
            api_address: opts.api.to_string(),
            agent_only,
        })
        .await
        .map_err(|s| NodeError::Join(s.message().to_string()))?
        .into_inner();
    if records::leaf_fingerprint(&grant.ca_pem) != Some(token.ca_hash) {
        return Err(NodeError::Join("the server answered with a CA other than the one it presented".into()));
    }
    // Saved before anything else happens: an interrupted join then resumes with `hsu node run`.
    dir.create()?;
    // No CA key: a node that becomes a voter fetches it from another voter.
    let pki = Pki {
        ca_pem: grant.ca_pem.clone(),
        node: CertifiedKey { cert_pem: grant.cert_pem, key_pem },
        ca_key_pem: None,
    };
    let servers = grant
        .servers
        .iter()
        .map(|s| {
            let (id, addr) =
                s.split_once('=').ok_or_else(|| NodeError::Join(format!("server entry {s:?} is not ID=ADDRESS")))?;
            let id = id.parse().map_err(|_| NodeError::Join(format!("server entry {s:?}: {id:?} is not a node id")))?;
            Ok((id, addr.to_string()))
        })
        .collect::<Result<Vec<_>, NodeError>>()?;
    dir.save_pki(&pki)?;
    let state = NodeState {
        id: grant.node_id,
        name,
        cluster_name: grant.cluster_name,
        listen: opts.listen,
        api: opts.api,
        voters: opts.voters,
        joined_via: Some(JoinedVia { server: opts.server.clone(), role: opts.role as i32 }),
    };
    dir.save_state(&state)?;
    progress(&format!("enrolled as node {} ({}) in cluster {:?}", state.id, state.name, state.cluster_name));

    Ok((dir, state, pki, servers))
}

/// True when the data directory holds an agent-only node.
pub fn is_agent_only(data_dir: &std::path::Path) -> Result<bool, NodeError> {
    let state = DataDir::new(data_dir).load_state()?;
    Ok(state.joined_via.is_some_and(|v| v.role == pb::Role::Agent as i32))
}

/// Restarts the agent-only node of an existing data directory (`--listen` moves it).
pub async fn run_agent(data_dir: PathBuf, listen: Option<SocketAddr>, tuning: Tuning) -> Result<AgentNode, NodeError> {
    let dir = DataDir::new(&data_dir);
    crate::removal::refuse_if_departed(dir.root())?;
    let mut state = dir.load_state()?;
    if let Some(l) = listen {
        state.listen = l;
        dir.save_state(&state)?;
    }
    let pki = dir.load_pki()?;
    AgentNode::start(&dir, state, pki, tuning).await
}

async fn add_self(
    server: &str,
    pki: &Pki,
    role: pb::Role,
    voters: u32,
    node: &Node,
    progress: &impl Fn(&str),
) -> Result<(), NodeError> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .identity(Identity::from_pem(&pki.node.cert_pem, &pki.node.key_pem))
        .domain_name(API_SERVER_NAME);
    let mut cluster = pb::cluster_client::ClusterClient::new(channel(server, tls).await?);
    let mut stream = cluster
        .add_member(pb::AddMemberRequest { role: role as i32, target_voters: voters })
        .await
        .map_err(|s| NodeError::Join(s.message().to_string()))?
        .into_inner();
    loop {
        match stream.message().await {
            Ok(Some(p)) if !p.role.is_empty() => {
                progress(&format!("{} (applied {} entries)", p.step, node.store().applied_index()));
                if p.role == "voter" {
                    // Only voters hold the CA key; it signs the certificates of later nodes. The
                    // node may not have the entry that made it a voter yet: asked until it has.
                    let deadline = tokio::time::Instant::now() + node.tuning().membership_timeout;
                    loop {
                        match node.fetch_ca_key().await {
                            Ok(_) => break,
                            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e.into()),
                            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    }
                    progress("received the CA key from another voter");
                }
                return Ok(());
            }
            Ok(Some(p)) if p.step == "catching up" => progress(&format!(
                "catching up: applied {} of the leader's {}",
                node.store().applied_index(),
                p.leader_commit
            )),
            Ok(Some(p)) => progress(&p.step),
            Ok(None) => return Err(NodeError::Join("the server ended the join without an answer".into())),
            Err(s) => return Err(NodeError::Join(s.message().to_string())),
        }
    }
}

/// Restarts the node of an existing data directory. A node whose addresses changed since it
/// last ran keeps its identity and tells the cluster its new address.
pub async fn run(
    data_dir: PathBuf,
    listen: Option<SocketAddr>,
    api: Option<SocketAddr>,
    tuning: Tuning,
) -> Result<Node, NodeError> {
    let dir = DataDir::new(&data_dir);
    if !dir.exists() {
        return Err(NodeError::Config(format!(
            "{} holds no node: create one with `hsu node init` or `hsu node join`",
            data_dir.display()
        )));
    }
    crate::removal::refuse_if_departed(dir.root())?;
    let mut state = dir.load_state()?;
    let mut moved = false;
    if let Some(l) = listen.filter(|l| *l != state.listen) {
        state.listen = l;
        moved = true;
    }
    if let Some(a) = api {
        state.api = a;
    }
    dir.save_state(&state)?;
    let pki = dir.load_pki()?;
    let node = Node::start(&dir, state.clone(), pki.clone(), tuning).await?;
    let initialized = node.store().is_initialized().await.map_err(|e| NodeError::Config(e.to_string()))?;
    if let (false, Some(via)) = (initialized, &state.joined_via) {
        // Enrolled, but never added to Raft (the join was interrupted): finish it now.
        let role = pb::Role::try_from(via.role).unwrap_or(pb::Role::Auto);
        add_self(&via.server, &pki, role, state.voters, &node, &|step: &str| tracing::info!("join: {step}")).await?;
    }
    if moved {
        let node2 = node.clone();
        let member = Member::new(&state.name, state.listen.to_string());
        // The cluster learns the new address through the leader, which is reached at its own
        // (unchanged) address; retried in the background until it works.
        tokio::spawn(async move {
            for _ in 0..60 {
                match node2
                    .leader_call::<()>(PeerRequest::UpdateAddress { id: node2.id(), member: member.clone() })
                    .await
                {
                    Ok(()) => {
                        tracing::info!("the cluster now knows this node at {}", member.addr);
                        return;
                    }
                    other => tracing::warn!("address update not accepted yet: {other:?}"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    Ok(node)
}

fn validate_voters(n: u32) -> Result<(), NodeError> {
    if n == 3 || n == 5 {
        Ok(())
    } else {
        Err(NodeError::Config(format!("--voters must be 3 or 5, got {n}")))
    }
}

/// Connects to `server` with a verifier that accepts only a chain holding a CA whose sha256 is
/// `hash`, and returns that CA. Nothing but the TLS handshake is sent.
async fn pin_ca(server: &str, hash: [u8; 32]) -> Result<Vec<u8>, NodeError> {
    let (config, pinned) = pki::pinned_client_config(hash, &[b"h2"])?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(server))
        .await
        .map_err(|_| NodeError::Join(format!("cannot reach {server}: timed out")))?
        .map_err(|e| NodeError::Join(format!("cannot reach {server}: {e}")))?;
    let name = rustls::pki_types::ServerName::try_from(API_SERVER_NAME.to_string())
        .map_err(|e| NodeError::Config(e.to_string()))?;
    let tls = connector.connect(name, tcp).await.map_err(|e| {
        NodeError::Join(format!(
            "the server's CA does not match the token, stopping before sending anything ({})",
            error_chain(&e)
        ))
    })?;
    drop(tls);
    let ca = pinned.lock().unwrap_or_else(|p| p.into_inner()).clone();
    ca.ok_or_else(|| NodeError::Join("the server presented no CA certificate".into()))
}
