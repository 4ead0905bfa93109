//! Peer recovery: a replica that (re)joins its shard copies what it missed from a ready peer
//! replica before it is searched, as Elasticsearch's peer recovery does.
//!
//! The joining replica registers as *recovering*: gateways write to it from then on but do
//! not search it. It compares every id's version with a peer's (`ListVersions`), copies the
//! newer documents (`Export`) and deletes, and pushes back to the peer the writes only it
//! holds (acknowledged while the peer was away). A second pass after a short settle catches
//! writes from gateways that had not yet seen it joining; then it registers as ready.
//! Versions make every copy idempotent, so live writes and copies can cross in any order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use quarry_kit::discovery::{Discovery, Member};
use quarry_kit::server::lazy_channel;
use quarry_proto::v1::retriever_client::RetrieverClient;
use quarry_proto::v1::{ExportRequest, IndexRequest, ListVersionsRequest, ShardDeleteRequest};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tracing::{info, warn};

use crate::error::RetrieverError;
use crate::shard::{IdVersion, Shard, StoredDocument};

/// Ids per `Export` request during a copy.
const EXPORT_BATCH: usize = 512;
/// Pause before trying again when no peer could be copied from.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// What one pass moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CatchUpReport {
    /// Documents copied from the peer.
    pub copied: u64,
    /// Deletes copied from the peer.
    pub deleted: u64,
    /// Documents and deletes only this replica held, pushed to the peer.
    pub pushed: u64,
}

/// How a joining replica recovers.
#[derive(Debug, Clone, Copy)]
pub struct RecoveryOptions {
    /// Wait between the two passes: longer than gateways take to see a new member.
    pub settle: Duration,
    /// Per-call deadline towards the peer.
    pub call_timeout: Duration,
}

impl Default for RecoveryOptions {
    fn default() -> Self {
        Self {
            settle: Duration::from_secs(1),
            call_timeout: Duration::from_secs(60),
        }
    }
}

/// Brings `member`'s replica up to date with a ready peer of its shard, then marks it ready.
/// With no ready peer (the first replica back, or the only one) it serves what it holds.
pub async fn recover(
    shard: Arc<Shard>,
    discovery: Arc<dyn Discovery>,
    mut member: Member,
    options: RecoveryOptions,
) -> Result<(), RetrieverError> {
    member.ready = false;
    member.recovering = true;
    discovery.update(member.clone()).await.map_err(kit_error)?;
    let mut passes = 0;
    let mut total = CatchUpReport::default();
    loop {
        let peers: Vec<Member> = discovery
            .watch()
            .borrow()
            .shard_replicas(member.shard)
            .filter(|peer| peer.node_id != member.node_id)
            .cloned()
            .collect();
        if peers.is_empty() {
            info!(
                shard = member.shard,
                replica = member.replica,
                "no ready peer replica; serving the local copy"
            );
            break;
        }
        let mut caught_up = false;
        for peer in &peers {
            match copy_from_peer(&shard, peer, options.call_timeout).await {
                Ok(report) => {
                    total.copied += report.copied;
                    total.deleted += report.deleted;
                    total.pushed += report.pushed;
                    caught_up = true;
                    break;
                }
                Err(error) => {
                    warn!(peer = %peer.address, error = %error, "catching up from a peer failed")
                }
            }
        }
        if !caught_up {
            tokio::time::sleep(RETRY_PAUSE).await;
            continue;
        }
        passes += 1;
        if passes == 2 {
            break;
        }
        tokio::time::sleep(options.settle).await;
    }
    member.ready = true;
    member.recovering = false;
    discovery.update(member.clone()).await.map_err(kit_error)?;
    info!(
        shard = member.shard,
        replica = member.replica,
        copied = total.copied,
        deleted = total.deleted,
        pushed = total.pushed,
        "replica caught up; serving"
    );
    Ok(())
}

fn kit_error(error: quarry_kit::KitError) -> RetrieverError {
    RetrieverError::Internal(format!("discovery: {error}"))
}

fn peer_error(peer: &str, status: tonic::Status) -> RetrieverError {
    RetrieverError::Internal(format!("{peer}: {}", status.message()))
}

async fn copy_from_peer(
    shard: &Arc<Shard>,
    peer: &Member,
    call_timeout: Duration,
) -> Result<CatchUpReport, RetrieverError> {
    let channel =
        lazy_channel(&peer.address).map_err(|error| RetrieverError::Internal(error.to_string()))?;
    let mut client = RetrieverClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    tokio::time::timeout(call_timeout * 4, catch_up(shard, &mut client, call_timeout))
        .await
        .map_err(|_| {
            RetrieverError::Internal(format!("catching up from {} timed out", peer.address))
        })?
}

