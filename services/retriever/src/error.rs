//! Errors of a retriever shard, each mapped to one gRPC code.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum RetrieverError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("index error: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("cannot open index directory {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("internal error: {0}")]
    Internal(String),
    /// A reply that would not fit the message limit; the message names the fields to lower.
    #[error("{0}")]
    TooLarge(String),
    /// A request refused; the message names the field ("filter: year: ...", "collection: ...").
    #[error("{0}")]
    Refused(String),
    /// No such collection (the message names `collection`).
    #[error("collection: no collection {0:?}")]
    UnknownCollection(String),
}

impl RetrieverError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

impl From<RetrieverError> for Status {
    fn from(error: RetrieverError) -> Self {
        let code = match &error {
            RetrieverError::InvalidArgument { .. } | RetrieverError::Refused(_) => {
                Code::InvalidArgument
            }
            RetrieverError::UnknownCollection(_) => Code::NotFound,
            RetrieverError::TooLarge(_) => Code::ResourceExhausted,
            RetrieverError::Index(_)
            | RetrieverError::Open { .. }
            | RetrieverError::Internal(_) => Code::Internal,
        };
        Status::new(code, quarry_kit::error::bounded_message(error.to_string()))
    }
}
