//! Errors of the generator role, each mapped to one gRPC code.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum GeneratorError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
}

impl From<GeneratorError> for Status {
    fn from(error: GeneratorError) -> Self {
        let code = match &error {
            GeneratorError::InvalidArgument { .. } => Code::InvalidArgument,
        };
        Status::new(code, error.to_string())
    }
}
