//! The two 3-member clusters under test, each started from its own binary on 127.0.0.1 ports,
//! and the clients that talk to them through their own gRPC APIs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::stream::{FuturesUnordered, StreamExt};
use hsu_proto::v1 as pb;
use hsu_sdk::client::ClientConfig;
use tokio::time::{sleep, timeout};
use tonic::transport::Channel;

use crate::etcdpb;
use crate::procs::{free_addr, Proc};

/// How long one status call or one connect may take before the member counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a client needs to reach each member; cheap to clone into client tasks.
#[derive(Clone)]
pub enum Endpoints {
    Hsu { cfg: ClientConfig, apis: Vec<SocketAddr> },
    Etcd { clients: Vec<SocketAddr> },
}

impl Endpoints {
    pub fn len(&self) -> usize {
        match self {
            Endpoints::Hsu { apis, .. } => apis.len(),
            Endpoints::Etcd { clients } => clients.len(),
        }
    }

    /// The member that reports itself as the leader (HSU: `Cluster/Status` with `leader_id` equal
    /// to `served_by`; etcd: `Maintenance/Status` with `leader` equal to its own member id).
    /// A follower that still believes in a dead leader does not count: only a live leader can
    /// say that it leads. Every member is asked at once and asked again 10 ms after each answer
    /// (an HSU follower's status waits for a leader), until one says it leads or 2 s have passed.
    pub async fn leader(&self) -> Option<usize> {
        let deadline = Instant::now() + Duration::from_secs(2);
        let probe = |i: usize, pause: Duration| async move {
            sleep(pause).await;
            (i, timeout(PROBE_TIMEOUT, self.is_leader(i)).await.is_ok_and(|r| r.unwrap_or(false)))
        };
        let mut probes: FuturesUnordered<_> = (0..self.len()).map(|i| probe(i, Duration::ZERO)).collect();
        while let Some((i, leads)) = probes.next().await {
            if leads {
                return Some(i);
            }
            if Instant::now() < deadline {
                probes.push(probe(i, Duration::from_millis(10)));
            }
        }
        None
    }

    async fn is_leader(&self, i: usize) -> Result<bool, String> {
        match self {
            Endpoints::Hsu { .. } => {
                let s = self.hsu_status(i).await?;
                Ok(s.leader_id != 0 && s.leader_id == s.served_by)
            }
            Endpoints::Etcd { clients } => {
                let mut c = etcdpb::maintenance_client::MaintenanceClient::new(etcd_channel(clients[i]).await?);
                let s = timeout(PROBE_TIMEOUT, c.status(etcdpb::StatusRequest {}))
                    .await
                    .map_err(|_| "status timed out".to_string())?
                    .map_err(|s| s.message().to_string())?
                    .into_inner();
                Ok(s.leader != 0 && s.header.is_some_and(|h| h.member_id == s.leader))
            }
        }
    }

    async fn hsu_status(&self, i: usize) -> Result<pb::StatusResponse, String> {
        let Endpoints::Hsu { cfg, apis } = self else { return Err("not an HSU cluster".into()) };
        let endpoint = apis[i].to_string();
        let (mut cluster, _) = timeout(PROBE_TIMEOUT, hsu_sdk::client::connect(cfg, Some(&endpoint)))
            .await
            .map_err(|_| format!("connecting to {endpoint} timed out"))?
            .map_err(|e| e.to_string())?;
        Ok(timeout(PROBE_TIMEOUT, cluster.status(pb::StatusRequest {}))
            .await
            .map_err(|_| format!("status of {endpoint} timed out"))?
            .map_err(|s| s.message().to_string())?
            .into_inner())
    }

    /// A new client connection (its own HTTP/2 connection) to member `i`.
    pub async fn connect(&self, i: usize) -> Result<Conn, String> {
        match self {
            Endpoints::Hsu { cfg, apis } => {
                let endpoint = apis[i].to_string();
                let (_, kv) = timeout(PROBE_TIMEOUT * 5, hsu_sdk::client::connect(cfg, Some(&endpoint)))
                    .await
                    .map_err(|_| format!("connecting to {endpoint} timed out"))?
                    .map_err(|e| e.to_string())?;
                Ok(Conn::Hsu(kv))
            }
            Endpoints::Etcd { clients } => {
                Ok(Conn::Etcd(etcdpb::kv_client::KvClient::new(etcd_channel(clients[i]).await?)))
            }
        }
    }

