//! `LlmAnalyzer`: the `openai` analysis backend. Any OpenAI-compatible chat endpoint is asked
//! for the same fields the rules produce (query type, intent, entities, complexity,
//! confidence) as JSON following a schema; the reply is validated, and a reply that is not
//! usable, or a backend that fails, falls back to the rules, each fallback counted by cause.

use std::sync::atomic::{AtomicU64, Ordering};

use quarry_kit::config::OpenAiChatConfig;
use quarry_kit::openai::{ChatClient, ChatError, ChatMessage};
use quarry_proto::v1::{Analysis, Entity, QueryType};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::warn;

use crate::analyzer::QuestionAnalyzer;
use crate::error::AnalyzerError;
use crate::metrics::metrics;

const RULES: &str = "You classify questions sent to a document search engine. \
Reply with one JSON object and nothing else, with these fields: \
query_type: one of \"factual\" (a fact, a definition, a number), \"procedural\" (how to do \
something, steps), \"analytical\" (compare, explain why, weigh causes or trade-offs), \
\"creative\" (write, imagine, brainstorm); \
intent: a short snake_case label of what the asker wants, e.g. \"definition\", \"how_to\", \
\"comparison\"; \
entities: the names, acronyms, quoted phrases, dates and numbers in the question, each \
{\"text\": exactly as written in the question, \"kind\": a short lowercase label}; \
complexity: 0 (one simple fact) to 1 (many parts, deep reasoning); \
confidence: 0 to 1, how sure you are of query_type.";

/// Most entities kept from one reply.
const MAX_ENTITIES: usize = 32;

/// The JSON schema the reply must follow.
fn reply_schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["query_type", "intent", "entities", "complexity", "confidence"],
        "properties": {
            "query_type": {"type": "string", "enum": ["factual", "procedural", "analytical", "creative"]},
            "intent": {"type": "string"},
            "entities": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["text", "kind"],
                    "properties": {"text": {"type": "string"}, "kind": {"type": "string"}}
                }
            },
            "complexity": {"type": "number", "minimum": 0, "maximum": 1},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1}
        }
    })
}

#[derive(Debug, Deserialize)]
struct Reply {
    query_type: String,
    intent: String,
    entities: Vec<ReplyEntity>,
    complexity: f32,
    confidence: f32,
}

#[derive(Debug, Deserialize)]
struct ReplyEntity {
    text: String,
    kind: String,
}

/// Fallbacks to the rules, by cause.
#[derive(Debug, Default)]
pub struct LlmAnalyzerStats {
    answered: AtomicU64,
    malformed_replies: AtomicU64,
    backend_failures: AtomicU64,
}

impl LlmAnalyzerStats {
    /// Analyses the model gave.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Replies that were not the asked JSON, or broke its rules.
    pub fn malformed_replies(&self) -> u64 {
        self.malformed_replies.load(Ordering::Relaxed)
    }

    /// Calls that failed (down, timed out, refused after retries).
    pub fn backend_failures(&self) -> u64 {
        self.backend_failures.load(Ordering::Relaxed)
    }
}

/// Why the model's analysis could not be used.
#[derive(Debug, thiserror::Error)]
enum LlmAnalysisError {
    #[error(transparent)]
    Backend(#[from] ChatError),
    #[error("analysis reply unusable: {0}")]
    Malformed(String),
}

/// Question analysis by a chat model, with the rules as the fallback.
#[derive(Debug)]
pub struct LlmAnalyzer {
    client: ChatClient,
    rules: QuestionAnalyzer,
    stats: LlmAnalyzerStats,
}

impl LlmAnalyzer {
    pub fn new(config: &OpenAiChatConfig) -> Result<Self, AnalyzerError> {
        let client = ChatClient::new(config)
            .map_err(|error| AnalyzerError::EncoderLoad(format!("analyzer.chat: {error}")))?;
        Ok(Self {
            client,
            rules: QuestionAnalyzer::rules(),
            stats: LlmAnalyzerStats::default(),
        })
    }

    pub fn stats(&self) -> &LlmAnalyzerStats {
        &self.stats
    }

