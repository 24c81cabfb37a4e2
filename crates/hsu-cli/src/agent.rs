//! `hsu agent ...`: the standalone agent (run one from a units file) and the requests to a
//! running one over its local socket.

use std::path::PathBuf;

use anyhow::{anyhow, bail};

use crate::args::*;
use crate::output::{print, table, Format};

pub(crate) async fn agent_command(cmd: AgentCommand, output: Format) -> anyhow::Result<()> {
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

pub(crate) fn describe_apply(r: &hsu_agent::ApplyReport) -> String {
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
