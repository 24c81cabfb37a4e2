//! A cluster of real nodes in this process, and what the scenarios share: free loopback ports,
//! an admin client, raw node-to-node calls made with a chosen certificate, a snapshot of the
//! cluster's state to prove that a refused attempt changed nothing, and polling with a deadline.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use hsu::bootstrap::{self, InitOptions, JoinOptions};
use hsu::peer::{node_server_name, PeerError, PeerReply, PeerRequest};
use hsu::AgentNode;
use hsu::{DataDir, Pki};
use hsu::{Node, NodeError, Tuning};
use hsu_net::pki::{client_config, CertifiedKey};
use hsu_net::quic::{Endpoint, EndpointConfig, NetError, ALPN};
use hsu_proto::v1 as pb;
use hsu_sdk::client::{self, ClientConfig};
use hsu_store::{Consistency, KeyRange, Op, Request, Txn};
use tokio::time::Instant;

/// How long any awaited event may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The node-to-node method that carries a [`PeerRequest`]; the node keeps the constant private,
/// and a test that speaks the wire protocol has to name it.
pub const METHOD_PEER: u16 = 10;

/// Fast elections keep the scenarios short; a single voter on loopback has no reason to miss a
/// heartbeat, so they do not make the tests flaky.
pub fn tuning() -> Tuning {
    Tuning {
        // openraft gives an append the heartbeat interval to complete, fsync included; 100ms keeps
        // that true on a loaded 2-core machine running several tests at once.
        heartbeat_interval: Duration::from_millis(100),
        election_timeout_min: Duration::from_millis(400),
        election_timeout_max: Duration::from_millis(800),
        request_timeout: Duration::from_secs(3),
        membership_timeout: Duration::from_secs(20),
        ..Tuning::default()
    }
}

/// Ports this process has handed out. The kernel may give a released port out again, and the
/// tests of this binary run in parallel, so two nodes could otherwise be told to bind one port.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

fn fresh_port(bind: impl Fn() -> std::io::Result<u16>) -> u16 {
    for _ in 0..100 {
        let port = bind().expect("binding port 0 on 127.0.0.1 works");
        if HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner()).insert(port) {
            return port;
        }
    }
    panic!("the kernel kept offering ports this process had already handed out");
}

/// A loopback address with a UDP port that was free a moment ago (for a node's QUIC endpoint).
pub fn free_udp_addr() -> SocketAddr {
    let port = fresh_port(|| UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr().map(|a| a.port()));
    (Ipv4Addr::LOCALHOST, port).into()
}

/// A loopback address with a TCP port that was free a moment ago (for a node's gRPC API).
pub fn free_tcp_addr() -> SocketAddr {
    let port = fresh_port(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr().map(|a| a.port()));
    (Ipv4Addr::LOCALHOST, port).into()
}

