//! Peer recovery: a replica that (re)joins its shard copies what it missed from a ready peer
//! replica before it is searched, as Elasticsearch's peer recovery does.
//!
//! The joining replica registers as *recovering*: gateways write to it from then on but do
//! not search it. It compares every id's version with a peer's (`ListVersions`), copies the
//! newer documents (`Export`) and deletes, and pushes back to the peer the writes only it
//! holds (acknowledged while the peer was away). With no ready peer, it exchanges writes
//! this way with every other recovering replica (replicas that started together). A second pass after a short settle catches
//! writes from gateways that had not yet seen it joining; then it registers as ready.
//! Versions make every copy idempotent, so live writes and copies can cross in any order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use quarry_kit::discovery::{Discovery, Member};
use quarry_kit::server::lazy_channel;
use quarry_proto::v1::retriever_client::RetrieverClient;
use quarry_proto::v1::{
    Document, ExportRequest, IndexRequest, ListVersionsRequest, ShardDeleteRequest,
};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tracing::{info, warn};

use crate::collections::ShardCollections;
use crate::error::RetrieverError;
use crate::shard::{IdVersion, Shard};
use crate::wire::document_bytes;
use crate::wire::{stored_from_proto, stored_to_proto};

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
    /// Bytes of the documents copied (text, metadata, vectors).
    pub bytes: u64,
    /// Ids (documents and deletes) the peer listed.
    pub listed: u64,
}

impl CatchUpReport {
    fn add(&mut self, other: CatchUpReport) {
        self.copied += other.copied;
        self.deleted += other.deleted;
        self.pushed += other.pushed;
        self.bytes += other.bytes;
        self.listed += other.listed;
    }
}

/// What one catch-up pass reads and whether it writes back.
#[derive(Clone, Copy)]
pub struct PassScope<'a> {
    pub collection: &'a str,
    /// One partition; `None`: the whole collection as the peer lists it.
    pub partition: Option<u32>,
    /// The placement epoch the peer must have reached before it lists.
    pub min_epoch: u64,
    /// Push back what only this side holds (peer replicas of one shard); an import does not.
    pub push: bool,
}

/// How a joining replica recovers.
#[derive(Debug, Clone)]
pub struct RecoveryOptions {
    /// Wait between the two passes: longer than gateways take to see a new member.
    pub settle: Duration,
    /// Wait between the two passes of a partition import. Shorter: writes routed before
    /// the import are refused by the source, not waited out; the second pass is insurance.
    pub import_settle: Duration,
    /// Per-call deadline towards the peer.
    pub call_timeout: Duration,
    /// This replica's certificate, for peers that take mutual TLS.
    pub internal_tls: Option<Arc<quarry_kit::mtls::InternalTlsClient>>,
}

impl Default for RecoveryOptions {
    fn default() -> Self {
        Self {
            settle: Duration::from_secs(1),
            import_settle: Duration::from_millis(100),
            call_timeout: Duration::from_secs(60),
            internal_tls: None,
        }
    }
}

