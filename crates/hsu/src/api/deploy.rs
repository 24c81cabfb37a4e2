//! `hsu.v1.Deployments` over the node: apply, views, delete, rollout actions.

use hsu_model::state::{DeploymentRecord, Desired};
use hsu_proto::v1 as pb;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use super::auth::{authorize, Need};
use super::convert::namespace_or_default;
use crate::deployments::{DeploymentView, InstanceView};
use crate::node::Node;

pub struct DeploymentsApi {
    pub node: Node,
}

fn info(v: &DeploymentView) -> pb::DeploymentInfo {
    let r = &v.record;
    pb::DeploymentInfo {
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        replicas: r.spec.0.replicas,
        ready: v.ready,
        up_to_date: v.up_to_date,
        available: v.available,
        revision: r.revision,
        stable_revision: r.stable_revision,
        phase: r.phase.to_string(),
        paused: r.is_paused(),
        generation: r.generation,
        rolled_back_from: r.rolled_back_from.unwrap_or(0),
        unplaced: r.unplaced.clone().unwrap_or_default(),
        message: r.events.last().map(|e| e.message.clone()).unwrap_or_default(),
        total: v.total,
        failure: r.failure.clone().unwrap_or_default(),
    }
}

fn job_info(j: &hsu_model::state::JobRecord) -> pb::JobInfo {
    let spec = &j.spec.0;
    pb::JobInfo {
        namespace: j.namespace.clone(),
        name: j.name.clone(),
        completions: spec.completions,
        parallelism: spec.parallelism,
        retries: spec.retries,
        dispatch_only: spec.dispatch_only,
        runs: j
            .runs
            .iter()
            .map(|r| pb::JobRunInfo {
                run: r.id,
                phase: r.phase.to_string(),
                succeeded: r.succeeded,
                failed: r.failed,
                started_ms: r.started_ms,
                finished_ms: r.finished_ms.unwrap_or(0),
                env: r.env.clone().into_iter().collect(),
            })
            .collect(),
        unplaced: j.unplaced.clone().unwrap_or_default(),
        message: j.events.last().map(|e| e.message.clone()).unwrap_or_default(),
    }
}

fn instance(v: &InstanceView) -> pb::InstanceInfo {
    let r = &v.record;
    pb::InstanceInfo {
        name: r.id.clone(),
        namespace: r.namespace.clone(),
        deployment: r.owner.clone(),
        revision: r.revision,
        node: v.node_name.clone(),
        node_id: r.node,
        state: v.state.clone(),
        ready: v.ready,
        desired: match r.desired {
            Desired::Run => "run".into(),
            Desired::Stop => "stop".into(),
        },
        restarts: v.restarts,
        message: v.message.clone().unwrap_or_default(),
        created_ms: r.created_ms,
    }
}

impl DeploymentsApi {
    async fn view(&self, namespace: &str, name: &str) -> Result<DeploymentView, Status> {
        self.node
            .deployments_view(namespace, name)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| Status::not_found(format!("deployment {namespace}/{name} not found")))
    }

    async fn info_of(&self, rec: &DeploymentRecord) -> Result<pb::DeploymentInfo, Status> {
        Ok(info(&self.view(&rec.namespace, &rec.name).await?))
    }
}

type LogStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::LogChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::deployments_server::Deployments for DeploymentsApi {
    type LogsStream = LogStream;

    async fn list_jobs(&self, req: Request<pb::ListRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        authorize(&self.node, &req, Need::Read)?;
        let r = req.into_inner();
        let jobs = self.node.jobs_view(&r.namespace, &r.name).await?;
        if !r.name.is_empty() && jobs.is_empty() {
            return Err(Status::not_found(format!("job {:?} not found", r.name)));
        }
        Ok(Response::new(pb::ListJobsResponse { jobs: jobs.iter().map(job_info).collect() }))
    }

    async fn dispatch_job(
        &self,
        req: Request<pb::DispatchJobRequest>,
    ) -> Result<Response<pb::DispatchJobResponse>, Status> {
        authorize(&self.node, &req, Need::Write)?;
        let r = req.into_inner();
        let run =
            self.node.dispatch_job(namespace_or_default(&r.namespace), &r.name, r.env.into_iter().collect()).await?;
        Ok(Response::new(pb::DispatchJobResponse { run }))
    }

    async fn delete_job(
        &self,
        req: Request<pb::NameRequest>,
    ) -> Result<Response<pb::DeleteDeploymentResponse>, Status> {
        authorize(&self.node, &req, Need::Write)?;
        let r = req.into_inner();
        self.node.delete_job(namespace_or_default(&r.namespace), &r.name).await?;
        Ok(Response::new(pb::DeleteDeploymentResponse {}))
    }

    async fn logs(&self, req: Request<pb::LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        authorize(&self.node, &req, Need::Read)?;
        let r = req.into_inner();
        if r.deployment.is_empty() == r.instance.is_empty() {
            return Err(Status::invalid_argument("name either a deployment or an instance"));
        }
        let ask = crate::peer::LogAsk { unit: String::new(), stderr: r.stderr, tail: r.tail, follow: r.follow };
        let instance = (!r.instance.is_empty()).then_some(r.instance.as_str());
        let lines = self.node.logs(namespace_or_default(&r.namespace), &r.deployment, instance, ask).await?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(lines)
            .map(|l| Ok(pb::LogChunk { instance: l.instance, node: l.node, text: l.text }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn apply(&self, req: Request<pb::ApplyRequest>) -> Result<Response<pb::ApplyResponse>, Status> {
        authorize(&self.node, &req, Need::Write)?;
        let r = req.into_inner();
        if r.files.is_empty() {
            return Err(Status::invalid_argument("files: at least one file is needed"));
        }
        let files: Vec<(String, String)> = r.files.into_iter().map(|f| (f.name, f.content)).collect();
        let applied = self.node.apply_documents(&files, r.dry_run).await?;
        Ok(Response::new(pb::ApplyResponse {
            objects: applied
                .into_iter()
                .map(|a| pb::AppliedObject {
                    kind: a.kind,
                    namespace: a.namespace,
                    name: a.name,
                    result: a.result.into(),
                    revision: a.revision,
                })
                .collect(),
        }))
    }

    async fn list_deployments(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
        authorize(&self.node, &req, Need::Read)?;
        let r = req.into_inner();
        let views = self.node.deployments_view(&r.namespace, &r.name).await?;
        if !r.name.is_empty() && views.is_empty() {
            return Err(Status::not_found(format!("deployment {:?} not found", r.name)));
        }
        Ok(Response::new(pb::ListDeploymentsResponse { deployments: views.iter().map(info).collect() }))
    }

    async fn list_instances(
        &self,
        req: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        authorize(&self.node, &req, Need::Read)?;
        let r = req.into_inner();
        let views = self.node.instances_view(&r.namespace, &r.name).await?;
        Ok(Response::new(pb::ListInstancesResponse { instances: views.iter().map(instance).collect() }))
    }

    async fn describe(&self, req: Request<pb::NameRequest>) -> Result<Response<pb::DeploymentDetail>, Status> {
        authorize(&self.node, &req, Need::Read)?;
        let r = req.into_inner();
        let ns = namespace_or_default(&r.namespace);
        let view = self.view(ns, &r.name).await?;
        let revisions = self.node.revisions(ns, &r.name).await?;
        let instances = self.node.instances_view(ns, &r.name).await?;
        let rec = &view.record;
        Ok(Response::new(pb::DeploymentDetail {
            deployment: Some(info(&view)),
            revisions: revisions
                .iter()
                .map(|v| pb::RevisionInfo {
                    number: v.number,
                    created_ms: v.created_ms,
                    command: v.template.0.command.as_ref().map_or_else(String::new, |c| {
                        std::iter::once(c.program())
                            .chain(c.args().iter().map(String::as_str))
                            .collect::<Vec<_>>()
                            .join(" ")
                    }),
                    current: v.number == rec.revision,
                })
                .collect(),
            events: rec.events.iter().map(|e| pb::EventInfo { at_ms: e.at_ms, message: e.message.clone() }).collect(),
            instances: instances.iter().map(instance).collect(),
            spec_json: serde_json::to_string(&rec.spec.0).unwrap_or_default(),
        }))
    }

    async fn delete(&self, req: Request<pb::NameRequest>) -> Result<Response<pb::DeleteDeploymentResponse>, Status> {
        authorize(&self.node, &req, Need::Write)?;
        let r = req.into_inner();
        self.node.delete_deployment(namespace_or_default(&r.namespace), &r.name).await?;
        Ok(Response::new(pb::DeleteDeploymentResponse {}))
    }

    async fn rollout(&self, req: Request<pb::RolloutRequest>) -> Result<Response<pb::RolloutResponse>, Status> {
        authorize(&self.node, &req, Need::Write)?;
        let r = req.into_inner();
        let to = (r.to_revision != 0).then_some(r.to_revision);
        let rec = self.node.rollout_action(namespace_or_default(&r.namespace), &r.name, &r.action, to).await?;
        Ok(Response::new(pb::RolloutResponse { deployment: Some(self.info_of(&rec).await?) }))
    }
}