    /// Every member answers and the cluster is whole: HSU's leader reports all three members
    /// healthy; each etcd member serves a linearizable read.
    async fn healthy(&self) -> Result<(), String> {
        match self {
            Endpoints::Hsu { apis, .. } => {
                let mut leader_view = None;
                for (i, api) in apis.iter().enumerate() {
                    let s = self.hsu_status(i).await.map_err(|e| format!("node {api}: {e}"))?;
                    if s.leader_id != 0 && s.leader_id == s.served_by {
                        leader_view = Some(s);
                    }
                }
                let s = leader_view.ok_or("no node reports itself as the leader")?;
                let voters = s.members.iter().filter(|m| m.role == "voter").count();
                let unhealthy: Vec<_> = s.members.iter().filter(|m| !m.healthy).map(|m| m.name.clone()).collect();
                if voters == apis.len() && unhealthy.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{voters} voters, not healthy: {unhealthy:?}"))
                }
            }
            Endpoints::Etcd { clients } => {
                for (i, addr) in clients.iter().enumerate() {
                    let mut c = self.connect(i).await?;
                    timeout(PROBE_TIMEOUT, c.get(b"hsu-bench/health".to_vec(), false))
                        .await
                        .map_err(|_| format!("member {addr}: a read timed out"))?
                        .map_err(|e| format!("member {addr}: {e}"))?;
                }
                Ok(())
            }
        }
    }
}

async fn etcd_channel(addr: SocketAddr) -> Result<Channel, String> {
    let endpoint = Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(PROBE_TIMEOUT)
        .timeout(Duration::from_secs(10));
    timeout(PROBE_TIMEOUT * 2, endpoint.connect())
        .await
        .map_err(|_| format!("connecting to {addr} timed out"))?
        .map_err(|e| format!("cannot connect to {addr}: {}", hsu_sdk::client::error_chain(&e)))
}

/// One client connection of either system.
pub enum Conn {
    Hsu(hsu_sdk::client::Kv),
    Etcd(etcdpb::kv_client::KvClient<Channel>),
}

impl Conn {
    pub async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), String> {
        match self {
            Conn::Hsu(kv) => {
                kv.put(pb::PutRequest { key, value, lease: 0, prev_kv: false }).await.map_err(status_text)?;
            }
            Conn::Etcd(kv) => {
                kv.put(etcdpb::PutRequest { key, value, lease: 0, prev_kv: false }).await.map_err(status_text)?;
            }
        }
        Ok(())
    }

    /// A linearizable read of one key (HSU's default consistency; etcd's default,
    /// `serializable = false`). With `must_exist`, an absent key is an error.
    pub async fn get(&mut self, key: Vec<u8>, must_exist: bool) -> Result<(), String> {
        let found = match self {
            Conn::Hsu(kv) => {
                let req = pb::RangeRequest {
                    key,
                    prefix: false,
                    limit: 0,
                    consistency: pb::Consistency::Linearizable as i32,
                    keys_only: false,
                };
                kv.range(req).await.map_err(status_text)?.into_inner().kvs.len()
            }
            Conn::Etcd(kv) => {
                let req = etcdpb::RangeRequest { key, range_end: vec![], limit: 0, serializable: false };
                kv.range(req).await.map_err(status_text)?.into_inner().kvs.len()
            }
        };
        if must_exist && found == 0 {
            return Err("the key written before the reads is missing".into());
        }
        Ok(())
    }
}

fn status_text(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// Polls `check` every 100 ms until it succeeds, for at most `within`; the error says what was
/// awaited and the last answer.
pub async fn wait_for<F, Fut>(what: &str, within: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < within {
        match check().await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        sleep(Duration::from_millis(100)).await;
    }
    bail!("timed out after {within:?} waiting for {what}; last: {last}")
}

/// A 3-member cluster of either system: its processes and how to reach them.
pub struct Cluster {
    pub system: System,
    pub endpoints: Endpoints,
    members: Vec<Member>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum System {
    Hsu,
    Etcd,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Hsu => "HSU",
            System::Etcd => "etcd",
        }
    }
}

struct Member {
    proc: Proc,
    /// What restarts it after a kill: the program and its arguments.
    program: PathBuf,
    restart_args: Vec<String>,
    log: PathBuf,
}

const START_TIMEOUT: Duration = Duration::from_secs(60);

