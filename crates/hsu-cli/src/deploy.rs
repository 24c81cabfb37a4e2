//! `hsu apply|get|describe|delete|rollout`: thin calls of `hsu.v1.Deployments`, printed the way
//! kubectl prints them.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail};
use hsu_proto::v1 as pb;
use hsu_sdk::client::{self, ClientConfig};
use serde_json::json;

use crate::output::{print, table, Format};
use crate::{status, Command, DescribeWhat, GetWhat, JobCommand, RolloutCommand};

/// Reads FILE, or every *.yaml/*.yml of a directory (sorted), as (name, text).
pub fn read_sources(paths: &[PathBuf]) -> anyhow::Result<Vec<pb::SourceFile>> {
    let mut out = Vec::new();
    for p in paths {
        let mut files: Vec<PathBuf> = if p.is_dir() {
            std::fs::read_dir(p)
                .map_err(|e| anyhow!("{}: {e}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect()
        } else {
            vec![p.clone()]
        };
        files.sort();
        if files.is_empty() {
            bail!("{}: no *.yaml or *.yml files in this directory", p.display());
        }
        for f in files {
            let content = std::fs::read_to_string(&f).map_err(|e| anyhow!("{}: {e}", f.display()))?;
            out.push(pb::SourceFile { name: display(&f), content });
        }
    }
    Ok(out)
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

/// Polls run `run` of a job until it ends: Ok when it succeeded.
async fn wait_run(
    api: &mut client::Deployments,
    namespace: &str,
    name: &str,
    run: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let req = pb::ListRequest { namespace: namespace.into(), name: name.into() };
        let jobs = api.list_jobs(req).await.map_err(status)?.into_inner().jobs;
        let job = jobs.into_iter().next().ok_or_else(|| anyhow!("job {namespace}/{name} not found"))?;
        let r = job.runs.iter().find(|r| r.run == run).ok_or_else(|| anyhow!("run {run} of job {name} is gone"))?;
        let line =
            format!("run {run}: {} ({}/{} succeeded, {} failed)", r.phase, r.succeeded, job.completions, r.failed);
        if line != last {
            eprintln!("{line}");
            last = line;
        }
        match r.phase.as_str() {
            "Succeeded" => return Ok(()),
            "Failed" => bail!(
                "run {run} of job {namespace}/{name} failed: {} failures, more than the {} retries allowed ({})",
                r.failed,
                job.retries,
                job.message
            ),
            _ => {}
        }
        if !job.unplaced.is_empty() && tokio::time::Instant::now() >= deadline {
            bail!("timed out; instances cannot be placed: {}", job.unplaced);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?}; run {run} goes on");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn instances_table(list: &[pb::InstanceInfo]) -> String {
    let rows = list
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                i.deployment.clone(),
                i.revision.to_string(),
                i.node.clone(),
                i.state.clone(),
                if i.ready { "yes" } else { "no" }.into(),
                i.restarts.to_string(),
                i.message.clone(),
            ]
        })
        .collect();
    table(&["NAME", "DEPLOYMENT", "REVISION", "NODE", "STATE", "READY", "RESTARTS", "MESSAGE"], rows)
}

