//! The scheduler role: durable multi-step agent workflows (a DAG of steps).
//!
//! Today this crate serves the `quarry.v1.Scheduler` contract with UNIMPLEMENTED on every
//! rpc, so that clients, the gateway and the cluster layout are already in place; the
//! workflow engine (validation, DAG execution, durable state, leader election) lands in the
//! workflows issue and will replace `UnimplementedScheduler`.

use std::pin::Pin;

use futures::Stream;
use quarry_proto::v1::scheduler_server::Scheduler;
use quarry_proto::v1::{
    CancelWorkflowRequest, GetWorkflowRequest, ListWorkflowsRequest, ListWorkflowsResponse,
    SubmitWorkflowRequest, WatchWorkflowRequest, Workflow, WorkflowEvent,
};
use tonic::{Request, Response, Status};

const NOT_YET: &str = "workflows are not implemented yet in this Quarry version";

/// Answers every scheduler rpc with UNIMPLEMENTED.
#[derive(Debug, Clone, Default)]
pub struct UnimplementedScheduler;

type EventStream = Pin<Box<dyn Stream<Item = Result<WorkflowEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Scheduler for UnimplementedScheduler {
    async fn submit(
        &self,
        _request: Request<SubmitWorkflowRequest>,
    ) -> Result<Response<Workflow>, Status> {
        Err(Status::unimplemented(NOT_YET))
    }

    async fn get(
        &self,
        _request: Request<GetWorkflowRequest>,
    ) -> Result<Response<Workflow>, Status> {
        Err(Status::unimplemented(NOT_YET))
    }

    type WatchStream = EventStream;

    async fn watch(
        &self,
        _request: Request<WatchWorkflowRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented(NOT_YET))
    }

    async fn cancel(
        &self,
        _request: Request<CancelWorkflowRequest>,
    ) -> Result<Response<Workflow>, Status> {
        Err(Status::unimplemented(NOT_YET))
    }

    async fn list(
        &self,
        _request: Request<ListWorkflowsRequest>,
    ) -> Result<Response<ListWorkflowsResponse>, Status> {
        Err(Status::unimplemented(NOT_YET))
    }
}
