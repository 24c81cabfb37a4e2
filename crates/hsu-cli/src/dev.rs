//! `hsu dev`: a single-node cluster in a temporary directory with the example deployments, for
//! trying HSU on one machine. Everything is a real node (store, QUIC, API with TLS, agent); only
//! its lifetime is the command's: Ctrl-C stops the units and removes the directory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail};
use hsu::bootstrap::{self, InitOptions};
use hsu::Tuning;

const EXAMPLE: &str = include_str!("../../../deploy/examples/hello.yaml");

pub async fn run(api: SocketAddr, listen: SocketAddr, file: Option<PathBuf>, keep: bool) -> anyhow::Result<()> {
    let sources = match &file {
        Some(f) => {
            crate::deploy::read_sources(std::slice::from_ref(f))?.into_iter().map(|s| (s.name, s.content)).collect()
        }
        None => vec![("deploy/examples/hello.yaml".to_string(), EXAMPLE.to_string())],
    };
    for addr in [api, listen] {
        if std::net::TcpListener::bind(addr).is_err() || std::net::UdpSocket::bind(addr).is_err() {
            bail!("{addr} is in use (another `hsu dev`?); choose other addresses with --api and --listen");
        }
    }
    let dir = std::env::temp_dir().join(format!("hsu-dev-{}", std::process::id()));
    println!("starting a single-node cluster in {}", dir.display());
    let tuning = Tuning { stop_units_on_exit: true, ..Tuning::default() };
    let init = bootstrap::init(InitOptions {
        data_dir: dir.clone(),
        listen,
        api,
        name: Some("dev".into()),
        cluster_name: "dev".into(),
        voters: 3,
        tuning,
    })
    .await
    .map_err(|e| anyhow!("starting the node: {e}"))?;
    let node = init.node;
    let result = async {
        let applied = node.apply_documents(&sources, false).await.map_err(|e| anyhow!("{e}"))?;
        for a in &applied {
            println!("{}/{}/{} {}", a.kind.to_lowercase(), a.namespace, a.name, a.result);
        }
        // Progress until every deployment is rolled out (or a minute has passed).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let views = node.deployments_view("", "").await.map_err(|e| anyhow!("{e}"))?;
            let line: Vec<String> =
                views.iter().map(|v| format!("{} {}/{} ready", v.record.name, v.ready, v.record.spec.0.replicas)).collect();
            println!("  {}", line.join(", "));
            if views.iter().all(|v| v.ready == v.record.spec.0.replicas && v.total == v.record.spec.0.replicas) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                println!("  (not everything is ready yet; `hsu describe deployment NAME` says why)");
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let conf = dir.join("admin.conf");
        println!(
            "\nHSU is running. In another terminal:\n\n  export HSU_CONFIG={conf}\n  hsu get deployments\n  hsu get instances -o json\n  hsu describe deployment hello\n  hsu rollout history hello\n\nEdit {example} (e.g. GREETING: hi) and roll it out, one instance at a time:\n\n  hsu apply -f FILE && hsu rollout status hello\n  hsu rollout undo hello\n\n(`hsu` is target/release/hsu when you started this with cargo.) Ctrl-C stops everything{removes}.\n",
            conf = conf.display(),
            example = file.as_ref().map_or("a copy of deploy/examples/hello.yaml".to_string(), |f| f.display().to_string()),
            removes = if keep { "" } else { " and removes the directory" },
        );
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if result.is_ok() {
        crate::foreground(node).await?;
    } else {
        node.shutdown().await;
    }
    if !keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}
