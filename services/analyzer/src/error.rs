//! Errors of the analyzer role, each mapped to one gRPC code.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum AnalyzerError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("no encoder is configured (set analyzer.encoder)")]
    NoEncoder,
    #[error("cannot load the encoder: {0}")]
    EncoderLoad(String),
    #[error("encoder failed: {0}")]
    Encoder(String),
    #[error("encoder backend unavailable: {0}")]
    EncoderUnavailable(String),
    /// The embedding queue is full: the caller should back off and retry.
    #[error("{0}")]
    Overloaded(String),
}

impl From<AnalyzerError> for Status {
    fn from(error: AnalyzerError) -> Self {
        let code = match &error {
            AnalyzerError::InvalidArgument { .. } => Code::InvalidArgument,
            AnalyzerError::NoEncoder => Code::FailedPrecondition,
            AnalyzerError::EncoderLoad(_) => Code::FailedPrecondition,
            AnalyzerError::Encoder(_) => Code::Internal,
            AnalyzerError::EncoderUnavailable(_) => Code::Unavailable,
            AnalyzerError::Overloaded(_) => Code::ResourceExhausted,
        };
        Status::new(code, quarry_kit::error::bounded_message(error.to_string()))
    }
}
