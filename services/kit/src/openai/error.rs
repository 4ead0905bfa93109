//! Errors of a chat-completions call, each mapped to one gRPC code and one retry decision.

use tonic::{Code, Status};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ChatError {
    /// No base URL answered: connection refused or reset, 429 or 5xx after every retry, or
    /// every base URL ejected.
    #[error("model backend unavailable: {0}")]
    Unavailable(String),
    /// The backend did not answer (or stopped streaming) within the configured timeout.
    #[error("model backend timed out: {0}")]
    Timeout(String),
    /// The backend refused the request (4xx other than 429): a wrong model, key or request.
    #[error("model backend refused the request: {0}")]
    Rejected(String),
    /// The backend answered something that is not a chat completion.
    #[error("model reply malformed: {0}")]
    Malformed(String),
    /// A streamed reply broke off after tokens had been handed out (never retried).
    #[error("model stream broke off: {0}")]
    StreamBroken(String),
}

impl ChatError {
    /// Whether another attempt (on the next base URL) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ChatError::Unavailable(_) | ChatError::Timeout(_))
    }

    pub fn code(&self) -> Code {
        match self {
            ChatError::Unavailable(_) | ChatError::StreamBroken(_) => Code::Unavailable,
            ChatError::Timeout(_) => Code::DeadlineExceeded,
            ChatError::Rejected(_) => Code::FailedPrecondition,
            ChatError::Malformed(_) => Code::Internal,
        }
    }
}

impl From<ChatError> for Status {
    fn from(error: ChatError) -> Self {
        Status::new(
            error.code(),
            crate::error::bounded_message(error.to_string()),
        )
    }
}
