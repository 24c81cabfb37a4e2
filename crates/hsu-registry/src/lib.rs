//! A node's view of the cluster's services: each service's endpoints, by `namespace/name`, kept
//! current by whoever feeds it (the node, from its store replica or from its server) and read by
//! the API (`hsu.v1.Registry`) and, later, the node's proxy.
//!
//! The view is replaced as a whole ([`Registry::replace`]) from the records as they are; a
//! watcher of one service ([`Registry::watch`]) wakes only when that service's record changed,
//! appeared or went away, never for another's.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use hsu_model::service::ServiceRecord;
use tokio::sync::watch;

/// A service's name in its namespace.
pub type ServiceKey = (String, String);

/// The view. Cloning gives another handle on the same view.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    services: BTreeMap<ServiceKey, ServiceRecord>,
    /// One channel per watched service, dropped once nobody watches it.
    watched: BTreeMap<ServiceKey, watch::Sender<Option<ServiceRecord>>>,
    /// The store revision the view reflects.
    revision: u64,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Makes `records` the view, as of store `revision`, and wakes the watchers of every service
    /// whose record changed.
    pub fn replace(&self, records: impl IntoIterator<Item = ServiceRecord>, revision: u64) {
        let services: BTreeMap<ServiceKey, ServiceRecord> =
            records.into_iter().map(|r| ((r.namespace.clone(), r.name.clone()), r)).collect();
        let mut inner = lock(&self.inner);
        inner.watched.retain(|key, tx| {
            if tx.receiver_count() == 0 {
                return false;
            }
            let now = services.get(key);
            tx.send_if_modified(|seen| {
                if seen.as_ref() == now {
                    return false;
                }
                *seen = now.cloned();
                true
            });
            true
        });
        inner.services = services;
        inner.revision = revision;
    }

    /// The service's record, every endpoint included (ready or not).
    pub fn get(&self, namespace: &str, name: &str) -> Option<ServiceRecord> {
        lock(&self.inner).services.get(&(namespace.to_string(), name.to_string())).cloned()
    }

    /// The service with only the endpoints a client may be sent to: `None` when no such
    /// service exists.
    pub fn resolve(&self, namespace: &str, name: &str) -> Option<ServiceRecord> {
        self.get(namespace, name).map(ready_only)
    }

    /// Every service of `namespace` (all namespaces when `None`), by name.
    pub fn list(&self, namespace: Option<&str>) -> Vec<ServiceRecord> {
        lock(&self.inner).services.values().filter(|r| namespace.is_none_or(|ns| r.namespace == ns)).cloned().collect()
    }

    /// The store revision the view reflects (0 before it was first fed).
    pub fn revision(&self) -> u64 {
        lock(&self.inner).revision
    }

    /// A watch of one service: [`ServiceWatch::current`] now, [`ServiceWatch::changed`] for what
    /// comes next.
    pub fn watch(&self, namespace: &str, name: &str) -> ServiceWatch {
        let key = (namespace.to_string(), name.to_string());
        let mut inner = lock(&self.inner);
        let now = inner.services.get(&key).cloned();
        let last = now.clone().map(ready_only);
        let rx = match inner.watched.get(&key) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(now);
                inner.watched.insert(key, tx);
                rx
            }
        };
        ServiceWatch { rx, last }
    }
}

/// One service's ready endpoints as they change; see [`Registry::watch`].
pub struct ServiceWatch {
    rx: watch::Receiver<Option<ServiceRecord>>,
    /// What [`ServiceWatch::current`] or [`ServiceWatch::changed`] last returned.
    last: Option<ServiceRecord>,
}

impl ServiceWatch {
    /// The service now, ready endpoints only (`None`: no such service).
    pub fn current(&mut self) -> Option<ServiceRecord> {
        self.last = self.rx.borrow_and_update().clone().map(ready_only);
        self.last.clone()
    }

    /// Waits until the service differs from what this watch last returned (an endpoint became
    /// ready or stopped being one, the service appeared or went away) and returns it. `Err`
    /// when the registry is gone.
    pub async fn changed(&mut self) -> Result<Option<ServiceRecord>, Closed> {
        loop {
            self.rx.changed().await.map_err(|_| Closed)?;
            let now = self.rx.borrow_and_update().clone().map(ready_only);
            if now != self.last {
                self.last = now.clone();
                return Ok(now);
            }
        }
    }
}

/// The registry a watch was taken from is gone.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed;

fn ready_only(mut r: ServiceRecord) -> ServiceRecord {
    r.endpoints.retain(|e| e.ready);
    r
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
