//! The `openai` generator backend: any OpenAI-compatible `/v1/chat/completions` writes the
//! answer from numbered passages, unary or streamed, and its `[n]` citations are checked.

mod prompt;
mod writer;

pub use prompt::{build_messages, PromptError};
pub use writer::{OpenAiWriter, WriterStats};
