//! The tantivy schema of a shard: the id (exact, for upsert and delete), stored title and
//! text, and one `body` field (title + " " + text, English-stemmed) that BM25 scores, as in
//! the standard BEIR setup; plus the stored vector and its key, and the write's version (last writer wins).
//! The id and the vector key are also fast fields (columns), so a search answers ids and
//! breaks ties by key without loading any stored document. The metadata is stored as JSON
//! text and indexed as a tantivy JSON field (`meta`: exact strings, numbers as f64, booleans,
//! and date-looking strings also as dates; inverted index and columns), which is what
//! filters query. Below: how a document is built and how stored values are read back, and
//! the id column reader.

use std::collections::HashMap;

use tantivy::schema::Value;
use tantivy::schema::{
    Field, IndexRecordOption, JsonObjectOptions, OwnedValue, Schema, TextFieldIndexing,
    TextOptions, FAST, INDEXED, STORED, STRING,
};
use tantivy::{DateTime, DocAddress, Searcher, TantivyDocument};

use crate::error::RetrieverError;
use crate::shard::StoredDocument;
use crate::vectors::vector_key;

/// Tokenizer of the `body` field: simple split, lowercase, English stemmer.
pub const BODY_TOKENIZER: &str = "en_stem";

/// The id field's name (a fast field: ids of hits come from its column).
pub const ID_FIELD: &str = "id";
/// The vector key field's name (a fast field: `ranking::tie_key` of the id, which orders ties).
pub const VECTOR_KEY_FIELD: &str = "vector_key";
/// The indexed metadata's field name (a JSON field: `meta.<path>` in queries).
pub const META_FIELD: &str = "meta";

/// Handles to the fields of a shard's schema.
#[derive(Debug, Clone, Copy)]
pub struct ShardFields {
    pub id: Field,
    pub title: Field,
    pub text: Field,
    pub metadata: Field,
    pub body: Field,
    /// The document's vector, little-endian f32 bytes; empty when it has none.
    pub vector: Field,
    /// `vector_key(id)`, to find a document from a vector hit.
    pub vector_key: Field,
    /// The version of the write that stored this document.
    pub version: Field,
    /// The metadata, indexed for filters (not stored: `metadata` is).
    pub meta: Field,
}

pub fn build_schema() -> (Schema, ShardFields) {
    let mut builder = Schema::builder();
    let id = builder.add_text_field(ID_FIELD, STRING | STORED | FAST);
    let title = builder.add_text_field("title", STORED);
    let text = builder.add_text_field("text", STORED);
    let metadata = builder.add_text_field("metadata", STORED);
    let body_indexing = TextFieldIndexing::default()
        .set_tokenizer(BODY_TOKENIZER)
        .set_index_option(IndexRecordOption::WithFreqs);
    let body = builder.add_text_field(
        "body",
        TextOptions::default().set_indexing_options(body_indexing),
    );
    let vector = builder.add_bytes_field("vector", STORED);
    let vector_key = builder.add_u64_field(VECTOR_KEY_FIELD, INDEXED | FAST);
    let version = builder.add_u64_field("version", STORED);
    let exact = TextFieldIndexing::default()
        .set_tokenizer("raw")
        .set_index_option(IndexRecordOption::Basic);
    let meta = builder.add_json_field(
        META_FIELD,
        JsonObjectOptions::default()
            .set_indexing_options(exact)
            .set_fast("raw")
            .set_expand_dots_enabled(),
    );
    let fields = ShardFields {
        id,
        title,
        text,
        metadata,
        body,
        vector,
        vector_key,
        version,
        meta,
    };
    (builder.build(), fields)
}

