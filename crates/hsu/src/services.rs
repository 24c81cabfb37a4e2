//! Feeds a server node's registry from its own store replica: the service records as they are
//! now, then again after each change under their prefix, until the node stops.

use std::time::Duration;

use hsu_model::keys;
use hsu_store::KeyRange;
use tracing::{debug, warn};

use crate::node::Node;

/// Runs until the node stops.
pub(crate) async fn feed(node: Node) {
    let within = keys::SERVICES.all();
    loop {
        let read = node.store().range_local(&KeyRange::from(&within), 0);
        let (records, bad) = hsu_store::record::records_in(&within, read.kvs);
        for (key, e) in &bad {
            warn!(key = %String::from_utf8_lossy(key), "service record does not decode: {e}");
        }
        node.registry().replace(records.into_iter().map(|v| v.value), read.revision);
        match node.store().watch(KeyRange::from(&within), read.revision + 1) {
            Ok(mut watcher) => {
                tokio::select! {
                    _ = watcher.next() => {}
                    () = node.stopped() => return,
                }
            }
            Err(e) => {
                debug!("service watch: {e}; reading again");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    () = node.stopped() => return,
                }
            }
        }
    }
}
