//! `SchedulerError`: what can go wrong in the scheduler, each kind mapped to one gRPC code.

use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// A submitted workflow or a request field is malformed; the message names the field or step.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("workflow {0:?} does not exist")]
    NotFound(String),
    /// No leader is elected, or this replica stopped leading mid-call.
    #[error("{0}")]
    Unavailable(String),
    /// The durable store refused or failed a write or read.
    #[error("workflow store: {0}")]
    Store(String),
    /// This replica lost its leadership while writing (another leader holds the election).
    #[error("no longer the scheduler leader")]
    Deposed,
    /// The leader's own answer to a forwarded call, passed on unchanged.
    #[error("leader: {}", .0.message())]
    Forwarded(Status),
    #[error("{0}")]
    Internal(String),
}

impl From<SchedulerError> for Status {
    fn from(error: SchedulerError) -> Self {
        let message = quarry_kit::error::bounded_message(error.to_string());
        match error {
            SchedulerError::Forwarded(status) => status,
            SchedulerError::InvalidArgument(_) => Status::invalid_argument(message),
            SchedulerError::NotFound(_) => Status::not_found(message),
            SchedulerError::Unavailable(_) | SchedulerError::Deposed => {
                Status::unavailable(message)
            }
            SchedulerError::Store(_) => Status::unavailable(message),
            SchedulerError::Internal(_) => Status::internal(message),
        }
    }
}
