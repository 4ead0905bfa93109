//! Errors of the gateway, each mapped to one gRPC code; downstream failures keep their code
//! and name the role that failed.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// A refused request whose message names the field ("filter: year: ...").
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Catalog(#[from] quarry_kit::collections::CatalogError),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("no ready {role} in the cluster")]
    NoMember { role: &'static str },
    #[error("{role}: {status_message}")]
    Downstream {
        role: &'static str,
        code: Code,
        status_message: String,
    },
    #[error("internal error: {0}")]
    Internal(String),
    /// A shard refused a call routed by an older placement than its own (at `epoch`); the
    /// caller refreshes its placement and routes again. UNAVAILABLE if it runs out of time.
    #[error("placement changed: {message}")]
    Moved { epoch: u64, message: String },
}

impl GatewayError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    /// A shard's refusal of a call routed by an older placement, if `status` is one.
    pub fn moved(status: &Status) -> Option<Self> {
        let epoch = status
            .metadata()
            .get(quarry_kit::placement::MOVED_HEADER)?
            .to_str()
            .ok()?
            .parse()
            .ok()?;
        Some(Self::Moved {
            epoch,
            message: status.message().to_string(),
        })
    }

    /// Wraps a failed call to another role; transport failures become UNAVAILABLE.
    pub fn downstream(role: &'static str, status: Status) -> Self {
        let code = match status.code() {
            Code::Unknown | Code::Internal if status.message().contains("transport") => {
                Code::Unavailable
            }
            code => code,
        };
        Self::Downstream {
            role,
            code,
            status_message: status.message().to_string(),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            GatewayError::InvalidArgument { .. } => Code::InvalidArgument,
            GatewayError::FailedPrecondition(_) => Code::FailedPrecondition,
            GatewayError::NotFound(_) => Code::NotFound,
            GatewayError::PermissionDenied(_) => Code::PermissionDenied,
            GatewayError::Refused(_) => Code::InvalidArgument,
            GatewayError::Catalog(error) => error.code(),
            GatewayError::NoMember { .. }
            | GatewayError::Unavailable(_)
            | GatewayError::Moved { .. } => Code::Unavailable,
            GatewayError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            GatewayError::Downstream { code, .. } => *code,
            GatewayError::Internal(_) => Code::Internal,
        }
    }
}

impl From<GatewayError> for Status {
    fn from(error: GatewayError) -> Self {
        let message = quarry_kit::error::bounded_message(error.to_string());
        Status::new(error.code(), message)
    }
}
