//! `hsu get services` and `hsu describe service`: the registry as the node asked sees it.

use hsu_proto::v1 as pb;
use hsu_sdk::client::{self, ClientConfig};

use crate::output::{print, table, Format};
use crate::status;

/// `hsu get services [NAME] [-n NS]`: every endpoint, ready or not.
pub async fn get(
    cfg: &ClientConfig,
    endpoint: Option<&str>,
    out: Format,
    name: Option<String>,
    namespace: Option<String>,
) -> anyhow::Result<()> {
    let mut api = client::connect_registry(cfg, endpoint).await?;
    let req = pb::ListServicesRequest { namespace: namespace.unwrap_or_default() };
    let mut list = api.list_services(req).await.map_err(status)?.into_inner().services;
    if let Some(name) = &name {
        list.retain(|s| s.name == *name);
    }
    print(out, &list, |_| {
        let rows = list
            .iter()
            .map(|s| {
                let ready = s.endpoints.iter().filter(|e| e.ready).count();
                let on: Vec<String> =
                    s.endpoints.iter().filter(|e| e.ready).map(|e| format!("{}/{}", e.node, e.address)).collect();
                vec![
                    s.namespace.clone(),
                    s.name.clone(),
                    s.deployment.clone(),
                    s.port.clone(),
                    format!("{ready}/{}", s.endpoints.len()),
                    if on.is_empty() { "<none>".into() } else { on.join(",") },
                ]
            })
            .collect();
        table(&["NAMESPACE", "NAME", "DEPLOYMENT", "PORT", "READY", "ENDPOINTS"], rows)
    })
}

/// `hsu describe service NAME`: the service and each endpoint.
pub async fn describe(
    cfg: &ClientConfig,
    endpoint: Option<&str>,
    out: Format,
    name: String,
    namespace: String,
) -> anyhow::Result<()> {
    let mut api = client::connect_registry(cfg, endpoint).await?;
    let req = pb::ListServicesRequest { namespace: namespace.clone() };
    let list = api.list_services(req).await.map_err(status)?.into_inner().services;
    let Some(s) = list.into_iter().find(|s| s.name == name) else {
        anyhow::bail!("service {namespace}/{name} not found: no deployment provides it");
    };
    print(out, &s, |_| {
        let mut text = format!(
            "Name:        {}\nNamespace:   {}\nDeployment:  {}\nPort:        {}\nEndpoints:   {} ready of {}\n\n",
            s.name,
            s.namespace,
            s.deployment,
            s.port,
            s.endpoints.iter().filter(|e| e.ready).count(),
            s.endpoints.len()
        );
        let rows = s
            .endpoints
            .iter()
            .map(|e| vec![e.instance.clone(), e.node.clone(), e.address.clone(), e.ready.to_string()])
            .collect();
        text.push_str(&table(&["INSTANCE", "NODE", "ADDRESS", "READY"], rows));
        text
    })
}
