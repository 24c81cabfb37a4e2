//! `hsu`: starts nodes (`hsu node init|join|run`) or a standalone agent (`hsu agent run`) and
//! talks to a cluster's gRPC API. Thin: the work is done by the `hsu` and `hsu-agent` crates;
//! this file parses arguments and prints answers. Errors go to
//! stderr with exit code 1 (2 for bad usage).

mod agent;
mod args;
mod cluster;
mod deploy;
mod dev;
mod output;
mod services;

use std::path::PathBuf;

use anyhow::{anyhow, bail};
use clap::Parser;
use hsu::bootstrap::{self, InitOptions, JoinOptions};
use hsu::Node;
use hsu_proto::v1 as pb;
use hsu_sdk::client::ClientConfig;
use output::print;

use agent::agent_command;
use args::*;
use cluster::{client_command, status};

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
            let id = hsu::AgentNode::leave(&hsu::DataDir::new(&data_dir)).await?;
            print(cli.output, &serde_json::json!({"left": id}), |_| {
                format!("agent-only node {id} left the cluster; a running node of this data directory stops\n")
            })
        }
        Command::Agent(cmd) => agent_command(cmd, cli.output).await,
        Command::Dev { api, listen, file, keep } => dev::run(api, listen, file, keep).await,
        Command::Get { what: GetWhat::Services, name, namespace } => {
            services::get(&load_config(&cli.config)?, cli.endpoint.as_deref(), cli.output, name, namespace).await
        }
        Command::Describe { what: DescribeWhat::Service, name, namespace } => {
            services::describe(&load_config(&cli.config)?, cli.endpoint.as_deref(), cli.output, name, namespace).await
        }
        Command::Delete { what: DescribeWhat::Service, name, .. } => {
            bail!("service {name} cannot be deleted by itself: it goes away with the deployment that provides it")
        }
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

async fn foreground_agent(node: hsu::AgentNode) -> anyhow::Result<()> {
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
fn departed(departure: Option<hsu::Departure>) -> anyhow::Result<()> {
    match departure {
        Some(hsu::Departure::Removed(reason)) => bail!("this node was removed from the cluster: {reason}"),
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
