//! The command line: every command, subcommand and flag `hsu` takes, as clap types, and the
//! small parsers of flag values (durations, labels).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use hsu::Tuning;

use crate::output::Format;

#[derive(Parser)]
#[command(name = "hsu", version, about = "HSU: a lightweight orchestrator for edge, embedded and ML-serving fleets")]
pub(crate) struct Cli {
    /// Client config (endpoint and credentials); default $HSU_CONFIG, then ~/.hsu/config.
    #[arg(long, global = true)]
    pub(crate) config: Option<PathBuf>,
    /// HOST:PORT of the API to talk to, instead of the one in the config.
    #[arg(long, global = true)]
    pub(crate) endpoint: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table")]
    pub(crate) output: Format,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
    /// A deployment in detail (revisions, events, instances, placement problems), a job, or a
    /// service with its endpoints.
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
pub(crate) enum GetWhat {
    #[value(alias = "deployment", alias = "deploy")]
    Deployments,
    #[value(alias = "instance", alias = "inst")]
    Instances,
    #[value(alias = "node")]
    Nodes,
    #[value(alias = "job")]
    Jobs,
    #[value(alias = "service", alias = "svc")]
    Services,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum DescribeWhat {
    #[value(alias = "deployments", alias = "deploy")]
    Deployment,
    #[value(alias = "jobs")]
    Job,
    #[value(alias = "services", alias = "svc")]
    Service,
}

#[derive(Subcommand)]
pub(crate) enum JobCommand {
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
pub(crate) enum RolloutCommand {
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
pub(crate) struct Timing {
    /// Raft heartbeat interval. openraft also gives each append this long to complete, the
    /// follower's fsync included: raise it on slow disks.
    #[arg(long, value_parser = duration, default_value = "150ms")]
    pub(crate) heartbeat: Duration,
    /// Raft election timeout T: randomized between T and 2T, and openraft adds a leader lease of
    /// 2T, so a follower campaigns after 3T-4T without hearing from a leader.
    #[arg(long, value_parser = duration, default_value = "250ms")]
    pub(crate) election_timeout: Duration,
    /// A label of this node for node selectors and constraints: KEY=VALUE, repeatable.
    #[arg(long = "label", value_parser = label)]
    pub(crate) labels: Vec<(String, String)>,
    /// A node that has not reported to the master for this long is down and its instances are
    /// placed elsewhere.
    #[arg(long, value_parser = duration, default_value = "10s")]
    pub(crate) node_grace: Duration,
    /// Acknowledge writes before they are durable (no fsync of the store). Loses acknowledged
    /// writes on a power cut: only to show that the power-loss test catches exactly that.
    #[arg(long, hide = true)]
    pub(crate) unsafe_no_fsync: bool,
}

pub(crate) fn label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("label {s:?}: expected KEY=VALUE"))?;
    hsu_model::deploy::LabelKey::new(k)?;
    Ok((k.to_string(), v.to_string()))
}

impl Timing {
    pub(crate) fn tuning(&self) -> Tuning {
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
pub(crate) struct Place {
    #[arg(long)]
    pub(crate) data_dir: PathBuf,
    /// Node-to-node (QUIC) address.
    #[arg(long)]
    pub(crate) listen: SocketAddr,
    /// gRPC API address.
    #[arg(long)]
    pub(crate) api: SocketAddr,
    /// Node name (default: the host name).
    #[arg(long)]
    pub(crate) name: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum AgentCommand {
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
pub(crate) enum OnExitArg {
    Keep,
    Stop,
}

#[derive(Subcommand)]
pub(crate) enum NodeCommand {
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
pub(crate) enum Role {
    Auto,
    Voter,
    Learner,
    /// Not in Raft: runs units only (no replica of the store, no CA key, no API).
    Agent,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ApiRoleArg {
    Admin,
    ReadOnly,
}

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
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
pub(crate) enum KvCommand {
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

pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    hsu_model::duration::parse_duration(s)
}
