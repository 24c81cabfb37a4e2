//! The agent on one machine with no cluster: `hsu agent run --units FILE|DIR --data-dir D`.
//!
//! It supervises the units of a YAML file (or of every `*.yaml`/`*.yml` file of a directory),
//! applies the difference when the files change and it gets SIGHUP (or `hsu agent reload`),
//! and answers `hsu agent status` on a Unix socket in its data directory (`agent.sock`, one JSON
//! request and one JSON answer per connection). A bad file changes nothing: at start the agent
//! refuses to run, on reload it keeps what runs and the reload answers with the error.
//! SIGTERM/SIGINT stop the units gracefully and end the agent, as supervisord does, unless
//! `--on-exit keep` leaves them for the next agent to adopt.

use std::path::{Path, PathBuf};

use hsu_model::unit::{parse_units, UnitSpec};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::agent::{Agent, ApplyReport, OnExit};
use crate::supervisor::UnitStatus;
use crate::Error;

/// Reads a units file, or every `*.yaml`/`*.yml` file of a directory (in name order). Errors
/// name the file, and the line and column within it; unit names must be unique across files.
pub fn load_units(path: &Path) -> Result<Vec<UnitSpec>, String> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    let mut units: Vec<UnitSpec> = Vec::new();
    let mut from: std::collections::BTreeMap<String, PathBuf> = Default::default();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        let parsed = parse_units(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        for u in parsed.units {
            if let Some(other) = from.insert(u.name.as_str().to_string(), f.clone()) {
                return Err(format!(
                    "{}: unit {:?} is also defined in {}",
                    f.display(),
                    u.name.as_str(),
                    other.display()
                ));
            }
            units.push(u);
        }
    }
    Ok(units)
}

#[derive(Clone, Debug)]
pub struct Options {
    pub units: PathBuf,
    pub data_dir: PathBuf,
    pub on_exit: OnExit,
}

/// A request on the control socket.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "op")]
pub enum Request {
    Status,
    Reload,
    Resources,
}

/// The answer to a request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply {
    Status(Vec<UnitStatus>),
    Reloaded(ApplyReport),
    Resources(crate::resources::NodeResources),
    Error(String),
}

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("agent.sock")
}

/// Runs until SIGTERM or SIGINT. `ready` is called once the units are applied and the socket
/// listens, with what the first apply did.
pub async fn run(opts: Options, ready: impl FnOnce(&ApplyReport)) -> Result<(), Error> {
    std::fs::create_dir_all(&opts.data_dir).map_err(Error::io(&opts.data_dir))?;
    let _lock = lock(&opts.data_dir)?;
    let desired = load_units(&opts.units).map_err(Error::Units)?;
    let mut agent = Agent::open(&opts.data_dir)?;
    let sock = socket_path(&opts.data_dir);
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).map_err(Error::io(&sock))?;
    let report = agent.apply(desired).await;
    ready(&report);
    let signals = |kind| signal(kind).map_err(|e| Error::System(format!("signal handler: {e}")));
    let mut hup = signals(SignalKind::hangup())?;
    let mut term = signals(SignalKind::terminate())?;
    let mut int = signals(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                match reload(&mut agent, &opts.units).await {
                    Reply::Error(e) => warn!("reload refused; nothing changed: {e}"),
                    _ => info!("reloaded on SIGHUP"),
                }
            }
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    if let Err(e) = serve(&mut agent, &opts.units, &opts.data_dir, stream).await {
                        warn!("control socket: {e}");
                    }
                }
                Err(e) => warn!("control socket accept: {e}"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    info!(on_exit = ?opts.on_exit, "stopping");
    agent.shutdown(opts.on_exit).await;
    let _ = std::fs::remove_file(&sock);
    Ok(())
}

async fn reload(agent: &mut Agent, units: &Path) -> Reply {
    match load_units(units) {
        Ok(desired) => Reply::Reloaded(agent.apply(desired).await),
        Err(e) => Reply::Error(e),
    }
}

/// One request per connection; requests are served one at a time, so a reload never races a
/// status.
async fn serve(agent: &mut Agent, units: &Path, data_dir: &Path, stream: UnixStream) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), BufReader::new(r).read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::other("no request within 5s"))??;
    let reply = match (n, serde_json::from_str::<Request>(&line)) {
        (0, _) => return Ok(()),
        (_, Ok(Request::Status)) => Reply::Status(agent.status()),
        (_, Ok(Request::Reload)) => reload(agent, units).await,
        (_, Ok(Request::Resources)) => match crate::resources::Sampler::new().and_then(|mut s| s.sample(data_dir)) {
            Ok(r) => Reply::Resources(r),
            Err(e) => Reply::Error(e.to_string()),
        },
        (_, Err(e)) => Reply::Error(format!("bad request: {e}")),
    };
    let mut bytes = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    w.write_all(&bytes).await
}

/// Sends one request to the agent of `data_dir`.
pub async fn request(data_dir: &Path, req: &Request) -> Result<Reply, Error> {
    let sock = socket_path(data_dir);
    let stream = UnixStream::connect(&sock).await.map_err(|e| {
        Error::Control(format!(
            "no agent answers on {} ({e}); is `hsu agent run` running with this --data-dir?",
            sock.display()
        ))
    })?;
    let (r, mut w) = stream.into_split();
    let mut bytes = serde_json::to_vec(req).map_err(|e| Error::Control(format!("the request does not encode: {e}")))?;
    bytes.push(b'\n');
    w.write_all(&bytes).await.map_err(Error::io(&sock))?;
    let mut line = String::new();
    // A reload may stop units, each within its grace period: no short timeout here.
    BufReader::new(r).read_line(&mut line).await.map_err(Error::io(&sock))?;
    serde_json::from_str(&line).map_err(|e| Error::Control(format!("bad answer from the agent: {e}")))
}

/// One agent per data directory: an exclusive `flock` on `agent.lock`, released when the
/// process ends (also by kill -9).
fn lock(data_dir: &Path) -> Result<std::fs::File, Error> {
    let path = data_dir.join("agent.lock");
    let f =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(Error::io(&path))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(|_| Error::Locked(data_dir.to_path_buf()))?;
    Ok(f)
}