pub async fn command(cfg: &ClientConfig, endpoint: Option<&str>, out: Format, command: Command) -> anyhow::Result<()> {
    let mut api = client::connect_deployments(cfg, endpoint).await?;
    match command {
        Command::Apply { files, dry_run } => {
            let sources = read_sources(&files)?;
            let r = api.apply(pb::ApplyRequest { files: sources, dry_run }).await.map_err(status)?.into_inner();
            print(out, &r.objects, |_| {
                r.objects
                    .iter()
                    .map(|o| {
                        let dry = if dry_run { " (dry run)" } else { "" };
                        let at = match (o.kind.as_str(), o.revision) {
                            ("Job", 0) => "no run: dispatch-only".to_string(),
                            ("Job", n) => format!("run {n}"),
                            (_, n) => format!("revision {n}"),
                        };
                        format!("{}/{}/{} {}{dry} ({at})\n", o.kind.to_lowercase(), o.namespace, o.name, o.result)
                    })
                    .collect()
            })
        }
        Command::Get { what: GetWhat::Deployments, name, namespace } => {
            let req = pb::ListRequest { namespace: namespace.unwrap_or_default(), name: name.unwrap_or_default() };
            let list = api.list_deployments(req).await.map_err(status)?.into_inner().deployments;
            print(out, &list, |_| {
                let rows = list
                    .iter()
                    .map(|d| {
                        vec![
                            d.namespace.clone(),
                            d.name.clone(),
                            format!("{}/{}", d.ready, d.replicas),
                            d.up_to_date.to_string(),
                            d.available.to_string(),
                            d.revision.to_string(),
                            if d.paused { format!("{} (paused)", d.phase) } else { d.phase.clone() },
                        ]
                    })
                    .collect();
                table(&["NAMESPACE", "NAME", "READY", "UP-TO-DATE", "AVAILABLE", "REVISION", "PHASE"], rows)
            })
        }
        Command::Get { what: GetWhat::Instances, name, namespace } => {
            let req = pb::ListRequest { namespace: namespace.unwrap_or_default(), name: name.unwrap_or_default() };
            let list = api.list_instances(req).await.map_err(status)?.into_inner().instances;
            print(out, &list, |_| instances_table(&list))
        }
        Command::Get { what: GetWhat::Jobs, name, namespace } => {
            let req = pb::ListRequest { namespace: namespace.unwrap_or_default(), name: name.unwrap_or_default() };
            let list = api.list_jobs(req).await.map_err(status)?.into_inner().jobs;
            print(out, &list, |_| {
                let rows = list
                    .iter()
                    .map(|j| {
                        let last = j.runs.last();
                        vec![
                            j.namespace.clone(),
                            j.name.clone(),
                            last.map_or("-".into(), |r| r.run.to_string()),
                            last.map_or(if j.dispatch_only { "dispatch-only" } else { "-" }.into(), |r| {
                                r.phase.clone()
                            }),
                            last.map_or("-".into(), |r| format!("{}/{}", r.succeeded, j.completions)),
                            last.map_or("-".into(), |r| r.failed.to_string()),
                            if j.unplaced.is_empty() { j.message.clone() } else { j.unplaced.clone() },
                        ]
                    })
                    .collect();
                table(&["NAMESPACE", "NAME", "RUN", "PHASE", "SUCCEEDED", "FAILED", "MESSAGE"], rows)
            })
        }
        Command::Job(JobCommand::Run { name, namespace, timeout }) => {
            let req =
                pb::DispatchJobRequest { namespace: namespace.clone(), name: name.clone(), env: Default::default() };
            let run = api.dispatch_job(req).await.map_err(status)?.into_inner().run;
            eprintln!("job/{namespace}/{name}: run {run} started");
            wait_run(&mut api, &namespace, &name, run, timeout).await
        }
        Command::Job(JobCommand::Dispatch { name, namespace, env, wait, timeout }) => {
            let req = pb::DispatchJobRequest {
                namespace: namespace.clone(),
                name: name.clone(),
                env: env.into_iter().collect(),
            };
            let run = api.dispatch_job(req).await.map_err(status)?.into_inner().run;
            print(out, &json!({"job": name, "namespace": namespace, "run": run}), |_| {
                format!("job/{namespace}/{name}: run {run} started\n")
            })?;
            if wait {
                wait_run(&mut api, &namespace, &name, run, timeout).await?;
            }
            Ok(())
        }
        Command::Delete { what: DescribeWhat::Job, name, namespace } => {
            api.delete_job(pb::NameRequest { namespace: namespace.clone(), name: name.clone() })
                .await
                .map_err(status)?;
            print(out, &json!({"deleted": format!("job/{namespace}/{name}")}), |_| {
                format!("job/{namespace}/{name} deleted\n")
            })
        }
        Command::Describe { what: DescribeWhat::Job, name, namespace } => {
            let req = pb::ListRequest { namespace, name };
            let list = api.list_jobs(req).await.map_err(status)?.into_inner().jobs;
            print(out, &list, |_| serde_json::to_string_pretty(&list).unwrap_or_default() + "\n")
        }
        Command::Describe { what: DescribeWhat::Deployment, name, namespace } => {
            let d = api.describe(pb::NameRequest { namespace, name }).await.map_err(status)?.into_inner();
            let info = d.deployment.clone().unwrap_or_default();
            print(out, &d, |_| {
                let mut s = format!(
                    "Name:        {}\nNamespace:   {}\nReplicas:    {} desired, {} ready, {} up-to-date, {} available, {} in total\nRevision:    {} (stable {})\nPhase:       {}{}\n",
                    info.name,
                    info.namespace,
                    info.replicas,
                    info.ready,
                    info.up_to_date,
                    info.available,
                    info.total,
                    info.revision,
                    info.stable_revision,
                    info.phase,
                    if info.paused { " (paused)" } else { "" },
                );
                if !info.unplaced.is_empty() {
                    s.push_str(&format!("Pending:     {}\n", info.unplaced));
                }
                if !info.failure.is_empty() {
                    s.push_str(&format!("Failure:     {}\n", info.failure));
                }
                s.push_str("\nRevisions:\n");
                for r in &d.revisions {
                    s.push_str(&format!(
                        "  {}{}  {}\n",
                        r.number,
                        if r.current { " (current)" } else { "" },
                        r.command
                    ));
                }
                s.push_str("\nInstances:\n");
                s.push_str(&indent(&instances_table(&d.instances)));
                s.push_str("\nEvents:\n");
                for e in &d.events {
                    s.push_str(&format!("  {}  {}\n", ago(e.at_ms), e.message));
                }
                s
            })
        }
        Command::Delete { what: DescribeWhat::Deployment, name, namespace } => {
            api.delete(pb::NameRequest { namespace: namespace.clone(), name: name.clone() }).await.map_err(status)?;
            print(out, &json!({"deleted": format!("deployment/{namespace}/{name}")}), |_| {
                format!("deployment/{namespace}/{name} deleted\n")
            })
        }
        Command::Rollout(RolloutCommand::Status { name, namespace, timeout }) => {
            rollout_status(&mut api, &namespace, &name, timeout).await
        }
        Command::Rollout(RolloutCommand::History { name, namespace }) => {
            let d = api.describe(pb::NameRequest { namespace, name }).await.map_err(status)?.into_inner();
            print(out, &d.revisions, |_| {
                let rows = d
                    .revisions
                    .iter()
                    .map(|r| {
                        vec![
                            r.number.to_string(),
                            if r.current { "*" } else { "" }.into(),
                            ago(r.created_ms),
                            r.command.clone(),
                        ]
                    })
                    .collect();
                table(&["REVISION", "CURRENT", "CREATED", "COMMAND"], rows)
            })
        }
        Command::Rollout(cmd) => {
            let (name, namespace, action, to) = match cmd {
                RolloutCommand::Undo { name, namespace, to_revision } => (name, namespace, "undo", to_revision),
                RolloutCommand::Pause { name, namespace } => (name, namespace, "pause", None),
                RolloutCommand::Resume { name, namespace } => (name, namespace, "resume", None),
                RolloutCommand::Status { .. } | RolloutCommand::History { .. } => unreachable!("handled above"),
            };
            let req = pb::RolloutRequest { namespace, name, action: action.into(), to_revision: to.unwrap_or(0) };
            let d = api.rollout(req).await.map_err(status)?.into_inner().deployment.unwrap_or_default();
            print(out, &d, |_| {
                format!("deployment/{}/{}: {action} done; revision {} ({})\n", d.namespace, d.name, d.revision, d.phase)
            })
        }
        Command::Logs { target, namespace, follow, tail, stderr } => {
            let (deployment, instance) =
                match target.strip_prefix("deployment/").or_else(|| target.strip_prefix("deploy/")) {
                    Some(d) => (d.to_string(), String::new()),
                    None => (String::new(), target.clone()),
                };
            let req = pb::LogsRequest { namespace, deployment, instance, follow, tail, stderr };
            let mut stream = api.logs(req).await.map_err(status)?.into_inner();
            let mut stdout = std::io::stdout();
            while let Some(chunk) = stream.message().await.map_err(status)? {
                for line in chunk.text.lines() {
                    writeln!(stdout, "[{}] {line}", chunk.instance)?;
                }
                stdout.flush()?;
            }
            Ok(())
        }
        _ => unreachable!("only deployment commands come here"),
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

fn ago(at_ms: u64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let secs = now.saturating_sub(at_ms) / 1000;
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

/// Polls the deployment and draws a progress line until the rollout ends.
async fn rollout_status(
    api: &mut client::Deployments,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let tty = std::io::stdout().is_terminal();
    let mut last = String::new();
    loop {
        let req = pb::ListRequest { namespace: namespace.into(), name: name.into() };
        let list = api.list_deployments(req).await.map_err(status)?.into_inner().deployments;
        let d = list.into_iter().next().ok_or_else(|| anyhow!("deployment {namespace}/{name} not found"))?;
        let bar = progress_bar(d.available, d.replicas);
        let line = format!(
            "revision {}: {bar} {}/{} available, {} up-to-date, {} in total ({}{})",
            d.revision,
            d.available,
            d.replicas,
            d.up_to_date,
            d.total,
            d.phase,
            if d.paused { ", paused" } else { "" }
        );
        if line != last {
            if tty {
                print!("\r\x1b[2K{line}");
                let _ = std::io::stdout().flush();
            } else {
                println!("{line}");
            }
            last = line;
        }
        let end = |msg: String| {
            if tty {
                println!();
            }
            msg
        };
        match d.phase.as_str() {
            "Complete" if d.rolled_back_from != 0 => {
                bail!(end(format!("{}; rolled back to revision {}", d.failure, d.revision)))
            }
            "Complete" if d.total == d.replicas => {
                end(String::new());
                println!("deployment {namespace}/{name}: revision {} rolled out", d.revision);
                return Ok(());
            }
            "Failed" => bail!(end(d.failure.clone())),
            _ => {}
        }
        if !d.unplaced.is_empty() && tokio::time::Instant::now() >= deadline {
            bail!(end(format!("timed out; instances cannot be placed: {}", d.unplaced)));
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(end(format!("timed out after {timeout:?} waiting for the rollout of revision {}", d.revision)));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn progress_bar(done: u32, of: u32) -> String {
    const WIDTH: u32 = 20;
    let filled = (done.min(of) * WIDTH).checked_div(of).unwrap_or(WIDTH);
    format!("[{}{}]", "#".repeat(filled as usize), "-".repeat((WIDTH - filled) as usize))
}
