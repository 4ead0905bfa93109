//! Collections: named, independent document sets, each its own index on every shard (its
//! own BM25 statistics, vectors, versions and tombstones), as an Elasticsearch index or a
//! Qdrant collection. The catalog of collections lives in etcd (`EtcdCatalog`), or in the
//! data directory under `quarry up` (`LocalCatalog`); gateways and retrievers follow it by
//! watching a snapshot (`CatalogSnapshot`), so a collection deleted while a replica was down
//! is dropped by that replica when it returns.
//!
//! A collection also has a write generation, which changes after every acknowledged write to
//! it: the answer cache keys answers by it, so that no cached answer outlives the documents
//! it was built from. In etcd it is the revision of the collection's `writes` key, so every
//! gateway sees the same generation.
//!
//! `default` always exists and cannot be deleted, so clients that name no collection keep
//! working; it needs no record.

mod etcd;
mod fields;
mod local;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tonic::{Code, Status};

pub use etcd::EtcdCatalog;
pub use fields::{fields_of, metadata_of, FieldKinds, MAX_FIELDS};
pub use local::LocalCatalog;

/// The collection a request that names none is about.
pub const DEFAULT_COLLECTION: &str = "default";
/// Longest collection name.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest description.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;
/// Most collections one cluster holds: each is an index (a writer, a reader, a vector
/// index) on every replica.
pub const MAX_COLLECTIONS: usize = 256;

/// One collection's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collection {
    pub name: String,
    /// Random, set at creation: a collection deleted and created again under the same name
    /// is another collection, whose replicas must not keep the old one's files.
    pub uid: String,
    pub description: String,
    pub created_at_ms: u64,
    /// Changes after every acknowledged write (not serialised with the record).
    #[serde(skip)]
    pub generation: u64,
    /// The kinds of value each metadata field has held (`fields.rs`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, FieldKinds>,
}

impl Collection {
    /// The record of `default`, which always exists.
    pub fn default_collection() -> Self {
        Self {
            name: DEFAULT_COLLECTION.to_string(),
            uid: DEFAULT_COLLECTION.to_string(),
            description: "the collection of requests that name none".to_string(),
            created_at_ms: 0,
            generation: 0,
            fields: BTreeMap::new(),
        }
    }

    /// The (field, single kind) pairs of `fields` this collection has not recorded yet,
    /// within `MAX_FIELDS` fields.
    pub fn unrecorded(&self, fields: &BTreeMap<String, FieldKinds>) -> Vec<(String, FieldKinds)> {
        let mut known = self.fields.len();
        let mut missing = Vec::new();
        for (path, kinds) in fields {
            let recorded = self.fields.get(path).copied();
            if recorded.is_none() {
                if known >= MAX_FIELDS {
                    continue;
                }
                known += 1;
            }
            for kind in kinds.each() {
                if !recorded.is_some_and(|recorded| recorded.contains(kind)) {
                    missing.push((path.clone(), kind));
                }
            }
        }
        missing
    }
}

/// Every collection at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogSnapshot {
    pub collections: BTreeMap<String, Collection>,
}

impl Default for CatalogSnapshot {
    fn default() -> Self {
        Self::from_records(Vec::new())
    }
}

impl CatalogSnapshot {
    /// `records` plus `default`.
    pub fn from_records(records: impl IntoIterator<Item = Collection>) -> Self {
        let mut collections: BTreeMap<String, Collection> = records
            .into_iter()
            .map(|record| (record.name.clone(), record))
            .collect();
        collections
            .entry(DEFAULT_COLLECTION.to_string())
            .or_insert_with(Collection::default_collection);
        Self { collections }
    }

    pub fn get(&self, name: &str) -> Option<&Collection> {
        self.collections.get(name)
    }

    /// The collection's write generation; `None` when it does not exist.
    pub fn generation(&self, name: &str) -> Option<u64> {
        self.collections
            .get(name)
            .map(|collection| collection.generation)
    }
}

/// Why a catalog operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("collection: no collection {0:?}")]
    NotFound(String),
    #[error("name: collection {0:?} already exists")]
    AlreadyExists(String),
    #[error("collection: {0}")]
    Full(String),
    #[error("collections: {0}")]
    Unsupported(String),
    #[error("collections: {0}")]
    Unavailable(String),
}

impl CatalogError {
    /// The gRPC code of the error.
    pub fn code(&self) -> Code {
        match self {
            CatalogError::Invalid { .. } => Code::InvalidArgument,
            CatalogError::NotFound(_) => Code::NotFound,
            CatalogError::AlreadyExists(_) => Code::AlreadyExists,
            CatalogError::Full(_) => Code::ResourceExhausted,
            CatalogError::Unsupported(_) => Code::FailedPrecondition,
            CatalogError::Unavailable(_) => Code::Unavailable,
        }
    }
}

impl From<CatalogError> for Status {
    fn from(error: CatalogError) -> Self {
        Status::new(
            error.code(),
            crate::error::bounded_message(error.to_string()),
        )
    }
}

