//! Workflows in etcd at `/quarry/<cluster>/workflows/<id>`. A leader's writes are fenced:
//! each transaction succeeds only while the leader's election key still has the creation
//! revision it had when this leader was elected, so a deposed leader cannot overwrite its
//! successor's state. Many workflows are written in concurrent transactions of bounded size.

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use futures::future::try_join_all;
use quarry_proto::v1::Workflow;

use super::{decode, encode, WorkflowStore};
use crate::error::SchedulerError;

/// etcd refuses transactions of more than 128 operations by default.
const MAX_OPS_PER_TXN: usize = 100;
/// and requests over 1.5 MiB.
const MAX_BYTES_PER_TXN: usize = 1024 * 1024;

fn store_error(error: etcd_client::Error) -> SchedulerError {
    SchedulerError::Store(format!("etcd: {error}"))
}

/// The election key and its creation revision that writes are conditioned on.
#[derive(Debug, Clone)]
struct Fence {
    key: Vec<u8>,
    revision: i64,
}

#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
    fence: Option<Fence>,
}

impl EtcdStore {
    /// Unfenced: for reads (and for a single writer such as a benchmark).
    pub fn new(client: Client, cluster: &str) -> Self {
        Self {
            client,
            prefix: format!("/quarry/{cluster}/workflows/"),
            fence: None,
        }
    }

    /// Writes succeed only while `leader_key` exists with creation revision `revision`.
    pub fn fenced(&self, leader_key: Vec<u8>, revision: i64) -> Self {
        Self {
            fence: Some(Fence {
                key: leader_key,
                revision,
            }),
            ..self.clone()
        }
    }

    fn key(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    async fn save_chunk(&self, operations: Vec<TxnOp>) -> Result<(), SchedulerError> {
        let mut client = self.client.clone();
        let mut txn = Txn::new();
        if let Some(fence) = &self.fence {
            txn = txn.when([Compare::create_revision(
                fence.key.clone(),
                CompareOp::Equal,
                fence.revision,
            )]);
        }
        let response = client
            .txn(txn.and_then(operations))
            .await
            .map_err(store_error)?;
        if !response.succeeded() {
            return Err(SchedulerError::Deposed);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl WorkflowStore for EtcdStore {
    async fn save(&self, workflows: &[Workflow]) -> Result<(), SchedulerError> {
        let mut chunks: Vec<Vec<TxnOp>> = Vec::new();
        let mut current = Vec::new();
        let mut current_bytes = 0;
        for workflow in workflows {
            let value = encode(workflow);
            if !current.is_empty()
                && (current.len() >= MAX_OPS_PER_TXN
                    || current_bytes + value.len() > MAX_BYTES_PER_TXN)
            {
                chunks.push(std::mem::take(&mut current));
                current_bytes = 0;
            }
            current_bytes += value.len();
            current.push(TxnOp::put(self.key(&workflow.id), value, None));
        }
        if !current.is_empty() {
            chunks.push(current);
        }
        try_join_all(chunks.into_iter().map(|chunk| self.save_chunk(chunk))).await?;
        Ok(())
    }

    async fn load(&self, id: &str) -> Result<Option<Workflow>, SchedulerError> {
        let mut client = self.client.clone();
        let response = client.get(self.key(id), None).await.map_err(store_error)?;
        match response.kvs().first() {
            Some(entry) => Ok(Some(decode(id, entry.value())?)),
            None => Ok(None),
        }
    }

    async fn list(&self) -> Result<Vec<Workflow>, SchedulerError> {
        let mut client = self.client.clone();
        let response = client
            .get(self.prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(store_error)?;
        response
            .kvs()
            .iter()
            .map(|entry| decode(&String::from_utf8_lossy(entry.key()), entry.value()))
            .collect()
    }
}
