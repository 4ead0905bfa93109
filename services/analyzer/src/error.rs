//! Errors of the analyzer role, each mapped to one gRPC code.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum AnalyzerError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("no encoder is configured (set analyzer.encoder)")]
    NoEncoder,
}

impl From<AnalyzerError> for Status {
    fn from(error: AnalyzerError) -> Self {
        let code = match &error {
            AnalyzerError::InvalidArgument { .. } => Code::InvalidArgument,
            AnalyzerError::NoEncoder => Code::FailedPrecondition,
        };
        Status::new(code, error.to_string())
    }
}