impl Cluster {
    /// `hsu node init` and two `hsu node join` with the join token, default timings, in `root`.
    pub async fn start_hsu(bin: &Path, root: &Path) -> anyhow::Result<Cluster> {
        let mut members = Vec::new();
        let mut apis = Vec::new();
        let n1 = root.join("n1");
        let (listen, api) = (free_addr()?, free_addr()?);
        let log = root.join("n1.log");
        let args = [
            "node",
            "init",
            "--name",
            "n1",
            "--data-dir",
            &p(&n1),
            "--listen",
            &listen.to_string(),
            "--api",
            &api.to_string(),
        ]
        .map(String::from);
        let mut proc = Proc::spawn("hsu n1", bin, &args, log.clone())?;
        // init writes admin.conf, then the token with its newline: a whole token means both are there.
        let token_file = n1.join("join-token");
        let conf_file = n1.join("admin.conf");
        let started = Instant::now();
        let token = loop {
            if let Ok(text) = std::fs::read_to_string(&token_file) {
                if text.ends_with('\n') {
                    break text.trim().to_string();
                }
            }
            proc.check_running()?;
            if started.elapsed() > START_TIMEOUT {
                bail!("hsu node init wrote no join token within {START_TIMEOUT:?}:\n{}", proc.log_tail(30));
            }
            sleep(Duration::from_millis(50)).await;
        };
        let cfg = ClientConfig::load(&conf_file)?;
        let run_args = |dir: &Path| ["node", "run", "--data-dir", &p(dir)].map(String::from).to_vec();
        members.push(Member { proc, program: bin.into(), restart_args: run_args(&n1), log });
        apis.push(api);
        for name in ["n2", "n3"] {
            let dir = root.join(name);
            let (listen, api2) = (free_addr()?, free_addr()?);
            let log = root.join(format!("{name}.log"));
            let args = [
                "node",
                "join",
                &api.to_string(),
                "--token",
                &token,
                "--name",
                name,
                "--data-dir",
                &p(&dir),
                "--listen",
                &listen.to_string(),
                "--api",
                &api2.to_string(),
            ]
            .map(String::from);
            let proc = Proc::spawn(&format!("hsu {name}"), bin, &args, log.clone())?;
            members.push(Member { proc, program: bin.into(), restart_args: run_args(&dir), log });
            apis.push(api2);
        }
        let mut cluster = Cluster { system: System::Hsu, endpoints: Endpoints::Hsu { cfg, apis }, members };
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    /// Three etcd members on 127.0.0.1 with etcd's default timings (heartbeat 100 ms, election
    /// timeout 1000 ms), as `--initial-cluster-state new`; a restart uses `existing`.
    pub async fn start_etcd(bin: &Path, root: &Path) -> anyhow::Result<Cluster> {
        let mut addrs = Vec::new();
        for n in 1..=3 {
            addrs.push((format!("m{n}"), free_addr()?, free_addr()?));
        }
        let initial_cluster =
            addrs.iter().map(|(name, _, peer)| format!("{name}=http://{peer}")).collect::<Vec<_>>().join(",");
        let mut members = Vec::new();
        let mut clients = Vec::new();
        for (name, client, peer) in &addrs {
            let args = |state: &str| {
                [
                    "--name",
                    name,
                    "--data-dir",
                    &p(&root.join(name)),
                    "--listen-client-urls",
                    &format!("http://{client}"),
                    "--advertise-client-urls",
                    &format!("http://{client}"),
                    "--listen-peer-urls",
                    &format!("http://{peer}"),
                    "--initial-advertise-peer-urls",
                    &format!("http://{peer}"),
                    "--initial-cluster",
                    &initial_cluster,
                    "--initial-cluster-state",
                    state,
                    "--initial-cluster-token",
                    "hsu-bench",
                ]
                .map(String::from)
                .to_vec()
            };
            let log = root.join(format!("{name}.log"));
            let proc = Proc::spawn(&format!("etcd {name}"), bin, &args("new"), log.clone())?;
            members.push(Member { proc, program: bin.into(), restart_args: args("existing"), log });
            clients.push(*client);
        }
        let mut cluster = Cluster { system: System::Etcd, endpoints: Endpoints::Etcd { clients }, members };
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    /// Waits until every member is up and one of them leads.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < START_TIMEOUT {
            for m in &mut self.members {
                m.proc.check_running()?;
            }
            match self.endpoints.healthy().await {
                Ok(()) if self.endpoints.leader().await.is_some() => return Ok(()),
                Ok(()) => last = "no leader".into(),
                Err(e) => last = e,
            }
            sleep(Duration::from_millis(200)).await;
        }
        let logs: Vec<String> =
            self.members.iter().map(|m| format!("--- {} ---\n{}", m.proc.name(), m.proc.log_tail(15))).collect();
        bail!(
            "the {} cluster was not ready within {START_TIMEOUT:?}; last: {last}\n{}",
            self.system.name(),
            logs.join("\n")
        )
    }

    /// The process ids of the running members.
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().filter_map(|m| m.proc.pid()).collect()
    }

    pub fn member_name(&self, i: usize) -> &str {
        self.members[i].proc.name()
    }

    /// kill -9 of member `i`.
    pub fn kill(&mut self, i: usize) {
        self.members[i].proc.kill9();
    }

    /// Starts member `i` again from its data directory (HSU: `hsu node run --data-dir`; etcd: the
    /// same flags with `--initial-cluster-state existing`).
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let m = &mut self.members[i];
        let name = m.proc.name().to_string();
        m.proc = Proc::spawn(&name, &m.program, &m.restart_args, m.log.clone())
            .with_context(|| format!("restarting {name}"))?;
        Ok(())
    }

    /// Waits until every member answers again and the cluster is whole.
    pub async fn wait_healthy(&mut self, within: Duration) -> anyhow::Result<()> {
        for m in &mut self.members {
            m.proc.check_running()?;
        }
        let endpoints = self.endpoints.clone();
        wait_for("every member healthy", within, || endpoints.healthy()).await
    }
}

fn p(path: &Path) -> String {
    path.display().to_string()
}