/// The collection a request names: its own name, or `default` when empty; refused with
/// INVALID_ARGUMENT naming `field` when it is not a valid name.
pub fn resolve_name<'a>(field: &'static str, name: &'a str) -> Result<&'a str, CatalogError> {
    if name.is_empty() {
        return Ok(DEFAULT_COLLECTION);
    }
    validate_name(field, name)?;
    Ok(name)
}

/// 1 to 64 characters: lowercase ASCII letters, digits, '-' and '_', starting with a letter
/// or a digit (a name is a directory on every replica and part of etcd keys).
pub fn validate_name(field: &'static str, name: &str) -> Result<(), CatalogError> {
    let invalid = |reason: String| CatalogError::Invalid { field, reason };
    if name.is_empty() {
        return Err(invalid("must not be empty".to_string()));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(invalid(format!("at most {MAX_NAME_CHARS} characters")));
    }
    let valid_character = |character: char| matches!(character, 'a'..='z' | '0'..='9' | '-' | '_');
    if !name.chars().all(valid_character) {
        return Err(invalid(format!(
            "{:?}: only lowercase letters, digits, '-' and '_'",
            name.chars().take(MAX_NAME_CHARS).collect::<String>()
        )));
    }
    if !name.starts_with(|character: char| character.is_ascii_alphanumeric()) {
        return Err(invalid("must start with a letter or a digit".to_string()));
    }
    Ok(())
}

/// Where collections are recorded, and how their changes are followed.
#[async_trait::async_trait]
pub trait CollectionCatalog: Send + Sync + 'static {
    /// Records a new collection; `AlreadyExists` when the name is taken.
    async fn create(&self, name: &str, description: &str) -> Result<Collection, CatalogError>;
    /// Removes a collection's record; `NotFound` when there is none. `default` stays.
    async fn delete(&self, name: &str) -> Result<Collection, CatalogError>;
    /// Marks an acknowledged write to the collection: its generation changes, here at once
    /// and for every follower soon after.
    async fn record_write(&self, name: &str) -> Result<(), CatalogError>;
    /// Records the kinds of value metadata fields of the collection have held (those not
    /// recorded yet), so filters can be checked against them.
    async fn record_fields(
        &self,
        name: &str,
        fields: &BTreeMap<String, FieldKinds>,
    ) -> Result<(), CatalogError>;
    /// The collections now, updated as they change.
    fn watch(&self) -> watch::Receiver<Arc<CatalogSnapshot>>;

    /// The collections now.
    fn snapshot(&self) -> Arc<CatalogSnapshot> {
        Arc::clone(&self.watch().borrow())
    }
}

/// Refuses a description over the limit.
fn validate_description(description: &str) -> Result<(), CatalogError> {
    if description.len() > MAX_DESCRIPTION_BYTES {
        return Err(CatalogError::Invalid {
            field: "description",
            reason: format!("at most {MAX_DESCRIPTION_BYTES} bytes"),
        });
    }
    Ok(())
}

/// A new collection's record, with a fresh uid.
fn new_record(name: &str, description: &str) -> Collection {
    let created_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64);
    Collection {
        name: name.to_string(),
        uid: format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
        description: description.to_string(),
        created_at_ms,
        generation: 0,
        fields: BTreeMap::new(),
    }
}

/// Checks a create before it is recorded.
fn check_create(
    snapshot: &CatalogSnapshot,
    name: &str,
    description: &str,
) -> Result<(), CatalogError> {
    validate_name("name", name)?;
    validate_description(description)?;
    if snapshot.get(name).is_some() {
        return Err(CatalogError::AlreadyExists(name.to_string()));
    }
    if snapshot.collections.len() >= MAX_COLLECTIONS {
        return Err(CatalogError::Full(format!(
            "the cluster holds {MAX_COLLECTIONS} collections, the most it may"
        )));
    }
    Ok(())
}

/// Checks a delete before it is recorded.
fn check_delete(name: &str) -> Result<(), CatalogError> {
    validate_name("name", name)?;
    if name == DEFAULT_COLLECTION {
        return Err(CatalogError::Invalid {
            field: "name",
            reason: "`default` cannot be deleted (delete its documents instead)".to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_naming_the_field() {
        assert_eq!(resolve_name("collection", "").unwrap(), "default");
        assert_eq!(
            resolve_name("collection", "hr-2024_a").unwrap(),
            "hr-2024_a"
        );
        for bad in ["HR", "a/b", "-a", "_a", "a b", "é", &"a".repeat(65)] {
            let error = resolve_name("collection", bad).unwrap_err();
            assert!(
                error.to_string().starts_with("collection:"),
                "{bad:?}: {error}"
            );
            assert_eq!(Status::from(error).code(), Code::InvalidArgument);
        }
    }

    #[test]
    fn the_snapshot_always_has_default() {
        let snapshot = CatalogSnapshot::from_records(Vec::new());
        assert!(snapshot.get(DEFAULT_COLLECTION).is_some());
        assert!(check_delete(DEFAULT_COLLECTION).is_err());
    }
}
