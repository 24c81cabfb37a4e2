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

    /// An unmanaged unit: find the process, watch it, start it with `start_command` when it is
    /// missing (as the restart policy and backoff allow), and stop it only as permitted.
    async fn run_unmanaged(mut self) {
        let Some(attach) = self.spec.attach.clone() else { return };
        let mut found: Option<ProcId> = None;
        // When start_command may run next; `None` once the restart policy says never again.
        let mut next_start = Some(Instant::now());
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if found.is_some_and(|p| !p.alive()) {
                        info!("the attached process ended");
                        found = None;
                    }
                    if found.is_none() {
                        found = attach::find(&attach);
                        if let Some(p) = found {
                            info!(pid = p.pid, "attached");
                        }
                    }
                    self.rotate_logs();
                    match found {
                        Some(p) => {
                            let rss = process::stat(p.pid).map(|s| s.rss_pages * process::page_size());
                            self.set(|s| {
                                s.state = State::Running;
                                s.pid = Some(p.pid);
                                s.adopted = true;
                                s.ready = true;
                                s.rss_bytes = rss;
                                s.message = None;
                            });
                        }
                        None => {
                            let missing = format!("not found: {}", attach::describe(&attach));
                            self.set(|s| {
                                if s.state == State::Running {
                                    s.last_exit = Some(Exit::Unknown);
                                }
                                s.state = State::Exited;
                                s.pid = None;
                                s.ready = false;
                                s.rss_bytes = None;
                                if s.message.as_deref().is_none_or(|m| !m.starts_with("flap limit")) {
                                    s.message = Some(missing);
                                }
                            });
                            if self.spec.start_command.is_some() && next_start.is_some_and(|t| Instant::now() >= t) {
                                match after_exit(&self.spec.restart, &mut self.history, Exit::Unknown, Duration::ZERO, Instant::now()) {
                                    AfterExit::RestartAfter(d) => {
                                        self.run_aside(self.spec.start_command.clone(), "start_command", false);
                                        self.restarts += 1;
                                        let n = self.restarts;
                                        self.set(|s| s.restarts = n);
                                        next_start = Some(Instant::now() + d.max(Duration::from_secs(1)));
                                    }
                                    AfterExit::StayDown => next_start = None,
                                    AfterExit::GiveUp(why) => {
                                        self.set(|s| { s.state = State::Failed; s.message = Some(why); });
                                        next_start = None;
                                    }
                                }
                            }
                        }
                    }
                }
                msg = self.rx.recv() => {
                    if let Some(Msg::Stop(reply)) = msg {
                        self.stop_unmanaged(found).await;
                        let _ = reply.send(());
                    } else if let Some(Msg::Detach(reply)) = msg {
                        let _ = reply.send(());
                    }
                    return;
                }
            }
        }
    }

    /// Runs a start or stop command of an unmanaged unit in its own group, output to the unit's
    /// logs; with `wait` the caller waits for it (and disowns it after), else the reaper collects it.
    fn run_aside(
        &self,
        argv: Option<hsu_model::unit::Command>,
        what: &str,
        wait: bool,
    ) -> Option<tokio::process::Child> {
        let argv = argv?;
        let probe::Target { env, cwd, .. } = self.target();
        let open = || -> std::io::Result<_> {
            std::fs::create_dir_all(&self.dir)?;
            Ok((process::open_log(&self.dir.join("stdout.log"))?, process::open_log(&self.dir.join("stderr.log"))?))
        };
        // A command the agent waits for is registered, so the reaper leaves its status to tokio.
        let spawn = |(o, e)| {
            let (program, args) = expand_argv(&argv, &env).map_err(std::io::Error::other)?;
            let mut cmd = process::command(&program, &args, &env, &cwd, o, e);
            if wait {
                process::spawn_owned(&mut cmd)
            } else {
                cmd.spawn()
            }
        };
        match open().and_then(spawn) {
            Ok(child) => {
                info!(pid = child.id(), "ran {what}");
                Some(child)
            }
            Err(e) => {
                warn!("{what}: {e}");
                self.set(|s| s.message = Some(format!("{what}: {e}")));
                None
            }
        }
    }

    /// Stops an unmanaged unit: its `stop_command`, else signals if `signal_allowed`, else
    /// nothing — the agent never signals what it was not told it may control.
    async fn stop_unmanaged(&mut self, found: Option<ProcId>) {
        let grace = self.spec.stop.grace.0;
        if self.spec.stop_command.is_some() {
            if let Some(mut child) = self.run_aside(self.spec.stop_command.clone(), "stop_command", true) {
                let _ = tokio::time::timeout(grace, child.wait()).await;
                if let Some(pid) = child.id() {
                    process::disown(pid);
                }
            }
        } else if let (true, Some(p)) = (self.spec.signal_allowed, found) {
            let signal = self.spec.stop.signal;
            info!(pid = p.pid, signal = signal.name(), "stopping the attached process (signal_allowed)");
            let pid = rustix::process::Pid::from_raw(p.pid as i32);
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, process::signal_of(signal));
            }
            let deadline = Instant::now() + grace;
            while p.alive() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if p.alive() {
                if let Some(pid) = pid {
                    let _ = rustix::process::kill_process(pid, Signal::KILL);
                }
            }
        } else if let Some(p) = found {
            info!(pid = p.pid, "left running: signal_allowed is false and there is no stop_command");
        }
        self.set(|s| {
            s.state = State::Stopped;
            s.ready = false;
        });
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

    /// Creates the unit's cgroup if its limits need one; a machine that cannot enforce them
    /// gets the unit started anyway, with its status saying that its limits are not enforced.
    fn setup_cgroup(&mut self) {
        match limits::UnitCgroup::create(&limits::detect(), self.spec.name.as_str(), &self.spec.limits) {
            Ok(cg) => {
                let note = cg.as_ref().map(|c| c.describe.clone());
                self.cgroup = cg;
                self.set(|s| s.limits = note);
            }
            Err(e) => {
                let note = if e.starts_with("limits not enforced") { e } else { format!("limits not enforced: {e}") };
                warn!("{note}");
                self.cgroup = None;
                self.set(|s| s.limits = Some(note));
            }
        }
    }

    /// The unit's environment (its own plus `HSU_UNIT` and `HSU_PORT_*`), working directory and
    /// ports: what its process gets and where its probes look.
    fn target(&self) -> probe::Target {
        let mut env: BTreeMap<String, String> =
            self.spec.env.iter().map(|(k, v)| (k.as_str().to_string(), v.clone())).collect();
        env.insert("HSU_UNIT".into(), self.spec.name.as_str().to_string());
        for p in &self.spec.ports {
            if let Some(port) = self.ports.get(p.name.as_str()) {
                env.insert(p.env_name(), port.to_string());
            }
        }
        if let Some(port) = self.ports.get(probe::CORE_PORT).filter(|_| self.spec.kind == UnitKind::Integrated) {
            env.insert("HSU_CORE_ADDR".into(), format!("127.0.0.1:{port}"));
        }
        let cwd = self.spec.cwd.clone().unwrap_or_else(|| self.dir.clone());
        probe::Target { ports: self.ports.clone(), env, cwd }
    }

    fn start(&mut self) -> std::io::Result<Running> {
        std::fs::create_dir_all(&self.dir)?;
        let mut wanted: Vec<String> = self.spec.ports.iter().map(|p| p.name.as_str().to_string()).collect();
        if self.spec.kind == UnitKind::Integrated {
            wanted.push(probe::CORE_PORT.to_string());
        }
        for name in wanted {
            if let std::collections::btree_map::Entry::Vacant(slot) = self.ports.entry(name) {
                slot.insert(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port());
            }
        }
        let probe::Target { env, cwd, .. } = self.target();
        let stdout = process::open_log(&self.dir.join("stdout.log"))?;
        let stderr = process::open_log(&self.dir.join("stderr.log"))?;
        let argv =
            self.spec.command.as_ref().ok_or_else(|| std::io::Error::other("a managed unit without a command"))?;
        let (program, args) = expand_argv(argv, &env).map_err(std::io::Error::other)?;
        let mut cmd = process::command(&program, &args, &env, &cwd, stdout, stderr);
        let mut identity = limits::Identity { uid: None, gid: None };
        if self.spec.user.is_some() || self.spec.group.is_some() {
            if !rustix::process::geteuid().is_root() {
                return Err(std::io::Error::other("user and group need the agent to run as root"));
            }
            let (mut uid, mut gid) = (None, None);
            if let Some(u) = &self.spec.user {
                let (u, g) = process::lookup_user(u).map_err(std::io::Error::other)?;
                (uid, gid) = (Some(u), Some(g));
            }
            if let Some(g) = &self.spec.group {
                gid = Some(process::lookup_group(g).map_err(std::io::Error::other)?);
            }
            identity = limits::Identity { uid, gid };
        }
        self.setup_cgroup();
        self.oom_before = self.cgroup.as_ref().map_or(0, limits::UnitCgroup::oom_kills);
        limits::apply_in_child(&mut cmd, &self.spec.limits, self.cgroup.as_ref(), identity);
        let child = process::spawn_owned(&mut cmd)?;
        let pid = child.id().ok_or_else(|| std::io::Error::other("the process exited before its pid was read"))?;
        // The start time identifies the process across agent restarts; if it already exited the
        // record gets a start time of 0, which matches no live process.
        let id = ProcId::of(pid).unwrap_or(ProcId { pid, start_ticks: 0 });
        if let Err(e) = self.write_record(Some(id)) {
            // Unrecorded, a restarted agent would not know it and could start a second copy.
            let _ = process::signal_group(pid, Signal::KILL);
            process::disown(pid);
            return Err(std::io::Error::other(format!("cannot record the started process: {e}")));
        }
        info!(pid, "started");
        let core_addr = env.get("HSU_CORE_ADDR").cloned();
        self.set(|s| {
            s.state = State::Running;
            s.pid = Some(pid);
            s.core_addr = core_addr;
            s.adopted = false;
            s.started_at_ms = Some(unix_ms());
            s.message = None;
        });
        Ok(Running::Child { child, id })
    }

    /// An integrated unit is asked to shut down through its Core first. Returns its exit if it
    /// exited, and its group emptied, within the grace period; `None` to go on with signals.
    async fn shutdown_through_core(&self, proc: &mut Running, grace: Duration) -> Option<Exit> {
        if self.spec.kind != UnitKind::Integrated {
            return None;
        }
        let port = *self.ports.get(probe::CORE_PORT)?;
        let id = proc.id();
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        let Ok(Ok(mut client)) = tokio::time::timeout(Duration::from_secs(2), probe::core_client(port)).await else {
            warn!(pid = id.pid, "Core is not reachable; stopping with signals");
            return None;
        };
        // Once the request is sent, even an error may mean the unit is already on its way out
        // (it can exit before its answer leaves): wait for the exit within the grace either way.
        let req = hsu_proto::core::v1::ShutdownRequest { grace_ms };
        match tokio::time::timeout(Duration::from_secs(2), client.shutdown(req)).await {
            Ok(Ok(_)) => info!(pid = id.pid, grace_ms, "asked to shut down through hsu.core.v1.Core"),
            Ok(Err(e)) => info!(pid = id.pid, "Core/Shutdown answered {}; waiting for the exit", e.message()),
            Err(_) => info!(pid = id.pid, "Core/Shutdown did not answer in 2s; waiting for the exit"),
        }
        let deadline = Instant::now() + grace;
        let exit = tokio::time::timeout(grace, proc.wait()).await.ok()?;
        let rest = deadline.saturating_duration_since(Instant::now());
        if process::wait_group_empty(id.pid, rest).await {
            Some(exit)
        } else {
            warn!(pid = id.pid, "exited after Shutdown but left processes in its group; stopping them with signals");
            None
        }
    }

    /// Stops the running process: an integrated unit through Core/Shutdown first, then (for
    /// every unit) the configured signal to the whole group and SIGKILL after the grace period.
    /// Returns once the main process is reaped and the group and cgroup are empty.
    async fn stop(&mut self, proc: &mut Running) -> Option<Exit> {
        let id = proc.id();
        self.set(|s| s.state = State::Stopping);
        let stop_started = Instant::now();
        let grace = self.spec.stop.grace.0;
        let exit = match self.shutdown_through_core(proc, grace).await {
            Some(exit) => Some(exit),
            // One grace period for the whole stop: signals get what Core/Shutdown left of it.
            None => self.stop_with_signals(proc, grace.saturating_sub(stop_started.elapsed())).await,
        };
        process::disown(id.pid);
        if let Some(cg) = self.cgroup.take() {
            cg.kill_all(KILL_WAIT).await;
            cg.remove();
        }
        self.save(None);
        self.set(|s| {
            s.state = State::Stopped;
            s.pid = None;
            s.rss_bytes = None;
            s.ready = false;
            s.last_exit = exit;
        });
        exit
    }

    /// The configured signal to the whole group, then SIGKILL after `grace`; returns the main
    /// process's exit once it is reaped and the group is empty (or waiting stopped making sense).
    async fn stop_with_signals(&self, proc: &mut Running, grace: Duration) -> Option<Exit> {
        let id = proc.id();
        let signal = self.spec.stop.signal;
        info!(pid = id.pid, signal = signal.name(), ?grace, "stopping");
        if let Err(e) = process::signal_group(id.pid, process::signal_of(signal)) {
            warn!("sending {} to group {}: {e}", signal.name(), id.pid);
        }
        let deadline = Instant::now() + grace;
        let exited = tokio::time::timeout(grace, proc.wait()).await.ok();
        let rest = deadline.saturating_duration_since(Instant::now());
        if exited.is_some() && process::wait_group_empty(id.pid, rest).await {
            return exited;
        }
        warn!(pid = id.pid, "still running after the grace period; sending SIGKILL to the group");
        let _ = process::signal_group(id.pid, Signal::KILL);
        let exit = match exited {
            Some(e) => Some(e),
            None => tokio::time::timeout(KILL_WAIT, proc.wait()).await.ok(),
        };
        if !process::wait_group_empty(id.pid, KILL_WAIT).await {
            warn!(pid = id.pid, "group still has processes {KILL_WAIT:?} after SIGKILL");
        }
        exit
    }
}
