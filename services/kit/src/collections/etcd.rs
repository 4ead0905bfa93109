//! The catalog in etcd: `/quarry/<cluster>/collections/<name>/record` holds a collection's
//! record (JSON), created by a transaction that fails when the key exists; deleting a
//! collection deletes its prefix in one transaction. `/quarry/<cluster>/collections/<name>/writes`
//! is put after every acknowledged write, and its revision is the collection's generation,
//! the same for every gateway. `/quarry/<cluster>/collections/<name>/fields/<kind>/<path>`
//! records that a metadata field has held a kind of value (one key per pair, so gateways
//! recording at once never overwrite each other). A follower lists the prefix and watches from that revision,
//! listing again after a compaction or a broken watch; the first list happens before
//! `connect` returns, so nobody acts on an empty catalog that is merely not read yet.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    check_create, check_delete, new_record, CatalogError, CatalogSnapshot, Collection,
    CollectionCatalog, FieldKinds,
};

/// Operations per etcd transaction (etcd's default `--max-txn-ops` is 128).
const ETCD_TXN_OPS: usize = 100;

/// Pause between attempts while etcd is unreachable.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
const RECORD: &str = "record";
const WRITES: &str = "writes";
const FIELDS: &str = "fields/";

/// What the catalog's keys say, by collection name.
#[derive(Debug, Default, Clone)]
struct Keys {
    records: BTreeMap<String, (Collection, i64)>,
    writes: BTreeMap<String, i64>,
    fields: BTreeMap<String, BTreeMap<String, FieldKinds>>,
}

impl Keys {
    fn apply(&mut self, prefix: &str, key: &[u8], value: Option<(&[u8], i64)>) {
        let Some(rest) = std::str::from_utf8(key)
            .ok()
            .and_then(|key| key.strip_prefix(prefix))
        else {
            return;
        };
        let Some((name, kind)) = rest.split_once('/') else {
            return;
        };
        match (kind, value) {
            (RECORD, Some((value, revision))) => {
                if let Ok(record) = serde_json::from_slice::<Collection>(value) {
                    self.records.insert(name.to_string(), (record, revision));
                }
            }
            (RECORD, None) => {
                self.records.remove(name);
            }
            (WRITES, Some((_, revision))) => {
                self.writes.insert(name.to_string(), revision);
            }
            (WRITES, None) => {
                self.writes.remove(name);
            }
            (kind, value) => {
                let Some((kind, path)) = kind
                    .strip_prefix(FIELDS)
                    .and_then(|field| field.split_once('/'))
                else {
                    return;
                };
                let Some(kind) = FieldKinds::from_name(kind) else {
                    return;
                };
                let fields = self.fields.entry(name.to_string()).or_default();
                match value {
                    Some(_) => {
                        let entry = fields.entry(path.to_string()).or_default();
                        *entry = entry.with(kind);
                    }
                    // Only a whole collection's keys are ever deleted.
                    None => {
                        fields.remove(path);
                    }
                }
            }
        }
    }

    fn snapshot(&self) -> CatalogSnapshot {
        let mut snapshot =
            CatalogSnapshot::from_records(self.records.values().map(|(record, revision)| {
                let mut record = record.clone();
                record.generation = *revision as u64;
                record
            }));
        for (name, revision) in &self.writes {
            if let Some(collection) = snapshot.collections.get_mut(name) {
                collection.generation = collection.generation.max(*revision as u64);
            }
        }
        for (name, fields) in &self.fields {
            if let Some(collection) = snapshot.collections.get_mut(name) {
                collection.fields = fields.clone();
            }
        }
        snapshot
    }
}

/// Collections recorded in etcd, followed by a watch.
pub struct EtcdCatalog {
    client: Client,
    prefix: String,
    sender: watch::Sender<Arc<CatalogSnapshot>>,
    stop: CancellationToken,
}

impl EtcdCatalog {
    /// Lists the collections, then follows them in the background until `close`.
    pub async fn connect(client: Client, cluster: &str) -> Result<Arc<Self>, CatalogError> {
        let prefix = format!("/quarry/{cluster}/collections/");
        let (sender, _) = watch::channel(Arc::new(CatalogSnapshot::default()));
        let catalog = Arc::new(Self {
            client,
            prefix,
            sender,
            stop: CancellationToken::new(),
        });
        let (keys, _) = catalog.list().await?;
        catalog.publish(&keys);
        tokio::spawn(Arc::clone(&catalog).follow());
        Ok(catalog)
    }

    pub fn close(&self) {
        self.stop.cancel();
    }

    fn key(&self, name: &str, kind: &str) -> String {
        format!("{}{name}/{kind}", self.prefix)
    }

