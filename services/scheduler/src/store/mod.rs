//! Durable workflow state behind one trait: `EtcdStore` for clusters (one key per workflow,
//! writes fenced by the leader's election key) and `FileStore` for `quarry up` (one file per
//! workflow under the data directory). A workflow is stored as its protobuf encoding.

mod etcd;
mod file;

use quarry_proto::v1::Workflow;

use crate::error::SchedulerError;

pub use etcd::EtcdStore;
pub use file::FileStore;

/// Where workflows are kept.
#[async_trait::async_trait]
pub trait WorkflowStore: Send + Sync {
    /// Writes these workflows durably before returning; all of them or an error.
    async fn save(&self, workflows: &[Workflow]) -> Result<(), SchedulerError>;
    async fn load(&self, id: &str) -> Result<Option<Workflow>, SchedulerError>;
    /// Every stored workflow.
    async fn list(&self) -> Result<Vec<Workflow>, SchedulerError>;
}

fn decode(id_hint: &str, bytes: &[u8]) -> Result<Workflow, SchedulerError> {
    prost::Message::decode(bytes).map_err(|error| {
        SchedulerError::Store(format!("workflow {id_hint:?} is unreadable: {error}"))
    })
}

fn encode(workflow: &Workflow) -> Vec<u8> {
    prost::Message::encode_to_vec(workflow)
}
