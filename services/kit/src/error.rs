//! Errors of the shared kit (configuration, binding, serving), each mapped to a gRPC code.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum KitError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot bind {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(String),
    #[error("discovery: {0}")]
    Discovery(String),
}

impl From<KitError> for Status {
    fn from(error: KitError) -> Self {
        let code = match &error {
            KitError::Config(_) => Code::FailedPrecondition,
            KitError::Bind { .. } | KitError::Serve(_) | KitError::Discovery(_) => {
                Code::Unavailable
            }
        };
        Status::new(code, error.to_string())
    }
}