/// Brings `member`'s replica up to date with a ready peer of its shard, then marks it ready.
/// With no ready peer but others recovering (replicas that started together), it exchanges
/// writes both ways with each of those instead; with no other replica at all (the only
/// one) it serves what it holds.
pub async fn recover(
    collections: Arc<ShardCollections>,
    discovery: Arc<dyn Discovery>,
    mut member: Member,
    options: RecoveryOptions,
) -> Result<(), RetrieverError> {
    member.ready = false;
    member.recovering = true;
    update_member(discovery.as_ref(), &member).await;
    let mut passes = 0;
    let mut total = CatchUpReport::default();
    loop {
        let others: Vec<Member> = discovery
            .watch()
            .borrow()
            .shard_write_replicas(member.shard)
            .filter(|peer| peer.node_id != member.node_id)
            .cloned()
            .collect();
        if others.is_empty() {
            info!(
                shard = member.shard,
                replica = member.replica,
                "no other replica of the shard; serving the local copy"
            );
            break;
        }
        let any_ready = others.iter().any(|peer| peer.ready);
        let mut exchanged = false;
        for peer in others.iter().filter(|peer| peer.ready || !any_ready) {
            match copy_from_peer(
                &collections,
                peer,
                options.call_timeout,
                options.internal_tls.as_deref(),
            )
            .await
            {
                Ok(report) => {
                    total.copied += report.copied;
                    total.deleted += report.deleted;
                    total.pushed += report.pushed;
                    exchanged = true;
                    // One ready peer holds every acknowledged write; recovering ones may
                    // each hold some, so all of them are exchanged with.
                    if any_ready {
                        break;
                    }
                }
                Err(error) => {
                    warn!(peer = %peer.address, error = %error, "catching up from a peer failed")
                }
            }
        }
        if !exchanged {
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
    update_member(discovery.as_ref(), &member).await;
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

/// Writes the member's new state, trying again until discovery takes it (etcd may be away
/// for a while; a replica must not stay `recovering` for good because of it).
async fn update_member(discovery: &dyn Discovery, member: &Member) {
    loop {
        match discovery.update(member.clone()).await {
            Ok(()) => return,
            Err(error) => {
                warn!(error = %error, ready = member.ready, "could not publish the replica's state; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

fn peer_error(peer: &str, status: tonic::Status) -> RetrieverError {
    RetrieverError::Internal(format!("{peer}: {}", status.message()))
}

async fn copy_from_peer(
    collections: &ShardCollections,
    peer: &Member,
    call_timeout: Duration,
    internal_tls: Option<&quarry_kit::mtls::InternalTlsClient>,
) -> Result<CatchUpReport, RetrieverError> {
    let mut client = peer_client(peer, internal_tls)?;
    let mut total = CatchUpReport::default();
    let placement = collections.placement();
    let kept: Vec<u32> = (0..placement.partitioning.count())
        .filter(|partition| placement.kept_at(collections.shard(), *partition))
        .collect();
    for collection in collections.names() {
        let index = collections.get(&collection).await?;
        for partition in &kept {
            let part = index.get_or_create_async(*partition).await?;
            let scope = PassScope {
                collection: &collection,
                partition: Some(*partition),
                min_epoch: 0,
                push: true,
            };
            let report = tokio::time::timeout(
                call_timeout * 4,
                catch_up(&part, &mut client, &peer.address, scope, call_timeout, None),
            )
            .await
            .map_err(|_| {
                RetrieverError::Internal(format!(
                    "catching up collection {collection} partition {partition} from {} timed out",
                    peer.address
                ))
            })??;
            total.add(report);
        }
    }
    Ok(total)
}

/// Called with the documents and bytes of each batch a pass copies.
pub type OnCopied<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

/// A retriever client of `peer` (mutual TLS when this replica has a certificate).
pub(crate) fn peer_client(
    peer: &Member,
    internal_tls: Option<&quarry_kit::mtls::InternalTlsClient>,
) -> Result<RetrieverClient<Channel>, RetrieverError> {
    let channel = match internal_tls {
        Some(client) => client
            .endpoint(&peer.address, peer.role, peer.internal_tls)
            .map(|endpoint| endpoint.connect_lazy()),
        None => lazy_channel(&peer.address),
    }
    .map_err(|error| RetrieverError::Internal(error.to_string()))?;
    Ok(RetrieverClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

/// One pass: exchange version lists with the peer and copy every newer write (both ways
/// when `scope.push`).
pub async fn catch_up(
    shard: &Arc<Shard>,
    peer: &mut RetrieverClient<Channel>,
    name: &str,
    scope: PassScope<'_>,
    call_timeout: Duration,
    on_copied: Option<OnCopied<'_>>,
) -> Result<CatchUpReport, RetrieverError> {
    let collection = scope.collection;
    let mut listed = peer
        .list_versions(ListVersionsRequest {
            collection: collection.to_string(),
            partition: scope.partition,
            min_epoch: scope.min_epoch,
        })
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
    let mut plan = plan(&ours, &theirs);
    if !scope.push {
        plan.push.clear();
        plan.push_deletes.clear();
    }
    let mut report = CatchUpReport {
        listed: theirs.len() as u64,
        ..CatchUpReport::default()
    };

    for ids in plan.fetch.chunks(EXPORT_BATCH) {
        let mut exported = peer
            .export(ExportRequest {
                ids: ids.to_vec(),
                collection: collection.to_string(),
                partition: scope.partition,
            })
            .await
            .map_err(|status| peer_error(name, status))?
            .into_inner();
        let mut documents = Vec::with_capacity(ids.len());
        while let Some(message) = exported.next().await {
            let message = message.map_err(|status| peer_error(name, status))?;
            if let Some(document) = message.document {
                documents.push(stored_from_proto(
                    document,
                    message.vector,
                    message.version,
                )?);
            }
        }
        let bytes: u64 = documents.iter().map(document_bytes).sum();
        report.copied += documents.len() as u64;
        report.bytes += bytes;
        let count = documents.len() as u64;
        blocking(shard, move |shard| shard.upsert(&documents)).await?;
        if let Some(on_copied) = on_copied {
            on_copied(count, bytes);
        }
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
            .map(|mut document| IndexRequest {
                version: document.version,
                vector: std::mem::take(&mut document.vector),
                document: Some(Document {
                    collection: collection.to_string(),
                    ..stored_to_proto(document)
                }),
                placement_epoch: 0,
            })
            .collect();
        let mut call = tonic::Request::new(tokio_stream::iter(requests));
        call.set_timeout(call_timeout);
        peer.index(call)
            .await
            .map_err(|status| peer_error(name, status))?;
    }
    let mut deletes_by_version: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
    for (id, version) in plan.push_deletes {
        deletes_by_version.entry(version).or_default().push(id);
    }
    for (version, ids) in deletes_by_version {
        report.pushed += ids.len() as u64;
        let mut call = tonic::Request::new(ShardDeleteRequest {
            ids,
            version,
            collection: collection.to_string(),
            placement_epoch: 0,
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
    use crate::shard::StoredDocument;

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

    fn document(id: &str, text: &str, version: u64) -> StoredDocument {
        StoredDocument {
            id: id.to_string(),
            title: id.to_string(),
            text: text.to_string(),
            metadata: Default::default(),
            vector: vec![1.0, 0.0, version as f32],
            version,
        }
    }

    /// Serves `shard` on a free local port; returns a client of it.
    async fn serve(collections: Arc<ShardCollections>) -> RetrieverClient<Channel> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let service = quarry_proto::v1::retriever_server::RetrieverServer::new(
            crate::service::RetrieverService::new(collections),
        );
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        RetrieverClient::connect(address).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_pass_leaves_both_replicas_with_the_newest_write_of_every_id() {
        let (here_dir, there_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let open = |directory: &std::path::Path, replica| {
            let catalog = quarry_kit::collections::CollectionCatalog::watch(
                &quarry_kit::collections::LocalCatalog::fixed(),
            );
            Arc::new(
                ShardCollections::open(
                    directory,
                    0,
                    replica,
                    20_000_000,
                    catalog,
                    crate::collections::one_partition(),
                )
                .unwrap(),
            )
        };
        let there_collections = open(there_dir.path(), 1);
        let here = open(here_dir.path(), 0)
            .default_collection()
            .get_or_create(0)
            .unwrap();
        let there = there_collections
            .default_collection()
            .get_or_create(0)
            .unwrap();
        // Both had a and b; then each took writes while the other was away.
        for shard in [&here, &there] {
            shard
                .upsert(&[document("a", "alpha", 1), document("b", "beta", 1)])
                .unwrap();
        }
        here.upsert(&[
            document("a", "alpha, revised here", 5),
            document("c", "only here", 6),
        ])
        .unwrap();
        here.delete(&["b".to_string()], 7).unwrap();
        there
            .upsert(&[
                document("d", "only there", 4),
                document("a", "older revision", 3),
            ])
            .unwrap();
        there.delete(&["e".to_string()], 8).unwrap();

        let mut peer = serve(there_collections).await;
        let scope = PassScope {
            collection: "default",
            partition: Some(0),
            min_epoch: 0,
            push: true,
        };
        let report = catch_up(
            &here,
            &mut peer,
            "there",
            scope,
            Duration::from_secs(10),
            None,
        )
        .await
        .unwrap();
        assert_eq!(
            report,
            CatchUpReport {
                copied: 1,
                deleted: 1,
                pushed: 3,
                bytes: report.bytes,
                listed: 4,
            }
        );
        assert_eq!(here.versions().unwrap(), there.versions().unwrap());
        for shard in [&here, &there] {
            let texts: Vec<String> = shard
                .fetch(&[
                    "a".to_string(),
                    "b".to_string(),
                    "c".to_string(),
                    "d".to_string(),
                ])
                .unwrap()
                .into_iter()
                .map(|document| document.text)
                .collect();
            assert_eq!(texts, ["alpha, revised here", "only here", "only there"]);
            assert_eq!(shard.num_vectors(), 3);
        }
        // A second pass finds nothing left to move.
        let again = catch_up(
            &here,
            &mut peer,
            "there",
            scope,
            Duration::from_secs(10),
            None,
        )
        .await
        .unwrap();
        assert_eq!((again.copied, again.deleted, again.pushed), (0, 0, 0));
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