/// The tantivy document of a stored document at `version`.
pub(crate) fn build_document(
    fields: &ShardFields,
    document: &StoredDocument,
    version: u64,
) -> Result<TantivyDocument, RetrieverError> {
    let metadata = serde_json::to_string(&document.metadata)
        .map_err(|error| RetrieverError::Internal(error.to_string()))?;
    let mut indexed = TantivyDocument::default();
    indexed.add_text(fields.id, &document.id);
    indexed.add_text(fields.title, &document.title);
    indexed.add_text(fields.text, &document.text);
    indexed.add_text(fields.metadata, metadata);
    indexed.add_text(fields.body, format!("{} {}", document.title, document.text));
    indexed.add_u64(fields.vector_key, vector_key(&document.id));
    indexed.add_bytes(fields.vector, &vector_to_bytes(&document.vector));
    indexed.add_u64(fields.version, version);
    if !document.metadata.is_empty() {
        indexed.add_object(
            fields.meta,
            document
                .metadata
                .iter()
                .map(|(key, value)| (key.clone(), indexed_value(value)))
                .collect(),
        );
    }
    Ok(indexed)
}

/// How a metadata value is indexed: numbers as f64 (one numeric type, whatever the JSON
/// wrote), a string that reads as a date both as the string and as the date (so it can be
/// matched exactly and ranged over), nulls left out.
pub(crate) fn indexed_value(value: &serde_json::Value) -> OwnedValue {
    match value {
        serde_json::Value::Null => OwnedValue::Null,
        serde_json::Value::Bool(boolean) => OwnedValue::Bool(*boolean),
        serde_json::Value::Number(number) => OwnedValue::F64(number.as_f64().unwrap_or_default()),
        serde_json::Value::String(text) => match quarry_kit::filter::parse_date(text) {
            Some(micros) => OwnedValue::Array(vec![
                OwnedValue::Str(text.clone()),
                OwnedValue::Date(DateTime::from_timestamp_micros(micros)),
            ]),
            None => OwnedValue::Str(text.clone()),
        },
        serde_json::Value::Array(items) => {
            OwnedValue::Array(items.iter().map(indexed_value).collect())
        }
        serde_json::Value::Object(object) => OwnedValue::Object(
            object
                .iter()
                .map(|(key, value)| (key.clone(), indexed_value(value)))
                .collect(),
        ),
    }
}

pub(crate) fn stored_text(document: &TantivyDocument, field: tantivy::schema::Field) -> String {
    document
        .get_first(field)
        .and_then(|value| value.as_str())
        .unwrap_or_default()
        .to_string()
}

/// A stored u64 field; 0 when absent (documents written before versions existed).
pub(crate) fn stored_u64(document: &TantivyDocument, field: tantivy::schema::Field) -> u64 {
    document
        .get_first(field)
        .and_then(|value| value.as_u64())
        .unwrap_or_default()
}

pub(crate) fn vector_to_bytes(vector: &[f32]) -> Vec<u8> {
    vector
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect()
}

pub(crate) fn stored_vector(document: &TantivyDocument, field: tantivy::schema::Field) -> Vec<f32> {
    let Some(bytes) = document.get_first(field).and_then(|value| value.as_bytes()) else {
        return Vec::new();
    };
    bytes
        .chunks_exact(4)
        .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
        .collect()
}

/// Ids of hits read from the id column, one column reader per segment.
#[derive(Default)]
pub(crate) struct FastIds {
    columns: HashMap<u32, tantivy::columnar::StrColumn>,
    buffer: String,
}

impl FastIds {
    pub(crate) fn id(
        &mut self,
        searcher: &Searcher,
        address: DocAddress,
    ) -> Result<String, RetrieverError> {
        let column = match self.columns.entry(address.segment_ord) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                let reader = searcher.segment_reader(address.segment_ord);
                let column = reader.fast_fields().str(ID_FIELD)?.ok_or_else(|| {
                    RetrieverError::Internal("the id fast field is missing".to_string())
                })?;
                entry.insert(column)
            }
        };
        let ordinal = column
            .term_ords(address.doc_id)
            .next()
            .ok_or_else(|| RetrieverError::Internal(format!("document {address:?} has no id")))?;
        self.buffer.clear();
        column
            .ord_to_str(ordinal, &mut self.buffer)
            .map_err(|error| RetrieverError::Internal(error.to_string()))?;
        Ok(self.buffer.clone())
    }
}

/// The metadata field filters query (the same in every index of this schema).
pub(crate) fn meta_field() -> Field {
    static META: std::sync::OnceLock<Field> = std::sync::OnceLock::new();
    *META.get_or_init(|| build_schema().1.meta)
}