    async fn list(&self) -> Result<(Keys, i64), CatalogError> {
        let mut client = self.client.clone();
        let response = client
            .get(self.prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(unavailable)?;
        let revision = response.header().map_or(0, |header| header.revision());
        let mut keys = Keys::default();
        for entry in response.kvs() {
            keys.apply(
                &self.prefix,
                entry.key(),
                Some((entry.value(), entry.mod_revision())),
            );
        }
        Ok((keys, revision))
    }

    fn publish(&self, keys: &Keys) {
        let snapshot = keys.snapshot();
        self.sender.send_if_modified(|current| {
            if **current == snapshot {
                return false;
            }
            *current = Arc::new(snapshot);
            true
        });
    }

    async fn follow(self: Arc<Self>) {
        while !self.stop.is_cancelled() {
            if let Err(error) = self.list_then_watch().await {
                warn!(error = %error, "collection watch broken; keeping the last catalog");
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(RETRY_PAUSE) => {}
            }
        }
    }

    async fn list_then_watch(&self) -> Result<(), CatalogError> {
        let (mut keys, revision) = self.list().await?;
        self.publish(&keys);
        let mut client = self.client.clone();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut stream = client
            .watch(self.prefix.as_str(), Some(options))
            .await
            .map_err(unavailable)?;
        loop {
            let response = tokio::select! {
                _ = self.stop.cancelled() => return Ok(()),
                message = stream.message() => message.map_err(unavailable)?,
            };
            let Some(response) = response else {
                return Err(CatalogError::Unavailable(
                    "etcd closed the watch".to_string(),
                ));
            };
            if response.compact_revision() > 0 || response.canceled() {
                info!("collection watch restarted after compaction");
                return Ok(());
            }
            for event in response.events() {
                let Some(entry) = event.kv() else { continue };
                let value = match event.event_type() {
                    EventType::Put => Some((entry.value(), entry.mod_revision())),
                    EventType::Delete => None,
                };
                keys.apply(&self.prefix, entry.key(), value);
            }
            self.publish(&keys);
        }
    }
}

#[async_trait::async_trait]
impl CollectionCatalog for EtcdCatalog {
    async fn create(&self, name: &str, description: &str) -> Result<Collection, CatalogError> {
        check_create(&self.snapshot(), name, description)?;
        let record = new_record(name, description);
        let value = serde_json::to_string(&record)
            .map_err(|error| CatalogError::Unavailable(error.to_string()))?;
        let key = self.key(name, RECORD);
        let mut client = self.client.clone();
        let response = client
            .txn(
                Txn::new()
                    .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.as_str(), value, None)]),
            )
            .await
            .map_err(unavailable)?;
        if !response.succeeded() {
            return Err(CatalogError::AlreadyExists(name.to_string()));
        }
        info!(collection = name, uid = %record.uid, "collection created");
        Ok(record)
    }

    async fn delete(&self, name: &str) -> Result<Collection, CatalogError> {
        check_delete(name)?;
        let key = self.key(name, RECORD);
        let mut client = self.client.clone();
        let current = client.get(key.as_str(), None).await.map_err(unavailable)?;
        let Some(entry) = current.kvs().first() else {
            return Err(CatalogError::NotFound(name.to_string()));
        };
        let record: Collection = serde_json::from_slice(entry.value())
            .map_err(|error| CatalogError::Unavailable(error.to_string()))?;
        let prefix = format!("{}{name}/", self.prefix);
        let response = client
            .txn(
                Txn::new()
                    .when([Compare::mod_revision(
                        key.as_str(),
                        CompareOp::Equal,
                        entry.mod_revision(),
                    )])
                    .and_then([TxnOp::delete(
                        prefix.as_str(),
                        Some(etcd_client::DeleteOptions::new().with_prefix()),
                    )]),
            )
            .await
            .map_err(unavailable)?;
        if !response.succeeded() {
            return Err(CatalogError::NotFound(name.to_string()));
        }
        info!(collection = name, uid = %record.uid, "collection deleted");
        Ok(record)
    }

    async fn record_write(&self, name: &str) -> Result<(), CatalogError> {
        let mut client = self.client.clone();
        let response = client
            .put(self.key(name, WRITES), Vec::<u8>::new(), None)
            .await
            .map_err(unavailable)?;
        let revision = response.header().map_or(0, |header| header.revision()) as u64;
        // This gateway sees its own write at once; the others through the watch.
        self.sender.send_if_modified(|snapshot| {
            let Some(collection) = snapshot.get(name) else {
                return false;
            };
            if collection.generation >= revision {
                return false;
            }
            let mut changed = snapshot.as_ref().clone();
            if let Some(collection) = changed.collections.get_mut(name) {
                collection.generation = revision;
            }
            *snapshot = Arc::new(changed);
            true
        });
        Ok(())
    }

    async fn record_fields(
        &self,
        name: &str,
        fields: &BTreeMap<String, FieldKinds>,
    ) -> Result<(), CatalogError> {
        let missing = match self.snapshot().get(name) {
            Some(collection) => collection.unrecorded(fields),
            None => return Ok(()),
        };
        if missing.is_empty() {
            return Ok(());
        }
        let mut client = self.client.clone();
        let puts: Vec<TxnOp> = missing
            .iter()
            .map(|(path, kind)| {
                let key = format!("{}{name}/{FIELDS}{}/{path}", self.prefix, kind.name());
                TxnOp::put(key, Vec::<u8>::new(), None)
            })
            .collect();
        for batch in puts.chunks(ETCD_TXN_OPS) {
            client
                .txn(Txn::new().and_then(batch.to_vec()))
                .await
                .map_err(unavailable)?;
        }
        // This gateway checks filters against them at once; the others through the watch.
        self.sender.send_if_modified(|snapshot| {
            let mut changed = snapshot.as_ref().clone();
            let Some(collection) = changed.collections.get_mut(name) else {
                return false;
            };
            for (path, kind) in &missing {
                let entry = collection.fields.entry(path.clone()).or_default();
                *entry = entry.with(*kind);
            }
            *snapshot = Arc::new(changed);
            true
        });
        Ok(())
    }

    fn watch(&self) -> watch::Receiver<Arc<CatalogSnapshot>> {
        self.sender.subscribe()
    }
}

fn unavailable(error: etcd_client::Error) -> CatalogError {
    CatalogError::Unavailable(format!("etcd: {error}"))
}
