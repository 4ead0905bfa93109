//! Between the shard's plain Rust types and the wire: statistics, candidates and stored
//! documents as `quarry.v1` messages, for the service and for a peer's catch-up.

use quarry_proto::v1::{Candidate, CorpusStats, Document, TermStats};

use crate::error::RetrieverError;
use crate::shard::{ShardCandidate, StoredDocument};
use crate::statistics::CorpusStatistics;

pub(crate) fn statistics_to_proto(statistics: &CorpusStatistics) -> CorpusStats {
    let mut terms: Vec<TermStats> = statistics
        .doc_freqs
        .iter()
        .map(|(term, doc_freq)| TermStats {
            term: term.clone(),
            doc_freq: *doc_freq,
        })
        .collect();
    terms.sort_by(|left, right| left.term.cmp(&right.term));
    CorpusStats {
        num_docs: statistics.num_docs,
        total_num_tokens: statistics.total_num_tokens,
        terms,
    }
}

pub(crate) fn statistics_from_proto(stats: &CorpusStats) -> CorpusStatistics {
    CorpusStatistics {
        num_docs: stats.num_docs,
        total_num_tokens: stats.total_num_tokens,
        doc_freqs: stats
            .terms
            .iter()
            .map(|term| (term.term.clone(), term.doc_freq))
            .collect(),
    }
}

pub(crate) fn candidate_to_proto(candidate: ShardCandidate) -> Candidate {
    Candidate {
        doc_id: candidate.doc_id,
        score: candidate.score,
    }
}

/// A document as the shard stores it: `metadata_json` (a JSON object) with the string
/// entries of `metadata` added where it has no field of that name.
pub(crate) fn stored_from_proto(
    document: Document,
    vector: Vec<f32>,
    version: u64,
) -> Result<StoredDocument, RetrieverError> {
    let metadata = quarry_kit::collections::metadata_of(&document).map_err(|reason| {
        RetrieverError::invalid(
            "document.metadata_json",
            format!("{reason} (document {:?})", document.id),
        )
    })?;
    Ok(StoredDocument {
        version,
        id: document.id,
        title: document.title,
        text: document.text,
        metadata,
        vector,
    })
}

/// A stored document on the wire: the metadata as `metadata_json`, and every top-level
/// field as text in `metadata` (for clients of the older, string-valued form).
pub(crate) fn stored_to_proto(document: StoredDocument) -> Document {
    let metadata_json = match document.metadata.is_empty() {
        true => String::new(),
        false => serde_json::Value::Object(document.metadata.clone()).to_string(),
    };
    let metadata = document
        .metadata
        .into_iter()
        .map(|(key, value)| {
            let text = match value {
                serde_json::Value::String(text) => text,
                other => other.to_string(),
            };
            (key, text)
        })
        .collect();
    Document {
        id: document.id,
        title: document.title,
        text: document.text,
        metadata,
        collection: String::new(),
        metadata_json,
    }
}

/// A document's size as a copy moves it: id, title, text, metadata and vector.
pub(crate) fn document_bytes(document: &StoredDocument) -> u64 {
    let metadata: usize = document
        .metadata
        .iter()
        .map(|(key, value)| key.len() + value.to_string().len())
        .sum();
    (document.id.len()
        + document.title.len()
        + document.text.len()
        + metadata
        + document.vector.len() * std::mem::size_of::<f32>()) as u64
}
