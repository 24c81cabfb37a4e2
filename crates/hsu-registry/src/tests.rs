//! Tests of the view: what resolve hands out, and which changes wake a watcher.

use futures::FutureExt;
use hsu_model::service::{Endpoint, ServiceRecord};

use super::*;

fn service(name: &str, endpoints: &[(&str, bool)]) -> ServiceRecord {
    ServiceRecord {
        namespace: "default".into(),
        name: name.into(),
        deployment: name.into(),
        port: "http".into(),
        endpoints: endpoints
            .iter()
            .enumerate()
            .map(|(i, (id, ready))| Endpoint {
                instance: id.to_string(),
                node: 1,
                port: 4000 + i as u16,
                ready: *ready,
            })
            .collect(),
    }
}

fn instances(r: &Option<ServiceRecord>) -> Vec<String> {
    r.iter().flat_map(|r| r.endpoints.iter().map(|e| e.instance.clone())).collect()
}

#[test]
fn resolve_hands_out_ready_endpoints_only_and_get_shows_all() {
    let reg = Registry::new();
    reg.replace([service("web", &[("a", true), ("b", false)]), service("db", &[])], 7);
    assert_eq!(instances(&reg.resolve("default", "web")), ["a"]);
    assert_eq!(instances(&reg.get("default", "web")), ["a", "b"]);
    assert_eq!(reg.resolve("default", "db").map(|r| r.endpoints.len()), Some(0), "a service without endpoints");
    assert_eq!(reg.resolve("default", "nope"), None);
    assert_eq!(reg.resolve("other", "web"), None, "services are per namespace");
    let names: Vec<String> = reg.list(Some("default")).into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["db", "web"]);
    assert!(reg.list(Some("other")).is_empty());
    assert_eq!(reg.revision(), 7);
}

#[tokio::test]
async fn a_watch_wakes_for_its_own_services_ready_set_only() {
    let reg = Registry::new();
    reg.replace([service("web", &[("a", true)]), service("db", &[("d", true)])], 1);
    let mut w = reg.watch("default", "web");
    assert_eq!(instances(&w.current()), ["a"]);

    // Another service changes; an endpoint of this one that is not ready comes and goes.
    reg.replace([service("web", &[("a", true), ("b", false)]), service("db", &[])], 2);
    reg.replace([service("web", &[("a", true)]), service("db", &[])], 3);
    assert!(w.changed().now_or_never().is_none(), "woken by a change that is not its own");

    reg.replace([service("web", &[("a", true), ("b", true)]), service("db", &[])], 4);
    let now = w.changed().now_or_never().expect("woken by b becoming ready").unwrap();
    assert_eq!(instances(&now), ["a", "b"]);

    reg.replace([service("db", &[])], 5);
    assert_eq!(w.changed().await, Ok(None), "the service went away");
    reg.replace([service("web", &[])], 6);
    assert_eq!(w.changed().await.map(|r| r.map(|r| r.name)), Ok(Some("web".to_string())), "and came back");

    drop(reg);
    assert_eq!(w.changed().await, Err(Closed));
}

#[tokio::test]
async fn a_watch_of_a_service_that_does_not_exist_yet_wakes_when_it_appears() {
    let reg = Registry::new();
    let mut w = reg.watch("default", "later");
    assert_eq!(w.current(), None);
    reg.replace([service("later", &[("x", true)])], 9);
    assert_eq!(instances(&w.changed().await.unwrap()), ["x"]);
}
