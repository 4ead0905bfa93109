//! The tonic `quarry.v1.Scheduler` service: each rpc calls the replica's plain API
//! (`SchedulerNode`) and maps its error to a gRPC status.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use quarry_proto::v1::scheduler_server::Scheduler;
use quarry_proto::v1::{
    CancelWorkflowRequest, GetWorkflowRequest, ListWorkflowsRequest, ListWorkflowsResponse,
    SubmitWorkflowRequest, WatchWorkflowRequest, Workflow, WorkflowEvent,
};
use tonic::{Request, Response, Status};

use crate::node::SchedulerNode;

pub struct SchedulerService {
    node: Arc<SchedulerNode>,
}

impl SchedulerService {
    pub fn new(node: Arc<SchedulerNode>) -> Self {
        Self { node }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<WorkflowEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Scheduler for SchedulerService {
    async fn submit(
        &self,
        request: Request<SubmitWorkflowRequest>,
    ) -> Result<Response<Workflow>, Status> {
        Ok(Response::new(self.node.submit(request.into_inner()).await?))
    }

    async fn get(
        &self,
        request: Request<GetWorkflowRequest>,
    ) -> Result<Response<Workflow>, Status> {
        Ok(Response::new(self.node.get(request.into_inner().id).await?))
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<WatchWorkflowRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let states = self.node.watch(request.into_inner().id).await?;
        let events = states.map(|state| {
            state.map(|workflow| WorkflowEvent {
                workflow: Some(workflow),
            })
        });
        Ok(Response::new(Box::pin(events)))
    }

    async fn cancel(
        &self,
        request: Request<CancelWorkflowRequest>,
    ) -> Result<Response<Workflow>, Status> {
        Ok(Response::new(
            self.node.cancel(request.into_inner().id).await?,
        ))
    }

    async fn list(
        &self,
        _request: Request<ListWorkflowsRequest>,
    ) -> Result<Response<ListWorkflowsResponse>, Status> {
        let workflows = self.node.list().await?;
        Ok(Response::new(ListWorkflowsResponse { workflows }))
    }
}
