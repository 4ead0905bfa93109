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
        Status::new(code, bounded_message(error.to_string()))
    }
}

/// Longest error message a server sends: a message travels in the `grpc-message` header,
/// whose size is bounded, and may quote a client's input.
pub const MAX_MESSAGE_CHARS: usize = 1024;

/// `message` cut to `MAX_MESSAGE_CHARS` bytes (at a character boundary, marked with `…`).
pub fn bounded_message(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_CHARS {
        let mut cut = MAX_MESSAGE_CHARS;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        assert_eq!(bounded_message("short".into()), "short");
        let cut = bounded_message("é".repeat(MAX_MESSAGE_CHARS));
        assert!(cut.len() <= MAX_MESSAGE_CHARS + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }
}
