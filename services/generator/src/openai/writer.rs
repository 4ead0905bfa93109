//! `OpenAiWriter`: asks the chat model for an answer, whole or streamed, then checks its
//! citations against the passages it was given. An empty reply becomes the fixed "no
//! answer" reply (counted); citations of passages that do not exist are dropped (counted).

use std::sync::atomic::{AtomicU64, Ordering};

use quarry_kit::config::OpenAiChatConfig;
use quarry_kit::openai::{ChatClient, ChatError, ChatMessage, ChatStream};
use quarry_kit::text::NO_ANSWER;
use quarry_proto::v1::{GenerateRequest, GenerateResponse, Passage};
use tracing::{info, warn};

use super::prompt::build_messages;
use crate::citations::parse_citations;
use crate::error::GeneratorError;

/// Counters of what the writer had to correct.
#[derive(Debug, Default)]
pub struct WriterStats {
    dropped_citations: AtomicU64,
    empty_answers: AtomicU64,
}

impl WriterStats {
    /// Citations of passage numbers that were not given, dropped from `cited`.
    pub fn dropped_citations(&self) -> u64 {
        self.dropped_citations.load(Ordering::Relaxed)
    }

    /// Replies with no text, answered with the "no answer" reply instead.
    pub fn empty_answers(&self) -> u64 {
        self.empty_answers.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub struct OpenAiWriter {
    client: ChatClient,
    max_prompt_chars: usize,
    stats: WriterStats,
}

impl OpenAiWriter {
    pub fn new(config: &OpenAiChatConfig) -> Result<Self, ChatError> {
        Ok(Self {
            client: ChatClient::new(config)?,
            max_prompt_chars: config.max_prompt_chars,
            stats: WriterStats::default(),
        })
    }

    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    pub fn client(&self) -> &ChatClient {
        &self.client
    }

    fn messages(
        &self,
        request: &GenerateRequest,
        max_answer_chars: u32,
    ) -> Result<Vec<ChatMessage>, GeneratorError> {
        build_messages(
            &request.question,
            &request.passages,
            request.analysis.as_ref(),
            max_answer_chars,
            self.max_prompt_chars,
        )
        .map_err(|error| GeneratorError::InvalidArgument {
            field: "passages",
            reason: error
                .to_string()
                .trim_start_matches("passages: ")
                .to_string(),
        })
    }

    /// The whole answer in one reply.
    pub async fn write(
        &self,
        request: &GenerateRequest,
        max_answer_chars: u32,
    ) -> Result<GenerateResponse, GeneratorError> {
        let messages = self.messages(request, max_answer_chars)?;
        let answer = self.client.complete(&messages).await?;
        Ok(self.finish(answer, &request.passages))
    }

    /// A streamed reply, established (and retried) before any token is handed out.
    pub async fn open_stream(
        &self,
        request: &GenerateRequest,
        max_answer_chars: u32,
    ) -> Result<ChatStream, GeneratorError> {
        let messages = self.messages(request, max_answer_chars)?;
        Ok(self.client.stream(&messages).await?)
    }

    /// Checks the model's answer against `passages` and describes how it was written.
    pub fn finish(&self, answer: String, passages: &[Passage]) -> GenerateResponse {
        let model = self.client.model().to_string();
        if answer.trim().is_empty() {
            self.stats.empty_answers.fetch_add(1, Ordering::Relaxed);
            warn!(model = %model, "model returned an empty answer");
            return GenerateResponse {
                answer: NO_ANSWER.to_string(),
                reasoning: format!(
                    "{model} returned an empty answer from {} passages, so the no-answer reply was given.",
                    passages.len()
                ),
                cited: Vec::new(),
                generator: model,
            };
        }
        let citations = parse_citations(&answer, |number| {
            passages.iter().any(|passage| passage.number == number)
        });
        let listed: Vec<String> = citations
            .cited
            .iter()
            .map(|number| format!("[{number}]"))
            .collect();
        let mut reasoning = format!(
            "Written by {model} from {} passages; cites {}.",
            passages.len(),
            if listed.is_empty() {
                "none".to_string()
            } else {
                listed.join(", ")
            }
        );
        if !citations.dropped.is_empty() {
            self.stats
                .dropped_citations
                .fetch_add(citations.dropped.len() as u64, Ordering::Relaxed);
            let dropped: Vec<String> = citations
                .dropped
                .iter()
                .map(|number| format!("[{number}]"))
                .collect();
            info!(model = %model, dropped = ?citations.dropped, "citations of missing passages dropped");
            reasoning.push_str(&format!(
                " Dropped citations of passages that do not exist: {}.",
                dropped.join(", ")
            ));
        }
        GenerateResponse {
            answer,
            reasoning,
            cited: citations.cited,
            generator: model,
        }
    }
}