/// One pass: exchange version lists with the peer and copy every newer write both ways.
pub async fn catch_up(
    shard: &Arc<Shard>,
    peer: &mut RetrieverClient<Channel>,
    call_timeout: Duration,
) -> Result<CatchUpReport, RetrieverError> {
    let name = "peer";
    let mut listed = peer
        .list_versions(ListVersionsRequest {})
        .await
        .map_err(|status| peer_error(name, status))?
        .into_inner();
    let mut theirs: HashMap<String, IdVersion> = HashMap::new();
    while let Some(entry) = listed.next().await {
        let entry = entry.map_err(|status| peer_error(name, status))?;
        theirs.insert(
            entry.id.clone(),
            IdVersion {
                id: entry.id,
                version: entry.version,
                deleted: entry.deleted,
            },
        );
    }
    let ours: HashMap<String, IdVersion> = blocking(shard, |shard| shard.versions())
        .await?
        .into_iter()
        .map(|entry| (entry.id.clone(), entry))
        .collect();
    let plan = plan(&ours, &theirs);
    let mut report = CatchUpReport::default();

    for ids in plan.fetch.chunks(EXPORT_BATCH) {
        let mut exported = peer
            .export(ExportRequest { ids: ids.to_vec() })
            .await
            .map_err(|status| peer_error(name, status))?
            .into_inner();
        let mut documents = Vec::with_capacity(ids.len());
        while let Some(message) = exported.next().await {
            let message = message.map_err(|status| peer_error(name, status))?;
            if let Some(document) = message.document {
                documents.push(StoredDocument {
                    id: document.id,
                    title: document.title,
                    text: document.text,
                    metadata: document.metadata.into_iter().collect(),
                    vector: message.vector,
                    version: message.version,
                });
            }
        }
        report.copied += documents.len() as u64;
        blocking(shard, move |shard| shard.upsert(&documents)).await?;
    }
    if !plan.delete.is_empty() {
        report.deleted = plan.delete.len() as u64;
        let deletes = plan.delete;
        blocking(shard, move |shard| shard.apply_deletes(&deletes)).await?;
    }

    for ids in plan.push.chunks(EXPORT_BATCH) {
        let ids = ids.to_vec();
        let documents = blocking(shard, move |shard| shard.fetch(&ids)).await?;
        report.pushed += documents.len() as u64;
        let requests: Vec<IndexRequest> = documents
            .into_iter()
            .map(|document| IndexRequest {
                version: document.version,
                vector: document.vector,
                document: Some(quarry_proto::v1::Document {
                    id: document.id,
                    title: document.title,
                    text: document.text,
                    metadata: document.metadata.into_iter().collect(),
                }),
            })
            .collect();
        let mut call = tonic::Request::new(tokio_stream::iter(requests));
        call.set_timeout(call_timeout);
        peer.index(call)
            .await
            .map_err(|status| peer_error(name, status))?;
    }
    for (id, version) in plan.push_deletes {
        report.pushed += 1;
        let mut call = tonic::Request::new(ShardDeleteRequest {
            ids: vec![id],
            version,
        });
        call.set_timeout(call_timeout);
        peer.delete(call)
            .await
            .map_err(|status| peer_error(name, status))?;
    }
    Ok(report)
}

/// What one pass moves, decided from both sides' versions.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// Ids whose newer write on the peer is a document.
    fetch: Vec<String>,
    /// Newer deletes on the peer.
    delete: Vec<(String, u64)>,
    /// Ids whose newer write here is a document.
    push: Vec<String>,
    /// Newer deletes here.
    push_deletes: Vec<(String, u64)>,
}

fn plan(ours: &HashMap<String, IdVersion>, theirs: &HashMap<String, IdVersion>) -> Plan {
    let mut plan = Plan::default();
    for (id, their) in theirs {
        if ours.get(id).is_some_and(|our| our.version >= their.version) {
            continue;
        }
        if their.deleted {
            plan.delete.push((id.clone(), their.version));
        } else {
            plan.fetch.push(id.clone());
        }
    }
    for (id, our) in ours {
        if theirs
            .get(id)
            .is_some_and(|their| their.version >= our.version)
        {
            continue;
        }
        if our.deleted {
            plan.push_deletes.push((id.clone(), our.version));
        } else {
            plan.push.push(id.clone());
        }
    }
    plan.fetch.sort();
    plan.delete.sort();
    plan.push.sort();
    plan.push_deletes.sort();
    plan
}

async fn blocking<T, F>(shard: &Arc<Shard>, work: F) -> Result<T, RetrieverError>
where
    T: Send + 'static,
    F: FnOnce(&Shard) -> Result<T, RetrieverError> + Send + 'static,
{
    let shard = Arc::clone(shard);
    tokio::task::spawn_blocking(move || work(&shard))
        .await
        .map_err(|error| RetrieverError::Internal(format!("shard task failed: {error}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(entries: &[(&str, u64, bool)]) -> HashMap<String, IdVersion> {
        entries
            .iter()
            .map(|(id, version, deleted)| {
                (
                    id.to_string(),
                    IdVersion {
                        id: id.to_string(),
                        version: *version,
                        deleted: *deleted,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn the_newer_write_of_each_id_moves_to_the_side_that_lacks_it() {
        let ours = versions(&[
            ("same", 5, false),
            ("stale", 1, false),
            ("only-ours", 3, false),
            ("deleted-here", 9, true),
            ("resurrected-there", 2, true),
        ]);
        let theirs = versions(&[
            ("same", 5, false),
            ("stale", 4, false),
            ("only-theirs", 2, false),
            ("deleted-here", 8, false),
            ("resurrected-there", 6, false),
            ("deleted-there", 7, true),
        ]);
        let plan = plan(&ours, &theirs);
        assert_eq!(
            plan.fetch,
            vec!["only-theirs", "resurrected-there", "stale"]
        );
        assert_eq!(plan.delete, vec![("deleted-there".to_string(), 7)]);
        assert_eq!(plan.push, vec!["only-ours"]);
        assert_eq!(plan.push_deletes, vec![("deleted-here".to_string(), 9)]);
    }
}
