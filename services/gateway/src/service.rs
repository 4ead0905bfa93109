//! The tonic `quarry.v1.Quarry` service: each rpc reads the client's deadline and hands the
//! request to `Gateway`; workflow rpcs are forwarded to the scheduler role.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use quarry_proto::v1::quarry_server::Quarry;
use quarry_proto::v1::{
    AskChunk, AskRequest, AskResponse, CancelWorkflowRequest, ClusterStatusRequest,
    ClusterStatusResponse, CollectionInfo, CreateCollectionRequest, DeleteCollectionRequest,
    DeleteCollectionResponse, DeleteRequest, DeleteResponse, Document, GetCollectionRequest,
    GetDocumentRequest, GetWorkflowRequest, IngestSummary, ListCollectionsRequest,
    ListCollectionsResponse, ListWorkflowsRequest, ListWorkflowsResponse, SearchRequest,
    SearchResponse, SubmitWorkflowRequest, WatchWorkflowRequest, Workflow, WorkflowEvent,
};
use tonic::{Request, Response, Status, Streaming};

use crate::deadline::Deadline;
use crate::error::GatewayError;
use crate::front::CollectionGrant;
use crate::gateway::Gateway;

#[derive(Clone)]
pub struct QuarryService {
    gateway: Arc<Gateway>,
}

impl QuarryService {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

type AskChunkStream = Pin<Box<dyn Stream<Item = Result<AskChunk, Status>> + Send>>;
type WorkflowEventStream = Pin<Box<dyn Stream<Item = Result<WorkflowEvent, Status>> + Send>>;

/// The collections the caller's key may use (`None`: any; the API needs no key).
fn grant_of<T>(request: &Request<T>) -> Option<CollectionGrant> {
    request.extensions().get::<CollectionGrant>().cloned()
}

fn scheduler_failed(status: Status) -> Status {
    GatewayError::downstream("scheduler", status).into()
}

#[tonic::async_trait]
impl Quarry for QuarryService {
    async fn ask(&self, request: Request<AskRequest>) -> Result<Response<AskResponse>, Status> {
        let deadline = Deadline::from_metadata(request.metadata());
        let grant = grant_of(&request);
        let response = self
            .gateway
            .ask(request.into_inner(), grant.as_ref(), deadline)
            .await?;
        Ok(Response::new(response))
    }

    type AskStreamStream = AskChunkStream;

    async fn ask_stream(
        &self,
        request: Request<AskRequest>,
    ) -> Result<Response<Self::AskStreamStream>, Status> {
        let deadline = Deadline::from_metadata(request.metadata());
        let grant = grant_of(&request);
        let stream = Arc::clone(&self.gateway).ask_stream(request.into_inner(), grant, deadline);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn search(
        &self,
        request: Request<SearchRequest>,
    ) -> Result<Response<SearchResponse>, Status> {
        let deadline = Deadline::from_metadata(request.metadata());
        let grant = grant_of(&request);
        let response = self
            .gateway
            .search(request.into_inner(), grant.as_ref(), deadline)
            .await?;
        Ok(Response::new(response))
    }

    async fn ingest(
        &self,
        request: Request<Streaming<Document>>,
    ) -> Result<Response<IngestSummary>, Status> {
        let grant = grant_of(&request);
        let summary = self
            .gateway
            .ingest(request.into_inner(), grant.as_ref())
            .await?;
        Ok(Response::new(summary))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let deadline = Deadline::from_metadata(request.metadata());
        let grant = grant_of(&request);
        let response = self
            .gateway
            .delete(request.into_inner(), grant.as_ref(), deadline)
            .await?;
        Ok(Response::new(response))
    }

    async fn get_document(
        &self,
        request: Request<GetDocumentRequest>,
    ) -> Result<Response<Document>, Status> {
        let deadline = Deadline::from_metadata(request.metadata());
        let grant = grant_of(&request);
        let document = self
            .gateway
            .get_document(request.into_inner(), grant.as_ref(), deadline)
            .await?;
        Ok(Response::new(document))
    }

    async fn cluster_status(
        &self,
        request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        let deadline = Deadline::from_metadata(request.metadata());
        Ok(Response::new(self.gateway.cluster_status(deadline).await?))
    }

    async fn submit_workflow(
        &self,
        request: Request<SubmitWorkflowRequest>,
    ) -> Result<Response<Workflow>, Status> {
        let mut scheduler = self.gateway.clients.scheduler()?;
        scheduler
            .submit(request.into_inner())
            .await
            .map_err(scheduler_failed)
    }

    async fn get_workflow(
        &self,
        request: Request<GetWorkflowRequest>,
    ) -> Result<Response<Workflow>, Status> {
        let mut scheduler = self.gateway.clients.scheduler()?;
        scheduler
            .get(request.into_inner())
            .await
            .map_err(scheduler_failed)
    }

    type WatchWorkflowStream = WorkflowEventStream;

    async fn watch_workflow(
        &self,
        request: Request<WatchWorkflowRequest>,
    ) -> Result<Response<Self::WatchWorkflowStream>, Status> {
        let mut scheduler = self.gateway.clients.scheduler()?;
        let events = scheduler
            .watch(request.into_inner())
            .await
            .map_err(scheduler_failed)?
            .into_inner();
        Ok(Response::new(Box::pin(events)))
    }

    async fn cancel_workflow(
        &self,
        request: Request<CancelWorkflowRequest>,
    ) -> Result<Response<Workflow>, Status> {
        let mut scheduler = self.gateway.clients.scheduler()?;
        scheduler
            .cancel(request.into_inner())
            .await
            .map_err(scheduler_failed)
    }

    async fn list_workflows(
        &self,
        request: Request<ListWorkflowsRequest>,
    ) -> Result<Response<ListWorkflowsResponse>, Status> {
        let mut scheduler = self.gateway.clients.scheduler()?;
        scheduler
            .list(request.into_inner())
            .await
            .map_err(scheduler_failed)
    }

    async fn create_collection(
        &self,
        request: Request<CreateCollectionRequest>,
    ) -> Result<Response<CollectionInfo>, Status> {
        let grant = grant_of(&request);
        let created = self
            .gateway
            .create_collection(request.into_inner(), grant.as_ref())
            .await?;
        Ok(Response::new(created))
    }

    async fn delete_collection(
        &self,
        request: Request<DeleteCollectionRequest>,
    ) -> Result<Response<DeleteCollectionResponse>, Status> {
        let deadline = Deadline::from_metadata(request.metadata());
        let grant = grant_of(&request);
        let deleted = self
            .gateway
            .delete_collection(request.into_inner(), grant.as_ref(), deadline)
            .await?;
        Ok(Response::new(deleted))
    }

    async fn list_collections(
        &self,
        request: Request<ListCollectionsRequest>,
    ) -> Result<Response<ListCollectionsResponse>, Status> {
        let grant = grant_of(&request);
        Ok(Response::new(self.gateway.list_collections(grant.as_ref())))
    }

    async fn get_collection(
        &self,
        request: Request<GetCollectionRequest>,
    ) -> Result<Response<CollectionInfo>, Status> {
        let deadline = Deadline::from_metadata(request.metadata());
        let grant = grant_of(&request);
        let info = self
            .gateway
            .get_collection(request.into_inner(), grant.as_ref(), deadline)
            .await?;
        Ok(Response::new(info))
    }
}