    /// The model's analysis of `query`; the rules' when the model's is not usable. The
    /// `analyzer` field says which: `openai:<model>` or `rules (fallback: <cause>)`.
    pub async fn analyze(&self, query: &str) -> Result<Analysis, AnalyzerError> {
        Ok(self.analyze_or_fall_back(query).await?.0)
    }

    /// As `analyze`, also saying whether the rules answered in the model's place.
    pub async fn analyze_or_fall_back(
        &self,
        query: &str,
    ) -> Result<(Analysis, bool), AnalyzerError> {
        // The rules validate the input (empty, too long) the same way for both backends.
        let rules_analysis = self.rules.analyze(query)?;
        match self.ask(query).await {
            Ok(analysis) => {
                self.stats.answered.fetch_add(1, Ordering::Relaxed);
                metrics()
                    .model_analyses
                    .with_label_values(&["answered"])
                    .inc();
                Ok((analysis, false))
            }
            Err(error) => {
                let (counter, cause) = match &error {
                    LlmAnalysisError::Backend(_) => (&self.stats.backend_failures, "backend"),
                    LlmAnalysisError::Malformed(_) => (&self.stats.malformed_replies, "malformed"),
                };
                counter.fetch_add(1, Ordering::Relaxed);
                metrics().model_analyses.with_label_values(&[cause]).inc();
                warn!(error = %error, "model analysis unusable; the rules answer instead");
                let analysis = Analysis {
                    analyzer: format!("rules (fallback: {cause})"),
                    ..rules_analysis
                };
                Ok((analysis, true))
            }
        }
    }

    async fn ask(&self, query: &str) -> Result<Analysis, LlmAnalysisError> {
        let messages = [
            ChatMessage::system(RULES),
            ChatMessage::user(format!("Question: {}", query.trim())),
        ];
        let reply = self
            .client
            .complete_json(&messages, "question_analysis", &reply_schema())
            .await?;
        let analysis = parse_reply(query, &reply).map_err(LlmAnalysisError::Malformed)?;
        Ok(Analysis {
            analyzer: format!("openai:{}", self.client.model()),
            ..analysis
        })
    }
}

/// Reads and checks the model's JSON: a known query type, a non-empty intent, scores within
/// 0..=1, and entities that occur in the question (a model may not invent them).
fn parse_reply(query: &str, reply: &str) -> Result<Analysis, String> {
    let start = reply.find('{').ok_or("no JSON object in the reply")?;
    let end = reply.rfind('}').ok_or("no JSON object in the reply")?;
    let object = reply
        .get(start..=end)
        .ok_or("no JSON object in the reply")?;
    let parsed: Reply =
        serde_json::from_str(object).map_err(|error| format!("not the asked JSON: {error}"))?;
    let query_type = match parsed.query_type.trim().to_ascii_lowercase().as_str() {
        "factual" => QueryType::Factual,
        "procedural" => QueryType::Procedural,
        "analytical" => QueryType::Analytical,
        "creative" => QueryType::Creative,
        other => return Err(format!("query_type {other:?} is not one of the four")),
    };
    let intent = parsed.intent.trim();
    if intent.is_empty() {
        return Err("intent is empty".to_string());
    }
    for (name, value) in [
        ("complexity", parsed.complexity),
        ("confidence", parsed.confidence),
    ] {
        if !value.is_finite() || !(0.0..=1.0).contains(&value) {
            return Err(format!("{name} {value} is not within 0..1"));
        }
    }
    let lowered = query.to_lowercase();
    let mut entities = Vec::new();
    for entity in parsed.entities.into_iter().take(MAX_ENTITIES) {
        let text = entity.text.trim();
        if text.is_empty() || !lowered.contains(&text.to_lowercase()) {
            return Err(format!("entity {text:?} is not in the question"));
        }
        entities.push(Entity {
            text: text.to_string(),
            kind: entity.kind.trim().to_lowercase(),
        });
    }
    Ok(Analysis {
        query_type: query_type as i32,
        intent: intent.to_string(),
        entities,
        complexity: parsed.complexity,
        confidence: parsed.confidence,
        analyzer: String::new(),
    })
}

#[cfg(test)]
#[path = "llm_tests.rs"]
mod tests;
