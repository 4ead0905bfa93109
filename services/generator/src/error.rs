//! Errors of the generator role, each mapped to one gRPC code.

use quarry_kit::openai::ChatError;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum GeneratorError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    /// The model backend failed: UNAVAILABLE, DEADLINE_EXCEEDED, FAILED_PRECONDITION (it
    /// refused the request) or INTERNAL (a malformed reply), as `ChatError::code` says.
    #[error(transparent)]
    Backend(#[from] ChatError),
}

impl From<GeneratorError> for Status {
    fn from(error: GeneratorError) -> Self {
        let code = match &error {
            GeneratorError::InvalidArgument { .. } => Code::InvalidArgument,
            GeneratorError::Backend(chat_error) => chat_error.code(),
        };
        Status::new(code, quarry_kit::error::bounded_message(error.to_string()))
    }
}
