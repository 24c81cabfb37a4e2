//! Services on a 3-node cluster of real processes: a deployment that provides `web` is listed by
//! `hsu get services` on every node with one endpoint per ready replica (its node and the address
//! it listens on there), an instance that is not ready is listed as such, scaling changes the
//! endpoints, a second deployment naming the service is refused, and deleting the deployment
//! removes the service.
//!
//! The unit answers every GET with its own unit name, so a test can tell that an endpoint's
//! address is the instance the endpoint names. It is ready unless the file `<tmp>/unready/<unit>`
//! exists, and exits by itself once its script is deleted.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{cli, cli_ok, poll, three_voters, PY_SERVE};

const SERVER: &str = r#"
import http.server, os, sys, threading, time
me = os.path.abspath(__file__)
unready = os.path.join(os.path.dirname(me), "unready", os.environ["HSU_UNIT"])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ["HSU_UNIT"].encode()
        code = 503 if self.path == "/healthz" and os.path.exists(unready) else 200
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
"#;

fn spec(script: &Path, replicas: u32) -> String {
    format!(
        r#"apiVersion: hsu/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: {replicas}
  template:
    command: ["python3", "{script}", "${{HSU_PORT_HTTP}}"]
    ports: [{{name: http}}]
    readiness: {{http: {{port: http, path: /healthz}}, period: 200ms}}
    stop: {{grace: 2s}}
  service: {{name: web, port: http}}
"#,
        script = script.display(),
    )
}

fn services(config: &Path, api: std::net::SocketAddr) -> Result<Vec<Value>, String> {
    let text = cli_ok(config, api, &["get", "services", "-o", "json"])?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// The endpoints of `web` once it has `ready` ready ones and `total` in all.
fn web_endpoints(config: &Path, api: std::net::SocketAddr, ready: usize, total: usize) -> Result<Vec<Value>, String> {
    let list = services(config, api)?;
    let Some(web) = list.iter().find(|s| s["name"] == "web") else { return Err(format!("no web in {list:?}")) };
    let endpoints = web["endpoints"].as_array().cloned().unwrap_or_default();
    let n_ready = endpoints.iter().filter(|e| e["ready"] == true).count();
    if n_ready == ready && endpoints.len() == total {
        Ok(endpoints)
    } else {
        Err(format!("{web}"))
    }
}

/// GET / at `address`: the body (the unit's name).
fn get(address: &str) -> String {
    let mut s = TcpStream::connect(address).unwrap_or_else(|e| panic!("connect {address}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()
}

#[test]
fn a_service_lists_the_ready_replicas_of_its_deployment_on_every_node() {
    let root = tempfile::tempdir().unwrap();
    let units = tempfile::tempdir().unwrap();
    let script = units.path().join("server.py");
    std::fs::write(&script, format!("{SERVER}{PY_SERVE}")).unwrap();
    std::fs::create_dir_all(units.path().join("unready")).unwrap();
    let (nodes, config, _) = three_voters(root.path());
    let file = units.path().join("web.yaml");

    std::fs::write(&file, spec(&script, 2)).unwrap();
    cli_ok(&config, nodes[0].api, &["apply", "-f", file.to_str().unwrap()]).unwrap();
    let endpoints = poll("2 ready endpoints of web", || web_endpoints(&config, nodes[0].api, 2, 2));
    for e in &endpoints {
        for field in ["instance", "node", "node_id", "address", "ready"] {
            assert!(!e[field].is_null(), "endpoint without {field}: {e}");
        }
        assert!(["n1", "n2", "n3"].contains(&e["node"].as_str().unwrap()), "{e}");
        let address = e["address"].as_str().unwrap();
        assert!(address.starts_with("127.0.0.1:"), "{e}");
        assert_eq!(get(address), e["instance"].as_str().unwrap(), "the endpoint's address is its instance");
    }
    // Every node's registry has the same view (each reads its own replica).
    for n in &nodes[1..] {
        let same = poll("the same endpoints on every node", || web_endpoints(&config, n.api, 2, 2));
        assert_eq!(same, endpoints);
    }

    // An instance that stops being ready stays listed, as not ready; Resolve-like views skip it.
    let first = endpoints[0]["instance"].as_str().unwrap().to_string();
    std::fs::write(units.path().join("unready").join(&first), "").unwrap();
    let now = poll("one endpoint not ready", || web_endpoints(&config, nodes[1].api, 1, 2));
    assert_eq!(now.iter().find(|e| e["ready"] == false).unwrap()["instance"], first.as_str());
    let table = cli_ok(&config, nodes[1].api, &["get", "services"]).unwrap();
    assert!(table.contains("1/2"), "the table counts ready endpoints:\n{table}");
    std::fs::remove_file(units.path().join("unready").join(&first)).unwrap();

    // Scaling up adds endpoints; describe shows them.
    std::fs::write(&file, spec(&script, 3)).unwrap();
    cli_ok(&config, nodes[0].api, &["apply", "-f", file.to_str().unwrap()]).unwrap();
    poll("3 ready endpoints of web", || web_endpoints(&config, nodes[2].api, 3, 3));
    let described = cli_ok(&config, nodes[2].api, &["describe", "service", "web", "-o", "json"]).unwrap();
    let described: Value = serde_json::from_str(&described).unwrap();
    assert_eq!(described["deployment"], "web");
    assert_eq!(described["port"], "http");
    assert_eq!(described["endpoints"].as_array().unwrap().len(), 3);
    let missing = cli(&config, nodes[2].api, &["describe", "service", "nope"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("service default/nope not found"), "{missing:?}");
    let delete = cli(&config, nodes[2].api, &["delete", "service", "web"]);
    assert!(!delete.status.success(), "a service is not deleted by itself");
    assert!(String::from_utf8_lossy(&delete.stderr).contains("goes away with the deployment"), "{delete:?}");

    // A second deployment may not take a service another one provides; nothing is applied.
    let other = units.path().join("web2.yaml");
    std::fs::write(&other, spec(&script, 1).replace("name: web}", "name: web2}")).unwrap();
    let refused = cli(&config, nodes[1].api, &["apply", "-f", other.to_str().unwrap()]);
    assert!(!refused.status.success(), "a second provider of web was applied");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("service \"web\" is already provided by deployment default/web"), "{stderr}");
    let deployments = cli_ok(&config, nodes[1].api, &["get", "deployments", "-o", "json"]).unwrap();
    assert!(!deployments.contains("web2"), "{deployments}");

    // Deleting the deployment removes the service from every view.
    cli_ok(&config, nodes[0].api, &["delete", "deployment", "web"]).unwrap();
    for n in &nodes {
        poll("web to be gone", || match services(&config, n.api)? {
            list if list.is_empty() => Ok(()),
            list => Err(format!("{list:?}")),
        });
    }
}
