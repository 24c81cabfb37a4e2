//! `hsu`: starts nodes (`hsu node init|join|run`) or a standalone agent (`hsu agent run`) and
//! talks to a cluster's gRPC API. Thin: the work is done by the `hsu` and `hsu-agent` crates;
//! this file parses arguments and prints answers. Errors go to
//! stderr with exit code 1 (2 for bad usage).

mod deploy;
mod dev;
mod output;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::{Parser, Subcommand, ValueEnum};
use hsu::bootstrap::{self, InitOptions, JoinOptions};
use hsu::{Node, Tuning};
use hsu_proto::v1 as pb;
use hsu_sdk::client::{self, ClientConfig};
use output::{print, table, Format};
use serde::Serialize;

#[derive(Parser)]
#[command(name = "hsu", version, about = "HSU: a lightweight orchestrator for edge, embedded and ML-serving fleets")]
struct Cli {
    /// Client config (endpoint and credentials); default $HSU_CONFIG, then ~/.hsu/config.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// HOST:PORT of the API to talk to, instead of the one in the config.
    #[arg(long, global = true)]
    endpoint: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table")]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, join, run and manage nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Join tokens and API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The node agent on its own: supervise the units of a YAML file on this machine.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Leader, term, commit index and members.
    Status,
    /// Read and write the cluster's key-value store.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Apply deployments from YAML files (all documents, or none when one is invalid).
    Apply {
        /// A file, or a directory of *.yaml/*.yml files; repeatable.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Check and say what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List deployments, instances or nodes.
    Get {
        #[arg(value_enum)]
        what: GetWhat,
        /// One deployment (for instances: the deployment's instances).
        name: Option<String>,
        /// Namespace (default: every namespace).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// A deployment in detail: revisions, events, instances and placement problems.
    Describe {
        #[arg(value_enum)]
        what: DescribeWhat,
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Delete a deployment; its instances are stopped.
    Delete {
        #[arg(value_enum)]
        what: DescribeWhat,
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Follow and steer rollouts.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Run applied jobs again, or with parameters.
    #[command(subcommand)]
    Job(JobCommand),
    /// Print the logs of a deployment's instances (deployment/NAME) or of one instance (NAME),
    /// from whichever nodes run them; each line starts with its instance.
    Logs {
        /// deployment/NAME or an instance's name.
        target: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Keep printing what they write next (Ctrl-C to stop).
        #[arg(short = 'f', long)]
        follow: bool,
        /// Lines from the end of each log to start with (0: everything).
        #[arg(long, default_value_t = 10)]
        tail: u32,
        /// stderr instead of stdout.
        #[arg(long)]
        stderr: bool,
    },
    /// Try HSU on this machine: a single-node cluster in a temporary directory, running the
    /// example deployments of deploy/examples/hello.yaml. Ctrl-C stops it and removes everything.
    Dev {
        /// gRPC API address.
        #[arg(long, default_value = "127.0.0.1:7001")]
        api: SocketAddr,
        /// Node-to-node (QUIC) address.
        #[arg(long, default_value = "127.0.0.1:7000")]
        listen: SocketAddr,
        /// Apply this file (or directory) instead of the built-in example.
        #[arg(short = 'f', long = "filename")]
        file: Option<PathBuf>,
        /// Keep the data directory (and the units' logs) after exit.
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum GetWhat {
    #[value(alias = "deployment", alias = "deploy")]
    Deployments,
    #[value(alias = "instance", alias = "inst")]
    Instances,
    #[value(alias = "node")]
    Nodes,
    #[value(alias = "job")]
    Jobs,
}

#[derive(Clone, Copy, ValueEnum)]
enum DescribeWhat {
    #[value(alias = "deployments", alias = "deploy")]
    Deployment,
    #[value(alias = "jobs")]
    Job,
}

#[derive(Subcommand)]
enum JobCommand {
    /// Start a new run of an applied job and wait for it to end: exit 0 when it succeeded.
    Run {
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Give up waiting after this long (exit 1; the run goes on).
        #[arg(long, value_parser = duration, default_value = "10m")]
        timeout: Duration,
    },
    /// Start a new run with parameters added to its units' environment; prints the run's number.
    Dispatch {
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// KEY=VALUE, repeatable (names may not start with HSU_).
        #[arg(long = "env", value_parser = label)]
        env: Vec<(String, String)>,
        /// Wait for the run to end, as `job run` does.
        #[arg(long)]
        wait: bool,
        #[arg(long, value_parser = duration, default_value = "10m")]
        timeout: Duration,
    },
}

#[derive(Subcommand)]
enum RolloutCommand {
    /// Follow the rollout until it completes (exit 0) or fails or is rolled back (exit 1).
    Status {
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Give up after this long (exit 1).
        #[arg(long, value_parser = duration, default_value = "10m")]
        timeout: Duration,
    },
    /// The kept revisions.
    History {
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Go back to the previous revision, or to --to-revision.
    Undo {
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[arg(long)]
        to_revision: Option<u64>,
    },
    /// Take no more rollout steps until resumed.
    Pause {
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Go on with a paused rollout (also after a canary step).
    Resume {
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
}

#[derive(clap::Args)]
struct Timing {
    /// Raft heartbeat interval. openraft also gives each append this long to complete, the
    /// follower's fsync included: raise it on slow disks.
    #[arg(long, value_parser = duration, default_value = "150ms")]
    heartbeat: Duration,
    /// Raft election timeout T: randomized between T and 2T, and openraft adds a leader lease of
    /// 2T, so a follower campaigns after 3T-4T without hearing from a leader.
    #[arg(long, value_parser = duration, default_value = "250ms")]
    election_timeout: Duration,
    /// A label of this node for node selectors and constraints: KEY=VALUE, repeatable.
    #[arg(long = "label", value_parser = label)]
    labels: Vec<(String, String)>,
    /// A node that has not reported to the master for this long is down and its instances are
    /// placed elsewhere.
    #[arg(long, value_parser = duration, default_value = "10s")]
    node_grace: Duration,
    /// Acknowledge writes before they are durable (no fsync of the store). Loses acknowledged
    /// writes on a power cut: only to show that the power-loss test catches exactly that.
    #[arg(long, hide = true)]
    unsafe_no_fsync: bool,
}

fn label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("label {s:?}: expected KEY=VALUE"))?;
    hsu_model::deploy::LabelKey::new(k)?;
    Ok((k.to_string(), v.to_string()))
}

impl Timing {
    fn tuning(&self) -> Tuning {
        Tuning {
            labels: self.labels.iter().cloned().collect(),
            node_grace: self.node_grace,
            heartbeat_interval: self.heartbeat,
            election_timeout_min: self.election_timeout,
            election_timeout_max: self.election_timeout * 2,
            fsync: !self.unsafe_no_fsync,
            ..Tuning::default()
        }
    }
}

/// Where a new node keeps its data and listens, and what it is called.
#[derive(clap::Args)]
struct Place {
    #[arg(long)]
    data_dir: PathBuf,
    /// Node-to-node (QUIC) address.
    #[arg(long)]
    listen: SocketAddr,
    /// gRPC API address.
    #[arg(long)]
    api: SocketAddr,
    /// Node name (default: the host name).
    #[arg(long)]
    name: Option<String>,
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Supervise the units of FILE (or of every *.yaml/*.yml in a directory) in the foreground.
    /// SIGHUP re-reads the file and applies the difference; SIGTERM/SIGINT stop the units and exit.
    Run {
        /// A units file, or a directory of them.
        #[arg(long)]
        units: PathBuf,
        /// Where the agent keeps its records and the units' logs.
        #[arg(long)]
        data_dir: PathBuf,
        /// What happens to running units when the agent exits: `stop` them (default) or `keep`
        /// them running for the next agent to adopt.
        #[arg(long, value_enum, default_value = "stop")]
        on_exit: OnExitArg,
    },
    /// The units of the agent running with this data directory.
    Status {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Re-read the units file and apply the difference (as SIGHUP does); prints what changed.
    Reload {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// This machine's capacity and use: CPU, memory, and the data directory's disk.
    Resources {
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum OnExitArg {
    Keep,
    Stop,
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Create a cluster with this machine as its first node, and run it in the foreground.
    Init {
        #[command(flatten)]
        place: Place,
        #[arg(long, default_value = "hsu")]
        cluster_name: String,
        /// Voters that `--role auto` joins aim for (3 or 5).
        #[arg(long, default_value_t = 3)]
        voters: u32,
        #[command(flatten)]
        timing: Timing,
    },
    /// Enroll this machine into a cluster with a join token, and run it in the foreground.
    Join {
        /// HOST:PORT of any node's API.
        server: String,
        /// The join token. Prefer $HSU_TOKEN or --token-file: a command line is visible to every
        /// user of the machine in `ps`.
        #[arg(long, env = "HSU_TOKEN", hide_env_values = true, conflicts_with = "token_file")]
        token: Option<String>,
        /// A file holding the join token.
        #[arg(long)]
        token_file: Option<PathBuf>,
        #[command(flatten)]
        place: Place,
        #[arg(long, value_enum, default_value = "auto")]
        role: Role,
        #[arg(long, default_value_t = 3)]
        voters: u32,
        #[command(flatten)]
        timing: Timing,
    },
    /// Restart a node from its data directory.
    Run {
        #[arg(long)]
        data_dir: PathBuf,
        /// A new node-to-node address (the node keeps its identity).
        #[arg(long)]
        listen: Option<SocketAddr>,
        #[arg(long)]
        api: Option<SocketAddr>,
        #[command(flatten)]
        timing: Timing,
    },
    /// The nodes of the cluster.
    List,
    /// The node at the endpoint leaves the cluster gracefully and stops. With --data-dir: the
    /// agent-only node of that data directory leaves (it has no API to ask).
    Leave {
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Remove a node by force and revoke its certificate.
    Remove { id: u64 },
}

#[derive(Clone, Copy, ValueEnum)]
enum Role {
    Auto,
    Voter,
    Learner,
    /// Not in Raft: runs units only (no replica of the store, no CA key, no API).
    Agent,
}

#[derive(Clone, Copy, ValueEnum)]
enum ApiRoleArg {
    Admin,
    ReadOnly,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a join token (default) or, with --api, a bearer token for API clients.
    Create {
        /// Validity, e.g. 1h, 24h, 7d (join tokens default to 24h; API tokens do not expire).
        #[arg(long, value_parser = duration)]
        ttl: Option<Duration>,
        /// How many joins the token allows (default unlimited).
        #[arg(long)]
        uses: Option<u32>,
        /// Make an API token instead of a join token.
        #[arg(long)]
        api: bool,
        /// The role of an API token.
        #[arg(long, value_enum, default_value = "admin")]
        role: ApiRoleArg,
        #[arg(long, default_value = "")]
        description: String,
    },
    List,
    Revoke {
        id: String,
    },
}

#[derive(Subcommand)]
enum KvCommand {
    Put {
        key: String,
        value: String,
        /// Only if the key's mod revision is this (0: only if the key does not exist).
        #[arg(long)]
        if_revision: Option<u64>,
        #[arg(long, default_value_t = 0)]
        lease: u64,
    },
    Get {
        key: String,
        #[arg(long)]
        prefix: bool,
        /// Answer from the serving node's own state (may be stale) instead of a linearizable read.
        #[arg(long)]
        local: bool,
        #[arg(long)]
        keys_only: bool,
    },
    Del {
        key: String,
        #[arg(long)]
        prefix: bool,
    },
    Watch {
        key: String,
        #[arg(long)]
        prefix: bool,
        /// First revision to show (default: changes from now on).
        #[arg(long, default_value_t = 0)]
        from_revision: u64,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
}

fn duration(s: &str) -> Result<Duration, String> {
    hsu_model::duration::parse_duration(s)
}

fn main() {
    // Fault-injection builds only: reads FAILPOINTS (e.g. `quic-send=return(50)`) and keeps the
    // configured failpoints until the process exits.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    let node_cmd = matches!(
        cli.command,
        Command::Node(NodeCommand::Init { .. } | NodeCommand::Join { .. } | NodeCommand::Run { .. })
    );
    let agent_run = matches!(cli.command, Command::Agent(AgentCommand::Run { .. }));
    let default_filter = if node_cmd || agent_run { "info,openraft=warn,quinn=warn,sled=warn" } else { "warn" };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HSU_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .try_init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Node(NodeCommand::Init {
            place: Place { data_dir, listen, api, name },
            cluster_name,
            voters,
            timing,
        }) => {
            let opts = InitOptions {
                data_dir: data_dir.clone(),
                listen,
                api,
                name,
                cluster_name,
                voters,
                tuning: timing.tuning(),
            };
            let init = bootstrap::init(opts).await?;
            println!("cluster created; this node is {} (id 1)", init.node.name());
            println!("admin config: {}", data_dir.join("admin.conf").display());
            // The token is a credential: it goes to a file only this user can read, never to the
            // output of a long-running server (which ends up in logs).
            println!("join token: in {} (`hsu token create` makes more)", data_dir.join("join-token").display());
            foreground(init.node).await
        }
        Command::Node(NodeCommand::Join {
            server,
            token,
            token_file,
            place: Place { data_dir, listen, api, name },
            role,
            voters,
            timing,
        }) => {
            let token = match (token, token_file) {
                (Some(t), _) => t,
                (None, Some(path)) => std::fs::read_to_string(&path)
                    .map_err(|e| anyhow!("--token-file {}: {e}", path.display()))?
                    .trim()
                    .to_string(),
                (None, None) => bail!("a join token is needed: --token-file FILE, $HSU_TOKEN or --token"),
            };
            let role = match role {
                Role::Auto => pb::Role::Auto,
                Role::Voter => pb::Role::Voter,
                Role::Learner => pb::Role::Learner,
                Role::Agent => pb::Role::Agent,
            };
            let opts =
                JoinOptions { server, token, data_dir, listen, api, name, role, voters, tuning: timing.tuning() };
            if role == pb::Role::Agent {
                let node = bootstrap::join_agent(opts, |step| eprintln!("join: {step}")).await?;
                println!("joined as an agent-only node; this node is {} (id {})", node.name(), node.id());
                return foreground_agent(node).await;
            }
            let node = bootstrap::join(opts, |step| eprintln!("join: {step}")).await?;
            println!("joined; this node is {} (id {})", node.name(), node.id());
            foreground(node).await
        }
        Command::Node(NodeCommand::Run { data_dir, listen, api, timing }) => {
            if bootstrap::is_agent_only(&data_dir)? {
                let node = bootstrap::run_agent(data_dir, listen, timing.tuning()).await?;
                println!("running agent-only node {} (id {})", node.name(), node.id());
                return foreground_agent(node).await;
            }
            let node = bootstrap::run(data_dir, listen, api, timing.tuning()).await?;
            println!("running node {} (id {})", node.name(), node.id());
            foreground(node).await
        }
        Command::Node(NodeCommand::Leave { data_dir: Some(data_dir) }) => {
            if !bootstrap::is_agent_only(&data_dir)? {
                bail!(
                    "{} holds a server node: make it leave through its API (`hsu node leave --endpoint ADDR`)",
                    data_dir.display()
                );
            }
            let id = hsu::agent_node::leave(&hsu::datadir::DataDir::new(&data_dir)).await?;
            print(cli.output, &serde_json::json!({"left": id}), |_| {
                format!("agent-only node {id} left the cluster; a running node of this data directory stops\n")
            })
        }
        Command::Agent(cmd) => agent_command(cmd, cli.output).await,
        Command::Dev { api, listen, file, keep } => dev::run(api, listen, file, keep).await,
        command @ (Command::Apply { .. }
        | Command::Get { what: GetWhat::Deployments | GetWhat::Instances | GetWhat::Jobs, .. }
        | Command::Describe { .. }
        | Command::Delete { .. }
        | Command::Rollout(_)
        | Command::Job(_)
        | Command::Logs { .. }) => {
            deploy::command(&load_config(&cli.config)?, cli.endpoint.as_deref(), cli.output, command).await
        }
        command => client_command(&cli.config, cli.endpoint.as_deref(), cli.output, command).await,
    }
}

async fn agent_command(cmd: AgentCommand, output: Format) -> anyhow::Result<()> {
    use hsu_agent::standalone::{self, Reply, Request};
    let ask = |data_dir: PathBuf, req: Request| async move {
        match standalone::request(&data_dir, &req).await.map_err(|e| anyhow!(e))? {
            Reply::Error(e) => Err(anyhow!(e)),
            reply => Ok(reply),
        }
    };
    match cmd {
        AgentCommand::Run { units, data_dir, on_exit } => {
            let on_exit = match on_exit {
                OnExitArg::Keep => hsu_agent::OnExit::Keep,
                OnExitArg::Stop => hsu_agent::OnExit::Stop,
            };
            let opts = standalone::Options { units, data_dir, on_exit };
            standalone::run(opts, |r| eprintln!("agent: {}", describe_apply(r))).await.map_err(|e| anyhow!(e))
        }
        AgentCommand::Status { data_dir } => {
            let Reply::Status(units) = ask(data_dir, Request::Status).await? else { bail!("unexpected answer") };
            print(output, &units, |units| {
                let rows = units
                    .iter()
                    .map(|u| {
                        vec![
                            u.name.clone(),
                            serde_json::to_value(u.state)
                                .ok()
                                .and_then(|v| v.as_str().map(String::from))
                                .unwrap_or_default(),
                            u.pid.map_or("-".into(), |p| p.to_string()),
                            u.restarts.to_string(),
                            u.last_exit.map_or("-".into(), |e| e.to_string()),
                            u.rss_bytes.map_or("-".into(), |b| format!("{:.1}MiB", b as f64 / 1048576.0)),
                            u.cpu_millicores.map_or("-".into(), |m| format!("{m}m")),
                            if u.ready { "yes".into() } else { "no".into() },
                            u.message.clone().or_else(|| u.probe_failure.clone()).unwrap_or_default(),
                        ]
                    })
                    .collect();
                table(&["NAME", "STATE", "PID", "RESTARTS", "LAST EXIT", "RSS", "CPU", "READY", "MESSAGE"], rows)
            })
        }
        AgentCommand::Resources { data_dir } => {
            let Reply::Resources(r) = ask(data_dir, Request::Resources).await? else { bail!("unexpected answer") };
            let gib = |b: u64| format!("{:.1}GiB", b as f64 / (1u64 << 30) as f64);
            print(output, &r, |r| {
                table(
                    &["CPU CORES", "CPU USED", "MEMORY", "MEMORY AVAILABLE", "DISK", "DISK AVAILABLE"],
                    vec![vec![
                        r.cpu_cores.to_string(),
                        format!("{:.0}%", r.cpu_used_percent),
                        gib(r.memory_total_bytes),
                        gib(r.memory_available_bytes),
                        gib(r.disk_total_bytes),
                        gib(r.disk_available_bytes),
                    ]],
                )
            })
        }
        AgentCommand::Reload { data_dir } => {
            let Reply::Reloaded(report) = ask(data_dir, Request::Reload).await? else { bail!("unexpected answer") };
            print(output, &report, |r| format!("{}\n", describe_apply(r)))
        }
    }
}

fn describe_apply(r: &hsu_agent::ApplyReport) -> String {
    let part = |what: &str, v: &[String]| (!v.is_empty()).then(|| format!("{what} {}", v.join(", ")));
    let parts: Vec<String> = [
        part("started", &r.started),
        part("adopted", &r.adopted),
        part("replaced", &r.replaced),
        part("stopped", &r.stopped),
        part("unchanged", &r.unchanged),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() {
        "no units".into()
    } else {
        parts.join("; ")
    }
}

/// Runs a node until it is asked to stop (SIGINT, SIGTERM, or `hsu node leave`).
/// Waits for Ctrl-C, SIGTERM, or `stopped` (the node stopping by itself, after `leave`).
async fn until_signal(stopped: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
        _ = term.recv() => tracing::info!("terminated; stopping"),
        _ = stopped => {}
    }
    Ok(())
}

async fn foreground_agent(node: hsu::agent_node::AgentNode) -> anyhow::Result<()> {
    until_signal(node.stopped()).await?;
    node.shutdown().await;
    departed(node.departure())
}

pub(crate) async fn foreground(node: Node) -> anyhow::Result<()> {
    until_signal(node.stopped()).await?;
    node.shutdown().await;
    departed(node.departure())
}

/// A node that left exits 0; one that was removed fails, so a supervisor does not take the
/// exit for a clean stop (and `hsu node run` on its data directory says it was removed).
fn departed(departure: Option<hsu::removal::Departure>) -> anyhow::Result<()> {
    match departure {
        Some(hsu::removal::Departure::Removed(reason)) => bail!("this node was removed from the cluster: {reason}"),
        _ => Ok(()),
    }
}

fn load_config(path: &Option<PathBuf>) -> anyhow::Result<ClientConfig> {
    let path = match path {
        Some(p) => p.clone(),
        None => match std::env::var_os("HSU_CONFIG") {
            Some(p) => PathBuf::from(p),
            None => {
                let home =
                    std::env::var_os("HOME").ok_or_else(|| anyhow!("no --config, no $HSU_CONFIG and no $HOME"))?;
                PathBuf::from(home).join(".hsu/config")
            }
        },
    };
    if !path.exists() {
        bail!(
            "no client config at {}: pass --config FILE or set $HSU_CONFIG (`hsu node init` writes DATA_DIR/admin.conf)",
            path.display()
        );
    }
    Ok(ClientConfig::load(&path)?)
}

/// A gRPC status as an error message: what went wrong, in the server's words.
fn status(s: tonic::Status) -> anyhow::Error {
    anyhow!("{}: {}", code_name(s.code()), s.message())
}

fn code_name(code: tonic::Code) -> &'static str {
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
struct KvOut {
    key: String,
    value: String,
    create_revision: u64,
    mod_revision: u64,
    version: u64,
    lease: u64,
}

fn kv_out(kv: pb::KeyValue) -> KvOut {
    KvOut {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        value: String::from_utf8_lossy(&kv.value).into_owned(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
    }
}

async fn client_command(
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
            let value = serde_json::json!({
                "leader": s.leader,
                "leader_id": s.leader_id,
                "term": s.term,
                "commit_index": s.commit_index,
                "applied_index": s.applied_index,
                "cluster_name": s.cluster_name,
                "served_by": s.served_by,
                "members": s.members.iter().map(|m| serde_json::json!({
                    "id": m.id, "name": m.name, "role": m.role, "address": m.address,
                    "api_address": m.api_address, "healthy": m.healthy, "matched_index": m.matched_index,
                })).collect::<Vec<_>>(),
            });
            print(out, &value, |_| {
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
            let value: Vec<_> = nodes
                .iter()
                .map(|n| {
                    serde_json::json!({"id": n.id, "name": n.name, "role": n.role, "address": n.address,
                        "api_address": n.api_address, "version": n.version, "joined_unix_ms": n.joined_unix_ms,
                        "ready": n.ready, "cpu_millis": n.cpu_millis, "memory_bytes": n.memory_bytes,
                        "labels": n.labels, "units": n.units, "last_report_ms": n.last_report_ms})
                })
                .collect();
            print(out, &value, |_| {
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
            let value = serde_json::json!({"token": r.token, "id": r.id, "expires_unix_ms": r.expires_unix_ms});
            print(out, &value, |_| format!("{}\n", r.token))
        }
        Command::Token(TokenCommand::List) => {
            let tokens = cluster.list_tokens(pb::ListTokensRequest {}).await.map_err(status)?.into_inner().tokens;
            let kind = |t: &pb::TokenInfo| if t.kind == pb::TokenKind::Api as i32 { "api" } else { "join" };
            let role = |t: &pb::TokenInfo| if t.role == pb::ApiRole::ReadOnly as i32 { "read-only" } else { "admin" };
            let value: Vec<_> = tokens
                .iter()
                .map(|t| {
                    serde_json::json!({"id": t.id, "kind": kind(t), "role": role(t), "created_unix_ms": t.created_unix_ms,
                        "expires_unix_ms": t.expires_unix_ms, "uses_left": t.uses_left, "revoked": t.revoked,
                        "description": t.description})
                })
                .collect();
            print(out, &value, |_| {
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
