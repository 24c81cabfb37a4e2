//! Starting and stopping a managed unit's process: its cgroup, the spawn with its environment
//! and logs, the graceful shutdown through `hsu.core.v1.Core` for integrated units, and the
//! stop signal to the whole group with SIGKILL after the grace period.

use super::*;

impl Actor {
    /// Creates the unit's cgroup if its limits need one; a machine that cannot enforce them
    /// gets the unit started anyway, with its status saying that its limits are not enforced.
    pub(super) fn setup_cgroup(&mut self) {
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
    pub(super) fn target(&self) -> probe::Target {
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

    pub(super) fn start(&mut self) -> std::io::Result<Running> {
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
        let ports = self.ports.clone();
        self.set(|s| {
            s.ports = ports;
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
    pub(super) async fn shutdown_through_core(&self, proc: &mut Running, grace: Duration) -> Option<Exit> {
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
    pub(super) async fn stop(&mut self, proc: &mut Running) -> Option<Exit> {
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
    pub(super) async fn stop_with_signals(&self, proc: &mut Running, grace: Duration) -> Option<Exit> {
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
