//! Converting a shard's index written with an older schema (before the id and the vector
//! key were fast fields, before metadata was indexed for filters): its stored documents, vectors and versions are re-added into a new
//! index beside it, which two renames swap in. Nothing is re-embedded, and a crash between
//! the renames is finished on the next start.

use std::path::Path;

use tantivy::{Index, IndexWriter};
use tracing::info;

use crate::error::RetrieverError;
use crate::schema::{build_document, stored_text, stored_u64, stored_vector, ShardFields};
use crate::shard::{for_each_live_document, StoredDocument};

/// Converts an index written with an older schema (before the id and the vector key were
/// fast fields) by re-adding its stored documents, vectors and versions into a new index:
/// nothing is re-embedded. The new index is built beside the old one and swapped in by two
/// renames; a crash between them is finished on the next start. Returns whether it converted.
pub(crate) fn convert_older_schema(
    data_dir: &Path,
    schema: &tantivy::schema::Schema,
    fields: &ShardFields,
) -> Result<bool, RetrieverError> {
    let current = data_dir.join("tantivy");
    let previous = data_dir.join("tantivy.previous");
    let converting = data_dir.join("tantivy.converting");
    let io = |error: std::io::Error| RetrieverError::Open {
        path: current.display().to_string(),
        reason: error.to_string(),
    };
    if previous.exists() {
        if current.exists() {
            std::fs::remove_dir_all(&previous).map_err(io)?;
        } else {
            std::fs::rename(&previous, &current).map_err(io)?;
        }
    }
    if !current.join("meta.json").exists() {
        return Ok(false);
    }
    let old = Index::open_in_dir(&current)?;
    if old.schema() == *schema {
        return Ok(false);
    }
    info!(path = %current.display(), "converting the index to the current schema");
    if converting.exists() {
        std::fs::remove_dir_all(&converting).map_err(io)?;
    }
    std::fs::create_dir_all(&converting).map_err(io)?;
    let old_schema = old.schema();
    let old_field = |name: &str| old_schema.get_field(name).ok();
    let (old_id, old_title, old_text, old_metadata, old_vector, old_version) = (
        old_field("id"),
        old_field("title"),
        old_field("text"),
        old_field("metadata"),
        old_field("vector"),
        old_field("version"),
    );
    let new = Index::create_in_dir(&converting, schema.clone())?;
    let mut writer: IndexWriter = new.writer(50_000_000)?;
    let searcher = old.reader()?.searcher();
    let mut converted = 0u64;
    for_each_live_document(&searcher, |document| {
        let text = |field: Option<tantivy::schema::Field>| {
            field
                .map(|field| stored_text(document, field))
                .unwrap_or_default()
        };
        let id = text(old_id);
        let vector = old_vector
            .map(|field| stored_vector(document, field))
            .unwrap_or_default();
        let version = old_version
            .map(|field| stored_u64(document, field))
            .unwrap_or_default();
        let stored = StoredDocument {
            title: text(old_title),
            text: text(old_text),
            metadata: serde_json::from_str(&text(old_metadata)).unwrap_or_default(),
            vector,
            version,
            id,
        };
        let added = build_document(fields, &stored, version)?;
        writer.add_document(added)?;
        converted += 1;
        Ok(())
    })?;
    writer.commit()?;
    writer.wait_merging_threads()?;
    drop(old);
    std::fs::rename(&current, &previous).map_err(io)?;
    std::fs::rename(&converting, &current).map_err(io)?;
    std::fs::remove_dir_all(&previous).map_err(io)?;
    info!(documents = converted, "index converted");
    Ok(true)
}
