//! One actor per unit: it starts the process (or adopts one an earlier agent started), waits for
//! it to exit, restarts it as its policy says, rotates its logs, and stops it — the configured
//! signal to the whole group, SIGKILL after the grace period — when asked. Its status is a
//! `watch` snapshot others read without asking the actor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use hsu_model::unit::{UnitKind, UnitSpec};
use rustix::process::Signal;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn, Instrument};

use crate::attach;
use crate::limits;
use crate::logs;

mod lifecycle;
mod unmanaged;
use crate::probe;
use crate::process::{self, ProcId};
use crate::record::{self, Record};
use crate::restart::{after_exit, AfterExit, Exit, History};

/// How long a group may take to die after SIGKILL before the agent reports it as stuck.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often a running unit's logs are checked for rotation and its RSS is read.
const TICK: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Starting,
    Running,
    /// Waiting to restart after an exit.
    Backoff,
    /// Exited and stays down (its restart policy says so).
    Exited,
    /// The agent gave up on it (flap limit); `message` says why.
    Failed,
    Stopping,
    Stopped,
}

/// A unit as the agent observes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitStatus {
    pub name: String,
    pub state: State,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub last_exit: Option<Exit>,
    /// True when the running process was started by an earlier agent and adopted.
    pub adopted: bool,
    /// Running and passing its startup and readiness probes (just running, without probes).
    pub ready: bool,
    /// The last failure of a probe: why it is not ready, or why it was last restarted. Cleared
    /// when the readiness probe passes.
    pub probe_failure: Option<String>,
    /// How the unit's limits are enforced ("cgroup v1: memory 67108864"), or why they are not.
    pub limits: Option<String>,
    /// The last exit was the kernel's OOM killer acting on the unit's memory limit.
    pub oom_killed: bool,
    /// An integrated unit's `hsu.core.v1.Core` address (`HSU_CORE_ADDR`).
    pub core_addr: Option<String>,
    /// Resident memory of the main process.
    pub rss_bytes: Option<u64>,
    /// CPU use of the main process over the last second or so, in thousandths of a core.
    pub cpu_millicores: Option<u32>,
    /// Why it is failed, or when it restarts next, in words.
    pub message: Option<String>,
    /// When the current process started (Unix time, ms).
    pub started_at_ms: Option<u64>,
    /// The ports allocated for it, by port name (allocated at its first start, kept after).
    pub ports: BTreeMap<String, u16>,
}

enum Msg {
    /// Stop the process (signal, grace, SIGKILL) and end.
    Stop(oneshot::Sender<()>),
    /// End without touching the process (the agent exits and leaves its units running).
    Detach(oneshot::Sender<()>),
}

/// The handle the agent keeps per unit.
pub struct UnitHandle {
    pub spec: UnitSpec,
    tx: mpsc::Sender<Msg>,
    status: watch::Receiver<UnitStatus>,
    task: JoinHandle<()>,
}

impl UnitHandle {
    pub fn status(&self) -> UnitStatus {
        self.status.borrow().clone()
    }

    pub fn watch(&self) -> watch::Receiver<UnitStatus> {
        self.status.clone()
    }

    /// Stops the unit and waits until its whole process group is gone.
    pub async fn stop(self) {
        self.send(Msg::Stop).await;
    }

    /// Leaves the process running and ends the actor.
    pub async fn detach(self) {
        self.send(Msg::Detach).await;
    }

    async fn send(self, msg: fn(oneshot::Sender<()>) -> Msg) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(msg(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let _ = self.task.await;
    }
}

/// Starts the actor for `spec`. `adopt` is the process (and group leader) an earlier agent
/// started for this very spec and that still runs; `ports` and `restarts` carry over from its record.
pub fn spawn(
    data_dir: &Path,
    spec: UnitSpec,
    adopt: Option<ProcId>,
    ports: BTreeMap<String, u16>,
    restarts: u32,
) -> UnitHandle {
    let name = spec.name.as_str().to_string();
    let (status_tx, status) = watch::channel(UnitStatus {
        name: name.clone(),
        state: if adopt.is_some() { State::Running } else { State::Starting },
        pid: adopt.map(|p| p.pid),
        restarts,
        last_exit: None,
        adopted: adopt.is_some(),
        ready: false,
        probe_failure: None,
        limits: None,
        oom_killed: false,
        core_addr: None,
        rss_bytes: None,
        cpu_millicores: None,
        message: None,
        started_at_ms: None,
        ports: ports.clone(),
    });
    let (tx, rx) = mpsc::channel(4);
    let actor = Actor {
        data_dir: data_dir.to_path_buf(),
        dir: record::unit_dir(data_dir, &name),
        spec: spec.clone(),
        ports,
        restarts,
        history: History::default(),
        status: status_tx,
        rx,
        cgroup: None,
        oom_before: 0,
        cpu_sample: None,
    };
    let task = tokio::spawn(actor.run(adopt).instrument(tracing::info_span!("unit", name = %name)));
    UnitHandle { spec, tx, status, task }
}

struct Actor {
    data_dir: PathBuf,
    dir: PathBuf,
    spec: UnitSpec,
    ports: BTreeMap<String, u16>,
    restarts: u32,
    history: History,
    status: watch::Sender<UnitStatus>,
    rx: mpsc::Receiver<Msg>,
    cgroup: Option<limits::UnitCgroup>,
    /// OOM kills the cgroup had counted when the current process started.
    oom_before: u64,
    /// CPU ticks of the main process at the last sample, for its CPU use.
    cpu_sample: Option<(u32, Instant, u64)>,
}

/// The process the actor watches.
enum Running {
    Child { child: tokio::process::Child, id: ProcId },
    Adopted { id: ProcId },
}

impl Running {
    fn id(&self) -> ProcId {
        match self {
            Running::Child { id, .. } | Running::Adopted { id } => *id,
        }
    }

