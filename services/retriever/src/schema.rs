//! The tantivy schema of a shard: the id (exact, for upsert and delete), stored title and
//! text, and one `body` field (title + " " + text, English-stemmed) that BM25 scores, as in
//! the standard BEIR setup; plus the stored vector and its key, and the write's version (last writer wins).
//! The id and the vector key are also fast fields (columns), so a search answers ids and
//! breaks ties by key without loading any stored document.

use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST, INDEXED, STORED, STRING,
};

/// Tokenizer of the `body` field: simple split, lowercase, English stemmer.
pub const BODY_TOKENIZER: &str = "en_stem";

/// The id field's name (a fast field: ids of hits come from its column).
pub const ID_FIELD: &str = "id";
/// The vector key field's name (a fast field: `ranking::tie_key` of the id, which orders ties).
pub const VECTOR_KEY_FIELD: &str = "vector_key";

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
    let fields = ShardFields {
        id,
        title,
        text,
        metadata,
        body,
        vector,
        vector_key,
        version,
    };
    (builder.build(), fields)
}
