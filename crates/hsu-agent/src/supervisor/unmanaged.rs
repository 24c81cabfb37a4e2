//! Unmanaged units: the actor finds an existing process and watches it, starts it with
//! `start_command` when it is missing (as the restart policy and backoff allow), and stops it
//! only as its spec permits.

use super::*;

impl Actor {
    /// An unmanaged unit: find the process, watch it, start it with `start_command` when it is
    /// missing (as the restart policy and backoff allow), and stop it only as permitted.
    pub(super) async fn run_unmanaged(mut self) {
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
    pub(super) fn run_aside(
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
    pub(super) async fn stop_unmanaged(&mut self, found: Option<ProcId>) {
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
}