    /// Resolves when the main process has exited (and, for a child, has been reaped).
    async fn wait(&mut self) -> Exit {
        match self {
            Running::Child { child, .. } => match child.wait().await {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt;
                    match (status.code(), status.signal()) {
                        (Some(c), _) => Exit::Code(c),
                        (None, Some(s)) => Exit::Signal(s),
                        (None, None) => Exit::Unknown,
                    }
                }
                Err(_) => Exit::Unknown,
            },
            Running::Adopted { id } => {
                while id.alive() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Exit::Unknown
            }
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The command with `${NAME}` replaced from the unit's environment, then the agent's own.
fn expand_argv(
    argv: &hsu_model::unit::Command,
    env: &BTreeMap<String, String>,
) -> Result<(String, Vec<String>), String> {
    let lookup = |n: &str| env.get(n).cloned().or_else(|| std::env::var(n).ok());
    let program = hsu_model::expand::expand(argv.program(), lookup)?;
    let args = argv.args().iter().map(|a| hsu_model::expand::expand(a, lookup)).collect::<Result<_, _>>()?;
    Ok((program, args))
}

impl Actor {
    fn set(&self, f: impl FnOnce(&mut UnitStatus)) {
        self.status.send_modify(f);
    }

    fn save(&self, proc_id: Option<ProcId>) {
        if let Err(e) = self.write_record(proc_id) {
            warn!("cannot write the unit record: {e}");
        }
    }

    fn write_record(&self, proc_id: Option<ProcId>) -> std::io::Result<()> {
        let r = Record {
            spec: self.spec.clone(),
            proc: proc_id,
            pgid: proc_id.map(|p| p.pid),
            ports: self.ports.clone(),
            restarts: self.restarts,
        };
        record::write(&self.data_dir, &r)
    }

    async fn run(mut self, adopt: Option<ProcId>) {
        if self.spec.kind == hsu_model::unit::UnitKind::Unmanaged {
            return self.run_unmanaged().await;
        }
        if adopt.is_some() {
            self.setup_cgroup();
            let core_addr = self.target().env.get("HSU_CORE_ADDR").cloned();
            self.set(|s| s.core_addr = core_addr);
        }
        let mut running = adopt.map(|id| {
            info!(pid = id.pid, "adopted the running process");
            Running::Adopted { id }
        });
        loop {
            let started = Instant::now();
            let proc = match running.take() {
                Some(r) => r,
                None => match self.start() {
                    Ok(r) => r,
                    Err(e) => {
                        // Cannot even start (missing program, bad cwd): counts as a failed run.
                        warn!("cannot start: {e}");
                        self.set(|s| s.message = Some(format!("cannot start: {e}")));
                        match self.after(Exit::Code(127), Duration::ZERO).await {
                            Some(()) => continue,
                            None => return,
                        }
                    }
                },
            };
            let mut proc = proc;
            let id = proc.id();
            let mut tick = tokio::time::interval(TICK);
            let (probe_tx, mut probes) = mpsc::channel(8);
            let prober = tokio::spawn(probe::run(self.spec.clone(), self.target(), probe_tx));
            // Integrated units without a readiness probe are ready when their Core says so.
            let implicit_core = self.spec.kind == UnitKind::Integrated;
            let no_probes = self.spec.startup.is_none() && self.spec.readiness.is_none() && !implicit_core;
            self.set(|s| s.ready = no_probes);
            let exit = loop {
                tokio::select! {
                    exit = proc.wait() => break exit,
                    Some(event) = probes.recv() => match event {
                        probe::Event::StartupPassed => {
                            let ready = self.spec.readiness.is_none() && !implicit_core;
                            self.set(|s| s.ready = ready);
                        }
                        probe::Event::Ready(ready, why) => self.set(|s| {
                            s.ready = ready;
                            s.probe_failure = why;
                        }),
                        probe::Event::StartupFailed(why) | probe::Event::LivenessFailed(why) => {
                            // Restarted as after a crash: the policy and the backoff decide.
                            warn!("{why}; stopping the unit");
                            self.set(|s| s.probe_failure = Some(why.clone()));
                            break self.stop(&mut proc).await.unwrap_or(Exit::Unknown);
                        }
                    },
                    msg = self.rx.recv() => {
                        match msg {
                            Some(Msg::Stop(reply)) => {
                                prober.abort();
                                self.stop(&mut proc).await;
                                let _ = reply.send(());
                            }
                            Some(Msg::Detach(reply)) => {
                                prober.abort();
                                // The process runs on; if it is our child, its status is the reaper's.
                                process::disown(id.pid);
                                let _ = reply.send(());
                            }
                            None => {}
                        }
                        return;
                    }
                    _ = tick.tick() => self.tick(id),
                }
            };
            prober.abort();
            self.set(|s| s.ready = false);
            process::disown(id.pid);
            // What the main process leaves behind in its group goes with it (systemd's
            // KillMode=control-group): a restart must not find the old generation still running.
            let leftovers = process::group_members(id.pid);
            if !leftovers.is_empty() {
                warn!(?leftovers, "main process exited; killing what is left of its group");
                let _ = process::signal_group(id.pid, Signal::KILL);
                process::wait_group_empty(id.pid, KILL_WAIT).await;
            }
            // And what left the group but not the unit's cgroup.
            if let Some(cg) = &self.cgroup {
                cg.kill_all(KILL_WAIT).await;
            }
            let oom = self.cgroup.as_ref().is_some_and(|cg| cg.oom_kills() > self.oom_before);
            if oom {
                let limit = self.spec.limits.memory.map_or(0, |m| m.0);
                warn!(pid = id.pid, limit, "OOM-killed: the unit went past its memory limit");
                self.set(|s| s.message = Some(format!("OOM-killed: past its memory limit of {limit} bytes")));
            }
            self.set(|s| s.oom_killed = oom);
            info!(pid = id.pid, %exit, "process exited");
            self.save(None);
            match self.after(exit, started.elapsed()).await {
                Some(()) => continue,
                None => return,
            }
        }
    }

    /// Rotates logs and reads RSS and CPU use.
    fn rotate_logs(&self) {
        for stream in ["stdout.log", "stderr.log"] {
            let path = self.dir.join(stream);
            if let Err(e) = logs::rotate_if_needed(&path, self.spec.logs.max_size.0, self.spec.logs.max_files) {
                warn!("rotating {}: {e}", path.display());
            }
        }
    }

    fn tick(&mut self, id: ProcId) {
        self.rotate_logs();
        let stat = process::stat(id.pid);
        let rss = stat.map(|s| s.rss_pages * process::page_size());
        let now = Instant::now();
        let mut cpu = None;
        if let Some(st) = stat {
            match self.cpu_sample {
                Some((pid, at, ticks)) if pid == id.pid && now.duration_since(at) >= Duration::from_secs(1) => {
                    let used = st.cpu_ticks.saturating_sub(ticks) as f64 / process::ticks_per_second() as f64;
                    cpu = Some((used / now.duration_since(at).as_secs_f64() * 1000.0).round() as u32);
                    self.cpu_sample = Some((id.pid, now, st.cpu_ticks));
                }
                Some((pid, _, _)) if pid == id.pid => {}
                _ => self.cpu_sample = Some((id.pid, now, st.cpu_ticks)),
            }
        }
        self.set(|s| {
            s.rss_bytes = rss;
            if cpu.is_some() {
                s.cpu_millicores = cpu;
            }
        });
    }

    /// After an exit: `Some(())` to start again, `None` when the actor is done (asked to stop
    /// or detach while the unit was down).
    async fn after(&mut self, exit: Exit, ran_for: Duration) -> Option<()> {
        let decision = after_exit(&self.spec.restart, &mut self.history, exit, ran_for, Instant::now());
        let (state, message, wait) = match &decision {
            AfterExit::RestartAfter(d) => (State::Backoff, None, Some(*d)),
            AfterExit::StayDown => (State::Exited, None, None),
            AfterExit::GiveUp(why) => (State::Failed, Some(why.clone()), None),
        };
        self.set(|s| {
            s.state = state;
            s.pid = None;
            s.rss_bytes = None;
            s.cpu_millicores = None;
            s.last_exit = Some(exit);
            if message.is_some() {
                s.message = message;
            }
        });
        let sleep = async {
            match wait {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {
                self.restarts += 1;
                let restarts = self.restarts;
                self.set(|s| s.restarts = restarts);
                Some(())
            }
            msg = self.rx.recv() => {
                if let Some(Msg::Stop(reply) | Msg::Detach(reply)) = msg {
                    // Nothing runs: the unit's cgroup is empty and can go.
                    if let Some(cg) = self.cgroup.take() {
                        cg.remove();
                    }
                    self.set(|s| s.state = State::Stopped);
                    let _ = reply.send(());
                }
                None
            }
        }
    }
}