/// Polls `check` until it yields a value, failing the test after [`DEADLINE`].
pub async fn poll<T, F, Fut>(what: &str, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(started.elapsed() < DEADLINE, "timed out after {DEADLINE:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What a refused attempt must leave as it was: the nodes and tokens as the admin API lists them,
/// the next node id, and every key of the store with its last modification.
#[derive(Debug, PartialEq)]
pub struct Observed {
    pub nodes: Vec<pb::Node>,
    pub tokens: Vec<pb::TokenInfo>,
    pub next_node_id: u64,
    pub revision: u64,
    /// Every key with its mod revision and its value, byte for byte.
    pub keys: Vec<(String, u64, Vec<u8>)>,
}

impl Observed {
    pub fn uses_left(&self, token_id: &str) -> Option<u32> {
        let token = self.tokens.iter().find(|t| t.id == token_id);
        token.unwrap_or_else(|| panic!("token {token_id} is not listed")).uses_left
    }

    pub fn role_of(&self, node_id: u64) -> &str {
        let node = self.nodes.iter().find(|n| n.id == node_id);
        &node.unwrap_or_else(|| panic!("node {node_id} is not listed")).role
    }
}

/// A cluster started by `bootstrap::init`, with the nodes joined to it. Node 1 is its only voter
/// (joined nodes are learners), so it always leads and its reads are the cluster's.
pub struct TestCluster {
    root: tempfile::TempDir,
    pub first: Node,
    /// The join token `init` created (24 h, unlimited uses).
    pub join_token: String,
    /// The `admin.conf` that `init` wrote.
    pub admin_conf: ClientConfig,
    joined: Vec<Node>,
    agents: Vec<AgentNode>,
}

impl TestCluster {
    pub async fn start() -> TestCluster {
        let root = tempfile::tempdir().expect("a temporary directory");
        let data_dir = root.path().join("n1");
        let init = bootstrap::init(InitOptions {
            data_dir: data_dir.clone(),
            listen: free_udp_addr(),
            api: free_tcp_addr(),
            name: Some("n1".into()),
            cluster_name: "sec-test".into(),
            voters: 3,
            tuning: tuning(),
        })
        .await
        .expect("init starts a one-node cluster");
        let admin_conf = ClientConfig::load(&DataDir::new(&data_dir).admin_conf()).expect("init writes admin.conf");
        TestCluster {
            root,
            first: init.node,
            join_token: init.join_token,
            admin_conf,
            joined: Vec::new(),
            agents: Vec::new(),
        }
    }

    /// The data directory of the node named `name` (it may not exist).
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// The keys and certificates in the data directory of the node named `name`.
    pub fn pki_of(&self, name: &str) -> Pki {
        DataDir::new(self.data_dir(name)).load_pki().unwrap_or_else(|e| panic!("pki of {name}: {e}"))
    }

    /// Options that join a learner named `name` through node 1 with `token`, on fresh ports.
    pub fn join_options(&self, name: &str, token: &str) -> JoinOptions {
        JoinOptions {
            server: self.first.api_addr().to_string(),
            token: token.to_string(),
            data_dir: self.data_dir(name),
            listen: free_udp_addr(),
            api: free_tcp_addr(),
            name: Some(name.to_string()),
            role: pb::Role::Learner,
            voters: 3,
            tuning: tuning(),
        }
    }

    /// Joins a learner named `name`; the cluster shuts it down at the end.
    pub async fn join(&mut self, name: &str, token: &str) -> Result<Node, NodeError> {
        let node = bootstrap::join(self.join_options(name, token), |_| {}).await?;
        self.joined.push(node.clone());
        Ok(node)
    }

    /// Joins an agent-only node named `name`; the cluster shuts it down at the end.
    pub async fn join_agent(&mut self, name: &str, token: &str) -> Result<AgentNode, NodeError> {
        let opts = JoinOptions { role: pb::Role::Agent, ..self.join_options(name, token) };
        let node = bootstrap::join_agent(opts, |_| {}).await?;
        self.agents.push(node.clone());
        Ok(node)
    }

    /// A client authenticated as the administrator, with the credentials `init` wrote.
    pub async fn admin(&self) -> (client::Cluster, client::Kv) {
        client::connect(&self.admin_conf, None).await.expect("the admin connects to node 1")
    }

    /// A client config for node 1's API that trusts the cluster CA and carries no credential.
    pub fn anonymous_conf(&self) -> ClientConfig {
        ClientConfig {
            endpoint: self.admin_conf.endpoint.clone(),
            ca: self.admin_conf.ca.clone(),
            ..Default::default()
        }
    }

    /// A client config for node 1's API that presents `cert` as its client certificate.
    pub fn cert_conf(&self, cert: &CertifiedKey) -> ClientConfig {
        ClientConfig { cert: Some(cert.cert_pem.clone()), key: Some(cert.key_pem.clone()), ..self.anonymous_conf() }
    }

    /// The cluster's state: what the admin API lists, and the leader's whole key space read
    /// linearizably, so that whatever was committed before this call is included.
    pub async fn observe(&self) -> Observed {
        let (mut cluster, _) = self.admin().await;
        let mut nodes = cluster.list_nodes(pb::ListNodesRequest {}).await.expect("list nodes").into_inner().nodes;
        // What nodes report (health, capacity, units) lives in the leader's memory and changes
        // by itself; the records are what a refused call must leave alone.
        for n in &mut nodes {
            *n = pb::Node {
                ready: false,
                cpu_millis: 0,
                memory_bytes: 0,
                labels: Default::default(),
                units: 0,
                last_report_ms: 0,
                ..n.clone()
            };
        }
        let tokens = cluster.list_tokens(pb::ListTokensRequest {}).await.expect("list tokens").into_inner().tokens;
        // The KV API cannot reach the cluster's own records, so this one is read from the store.
        let next = self
            .first
            .range(KeyRange::Key(hsu_model::keys::NEXT_NODE_ID.prefix().into()), 1, Consistency::Linearizable)
            .await
            .expect("read the next node id");
        let next = next.kvs.first().expect("init writes the next node id");
        let next_node_id: u64 = hsu_model::keys::NEXT_NODE_ID.decode(&next.value).expect("the next node id decodes");
        let all = self
            .first
            .range(KeyRange::Prefix(Vec::new()), 0, Consistency::Linearizable)
            .await
            .expect("a linearizable read of the whole store");
        let keys = all
            .kvs
            .iter()
            .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), kv.mod_revision, kv.value.clone()))
            .collect();
        Observed { nodes, tokens, next_node_id, revision: all.revision, keys }
    }

    /// The value of `key` in node 1's store, read linearizably.
    pub async fn value(&self, key: &[u8]) -> Option<Vec<u8>> {
        let r = self.first.range(KeyRange::Key(key.to_vec()), 1, Consistency::Linearizable).await;
        r.expect("a linearizable read").kvs.into_iter().next().map(|kv| kv.value)
    }

    /// The value of `key` as the KV API names it (the API keeps its keys under a prefix of its own).
    pub async fn api_value(&self, key: &[u8]) -> Option<Vec<u8>> {
        let r = self
            .first
            .range(KeyRange::Key([hsu_model::keys::USER_KV.as_bytes(), key].concat()), 1, Consistency::Linearizable)
            .await;
        r.expect("a linearizable read").kvs.into_iter().next().map(|kv| kv.value)
    }

    pub async fn shutdown(self) {
        for agent in &self.agents {
            agent.shutdown().await;
        }
        for node in self.joined.iter().rev() {
            node.shutdown().await;
        }
        self.first.shutdown().await;
    }
}

