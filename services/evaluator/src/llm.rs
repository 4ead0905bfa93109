//! `LlmJudge`: an OpenAI-compatible chat model judges an answer and replies with JSON
//! `{groundedness, relevance, confidence, evaluation}`. The reply is validated (every score
//! a number within 0..1, a non-empty evaluation); a reply that is not, or a backend that
//! fails, makes the service fall back to the heuristic, and each fallback is counted.

use std::sync::atomic::{AtomicU64, Ordering};

use quarry_kit::config::OpenAiChatConfig;
use quarry_kit::openai::{ChatClient, ChatError, ChatMessage};
use quarry_proto::v1::Passage;
use serde::Deserialize;

const JUDGE_RULES: &str = "You grade answers written from numbered passages. \
Reply with one JSON object and nothing else, of the form \
{\"groundedness\": number, \"relevance\": number, \"confidence\": number, \"evaluation\": string}. \
groundedness (0 to 1): the share of the answer's statements supported by the passages. \
relevance (0 to 1): how well the answer addresses the question. \
confidence (0 to 1): how far a reader should trust the answer. \
evaluation: one or two sentences explaining the grades.";

/// The judge's scores, validated.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct JudgeScores {
    pub groundedness: f32,
    pub relevance: f32,
    pub confidence: f32,
    pub evaluation: String,
}

/// Why the judge's verdict could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error(transparent)]
    Backend(#[from] ChatError),
    #[error("judge reply unusable: {0}")]
    Malformed(String),
}

/// Fallbacks to the heuristic, by cause.
#[derive(Debug, Default)]
pub struct JudgeStats {
    malformed_replies: AtomicU64,
    backend_failures: AtomicU64,
}

impl JudgeStats {
    pub fn malformed_replies(&self) -> u64 {
        self.malformed_replies.load(Ordering::Relaxed)
    }

    pub fn backend_failures(&self) -> u64 {
        self.backend_failures.load(Ordering::Relaxed)
    }

    pub(crate) fn count(&self, error: &JudgeError) {
        let counter = match error {
            JudgeError::Backend(_) => &self.backend_failures,
            JudgeError::Malformed(_) => &self.malformed_replies,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct LlmJudge {
    client: ChatClient,
    max_prompt_chars: usize,
    stats: JudgeStats,
}

impl LlmJudge {
    pub fn new(config: &OpenAiChatConfig) -> Result<Self, ChatError> {
        Ok(Self {
            client: ChatClient::new(config)?,
            max_prompt_chars: config.max_prompt_chars,
            stats: JudgeStats::default(),
        })
    }

    pub fn model(&self) -> &str {
        self.client.model()
    }

    pub fn stats(&self) -> &JudgeStats {
        &self.stats
    }

    /// Asks the model to grade `answer`. Passages past the prompt budget are left out (the
    /// judge then sees less support, never more).
    pub async fn judge(
        &self,
        question: &str,
        answer: &str,
        passages: &[&Passage],
    ) -> Result<JudgeScores, JudgeError> {
        let mut user = String::from("Passages:\n");
        let mut used = 0usize;
        for passage in passages {
            let length = passage.text.chars().count();
            if used + length > self.max_prompt_chars {
                break;
            }
            used += length;
            user.push_str(&format!("[{}] {}\n", passage.number, passage.text.trim()));
        }
        user.push_str(&format!(
            "\nQuestion: {}\n\nAnswer: {}",
            question.trim(),
            answer.trim()
        ));
        let messages = [ChatMessage::system(JUDGE_RULES), ChatMessage::user(user)];
        let reply = self.client.complete(&messages).await?;
        parse_verdict(&reply).map_err(JudgeError::Malformed)
    }
}

/// Reads the JSON object in `reply` (code fences and text around it are tolerated) and checks
/// every score is a finite number within 0..=1 and the evaluation is not empty.
pub fn parse_verdict(reply: &str) -> Result<JudgeScores, String> {
    let start = reply.find('{').ok_or("no JSON object in the reply")?;
    let end = reply.rfind('}').ok_or("no JSON object in the reply")?;
    let object = reply
        .get(start..=end)
        .ok_or("no JSON object in the reply")?;
    let scores: JudgeScores =
        serde_json::from_str(object).map_err(|error| format!("not the asked JSON: {error}"))?;
    for (name, value) in [
        ("groundedness", scores.groundedness),
        ("relevance", scores.relevance),
        ("confidence", scores.confidence),
    ] {
        if !value.is_finite() || !(0.0..=1.0).contains(&value) {
            return Err(format!("{name} {value} is not within 0..1"));
        }
    }
    if scores.evaluation.trim().is_empty() {
        return Err("evaluation is empty".to_string());
    }
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_is_read_from_fenced_json_and_bad_ones_are_refused() {
        let fenced = "```json\n{\"groundedness\": 0.9, \"relevance\": 1, \"confidence\": 0.8, \"evaluation\": \"Well supported.\"}\n```";
        let scores = parse_verdict(fenced).unwrap();
        assert_eq!(scores.relevance, 1.0);
        assert_eq!(scores.evaluation, "Well supported.");
        for bad in [
            "I think it is fine.",
            "{\"groundedness\": 0.9}",
            "{\"groundedness\": 1.5, \"relevance\": 1, \"confidence\": 0.8, \"evaluation\": \"x\"}",
            "{\"groundedness\": \"high\", \"relevance\": 1, \"confidence\": 0.8, \"evaluation\": \"x\"}",
            "{\"groundedness\": 0.5, \"relevance\": 1, \"confidence\": 0.8, \"evaluation\": \" \"}",
            "} backwards {",
        ] {
            assert!(parse_verdict(bad).is_err(), "{bad}");
        }
    }
}
