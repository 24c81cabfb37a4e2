//! A node's data directory: who it is (`node.json`), its keys and certificates (`pki/`), its
//! store (`store/`), and, on the node that created the cluster, `admin.conf` and `join-token`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hsu_model::NodeId;
use hsu_net::pki::{write_private, CertifiedKey};
use serde::{Deserialize, Serialize};

use crate::error::NodeError;

/// What a node remembers about itself between runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub id: NodeId,
    pub name: String,
    pub cluster_name: String,
    pub listen: SocketAddr,
    pub api: SocketAddr,
    /// The number of voters `--role auto` aims for.
    pub voters: u32,
    /// For a joined node, the API it joined through and the role it asked for, so that `run` can
    /// finish a join whose last step (being added to Raft) did not complete.
    #[serde(default)]
    pub joined_via: Option<JoinedVia>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinedVia {
    pub server: String,
    /// The `hsu.v1.Role` value asked for.
    pub role: i32,
}

/// The node's credentials as files.
#[derive(Clone)]
pub struct Pki {
    pub ca_pem: String,
    pub node: CertifiedKey,
    /// Present on voters only: the first node has it from `init`, a node that becomes a voter
    /// fetches it from another voter.
    pub ca_key_pem: Option<String>,
}

pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The agent's records and the units' files.
    pub fn agent_dir(&self) -> PathBuf {
        self.root.join("agent")
    }

    pub fn store_dir(&self) -> PathBuf {
        self.root.join("store")
    }

    pub fn admin_conf(&self) -> PathBuf {
        self.root.join("admin.conf")
    }

    pub fn join_token(&self) -> PathBuf {
        self.root.join("join-token")
    }

    fn state_file(&self) -> PathBuf {
        self.root.join("node.json")
    }

    fn pki_dir(&self) -> PathBuf {
        self.root.join("pki")
    }

    /// The CA private key, on voters only (0600).
    pub fn ca_key_file(&self) -> PathBuf {
        self.pki_dir().join("ca.key")
    }

    /// True when a node has been created here before.
    pub fn exists(&self) -> bool {
        self.state_file().exists()
    }

    /// Creates the directory for a new node; refuses one that already holds a node.
    pub fn create(&self) -> Result<(), NodeError> {
        if self.exists() {
            return Err(NodeError::Config(format!(
                "{} already holds a node; use `hsu node run --data-dir {}` to start it",
                self.root.display(),
                self.root.display()
            )));
        }
        std::fs::create_dir_all(self.pki_dir()).map_err(|e| io(&self.pki_dir(), e))
    }

    pub fn load_state(&self) -> Result<NodeState, NodeError> {
        let path = self.state_file();
        let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| NodeError::Config(format!("{}: {e}", path.display())))
    }

    pub fn save_state(&self, state: &NodeState) -> Result<(), NodeError> {
        let path = self.state_file();
        let text = serde_json::to_string_pretty(state).map_err(|e| NodeError::Config(e.to_string()))?;
        write_private(&path, text.as_bytes()).map_err(|e| io(&path, e))
    }

    pub fn save_pki(&self, pki: &Pki) -> Result<(), NodeError> {
        let dir = self.pki_dir();
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            write_private(&p, text.as_bytes()).map_err(|e| io(&p, e))
        };
        write("ca.crt", &pki.ca_pem)?;
        write("node.crt", &pki.node.cert_pem)?;
        write("node.key", &pki.node.key_pem)?;
        if let Some(k) = &pki.ca_key_pem {
            write("ca.key", k)?;
        }
        Ok(())
    }

    pub fn load_pki(&self) -> Result<Pki, NodeError> {
        let dir = self.pki_dir();
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(|e| io(&p, e))
        };
        let ca_key_pem = match read("ca.key") {
            Ok(k) => Some(k),
            Err(_) if !dir.join("ca.key").exists() => None,
            Err(e) => return Err(e),
        };
        Ok(Pki {
            ca_pem: read("ca.crt")?,
            node: CertifiedKey { cert_pem: read("node.crt")?, key_pem: read("node.key")? },
            ca_key_pem,
        })
    }
}

fn io(path: &Path, e: std::io::Error) -> NodeError {
    NodeError::Io(format!("{}: {e}", path.display()))
}