/// A client-only QUIC endpoint on loopback that trusts `ca_pem` and presents `cert` (or no
/// certificate), allowing frames up to `max_frame` bytes.
pub fn quic_client(ca_pem: &str, cert: Option<&CertifiedKey>, max_frame: usize) -> Endpoint {
    let tls = client_config(ca_pem, cert, &[ALPN]).expect("a client tls config");
    let cfg = EndpointConfig { max_frame, ..EndpointConfig::default() };
    Endpoint::client_on((Ipv4Addr::LOCALHOST, 0).into(), tls, cfg).expect("a client endpoint")
}

/// Sends `req` to `node`'s node-to-node endpoint as a peer would. The outer error is the
/// transport's; the inner result is the node's answer.
pub async fn peer_call(
    endpoint: &Endpoint,
    node: &Node,
    req: &PeerRequest,
) -> Result<Result<PeerReply, PeerError>, NetError> {
    let body = hsu_model::encode_record(req).expect("a peer request encodes");
    let server_name = node_server_name(node.id());
    let bytes = endpoint.call(node.state().listen, &server_name, METHOD_PEER, &body, DEADLINE).await?;
    Ok(hsu_model::decode_record(&bytes).expect("a node's answer decodes"))
}

/// The request a node forwards to the leader to write `key`.
pub fn put_request(key: &[u8], value: Vec<u8>) -> PeerRequest {
    PeerRequest::Propose {
        req: Request::Txn(Txn { success: vec![Op::Put { key: key.to_vec(), value, lease: 0 }], ..Txn::default() }),
        id: None,
    }
}
