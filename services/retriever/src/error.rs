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
    /// The request was routed by a placement this shard has moved past (a partition it
    /// does not serve, or a write routed before the partition's writers changed).
    #[error("{message}")]
    Moved { epoch: u64, message: String },
    /// A peer this work needs cannot be reached.
    #[error("{0}")]
    Unavailable(String),
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
            RetrieverError::Moved { epoch, .. } => {
                let mut status = Status::failed_precondition(quarry_kit::error::bounded_message(
                    error.to_string(),
                ));
                if let Ok(value) = epoch.to_string().parse() {
                    status
                        .metadata_mut()
                        .insert(quarry_kit::placement::MOVED_HEADER, value);
                }
                return status;
            }
            RetrieverError::TooLarge(_) => Code::ResourceExhausted,
            RetrieverError::Unavailable(_) => Code::Unavailable,
            RetrieverError::Index(_)
            | RetrieverError::Open { .. }
            | RetrieverError::Internal(_) => Code::Internal,
        };
        Status::new(code, quarry_kit::error::bounded_message(error.to_string()))
    }
}
