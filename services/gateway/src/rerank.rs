//! The optional rerank stage: after fusion and before the context is built, a reranker may
//! reorder the best fused candidates — a `/v1/rerank` server (TEI, vLLM, Jina and
//! Cohere-compatible ones) or a chat model asked to rank numbered passages, the DSPy
//! templates' way — through the generator's client (balanced base URLs, retries with
//! backoff, timeouts). A reranker that fails leaves the fused order, counted
//! (`quarry_gateway_rerank_total{outcome="fallback"}`), and never fails the call.
//!
//! When it pays is the plan's decision (`with_rerank`): only for `Ask` unless
//! `rerank.search`, and only when more candidates than the k kept can be found; the plan
//! then widens its candidate lists to `rerank.candidates`.

use quarry_kit::config::RerankConfig;
use quarry_kit::openai::{ChatClient, ChatError, ChatMessage};
use serde::Deserialize;
use tracing::warn;

use crate::fan_out::ShardedCandidate;
use crate::metrics::metrics;
use crate::plan::RetrievalPlan;

/// Most characters of one passage shown to the reranker.
const PASSAGE_CHARS: usize = 2000;

/// A configured reranker.
pub enum Reranker {
    Endpoint(ChatClient),
    Chat(ChatClient),
}

impl Reranker {
    /// `None` when `rerank.backend = "off"`.
    pub fn from_config(config: &RerankConfig) -> Result<Option<Self>, String> {
        let client = |section: &str, chat| {
            ChatClient::new(chat).map_err(|error| format!("rerank.{section}: {error}"))
        };
        Ok(match config.backend.as_str() {
            "endpoint" => Some(Reranker::Endpoint(client("endpoint", &config.endpoint)?)),
            "chat" => Some(Reranker::Chat(client("chat", &config.chat)?)),
            _ => None,
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Reranker::Endpoint(_) => "rerank endpoint",
            Reranker::Chat(_) => "chat ranking",
        }
    }

    /// Reorders `candidates` (their text fetched) by relevance to `query`; on failure keeps
    /// them as they are. Returns whether they were reranked.
    pub async fn rerank(&self, query: &str, candidates: &mut Vec<ShardedCandidate>) -> bool {
        let passages: Vec<String> = candidates
            .iter()
            .map(|hit| {
                let text = format!("{} {}", hit.candidate.title, hit.candidate.text);
                text.trim().chars().take(PASSAGE_CHARS).collect()
            })
            .collect();
        let ranked = match self {
            Reranker::Endpoint(client) => client.rerank(query, &passages, passages.len()).await,
            Reranker::Chat(client) => rank_by_chat(client, query, &passages).await,
        };
        match ranked.and_then(|ranked| reorder(candidates, &ranked)) {
            Ok(reordered) => {
                *candidates = reordered;
                metrics().rerank.with_label_values(&["reranked"]).inc();
                true
            }
            Err(error) => {
                metrics().rerank.with_label_values(&["fallback"]).inc();
                warn!(reranker = self.name(), error = %error, "rerank failed; keeping the fused order");
                false
            }
        }
    }
}

/// Candidates in the reranker's order with its scores; candidates it left out follow, in
/// their fused order, below its lowest score.
fn reorder(
    candidates: &[ShardedCandidate],
    ranked: &[(usize, f64)],
) -> Result<Vec<ShardedCandidate>, ChatError> {
    if ranked.is_empty() && !candidates.is_empty() {
        return Err(ChatError::Malformed(
            "the reranker ranked nothing".to_string(),
        ));
    }
    let mut placed = vec![false; candidates.len()];
    let mut reordered = Vec::with_capacity(candidates.len());
    for (index, score) in ranked {
        if *index >= candidates.len() || placed[*index] {
            continue;
        }
        placed[*index] = true;
        let mut hit = candidates[*index].clone();
        hit.candidate.score = *score;
        reordered.push(hit);
    }
    let floor = reordered
        .last()
        .map_or(0.0, |hit: &ShardedCandidate| hit.candidate.score);
    for (index, hit) in candidates.iter().enumerate() {
        if !placed[index] {
            let mut hit = hit.clone();
            hit.candidate.score = floor - 1.0 - index as f64;
            reordered.push(hit);
        }
    }
    Ok(reordered)
}

#[derive(Deserialize)]
struct ChatRanking {
    ranking: Vec<usize>,
}

/// Asks a chat model for the passages' numbers, most relevant first; its order becomes
/// scores from 1 down (the numbers are 1-based, as passages are cited).
async fn rank_by_chat(
    client: &ChatClient,
    query: &str,
    passages: &[String],
) -> Result<Vec<(usize, f64)>, ChatError> {
    let mut listing = String::new();
    for (position, passage) in passages.iter().enumerate() {
        listing.push_str(&format!("[{}] {passage}\n", position + 1));
    }
    let messages = [
        ChatMessage::system(
            "You rank passages by how well they help answer a question. Reply with JSON \
             {\"ranking\": [numbers]}: every passage number, most relevant first.",
        ),
        ChatMessage::user(format!("Question: {query}\n\nPassages:\n{listing}")),
    ];
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"ranking": {"type": "array", "items": {"type": "integer"}}},
        "required": ["ranking"],
        "additionalProperties": false,
    });
    let reply = client.complete_json(&messages, "ranking", &schema).await?;
    let ranking: ChatRanking = serde_json::from_str(reply.trim())
        .map_err(|error| ChatError::Malformed(format!("ranking: {error}")))?;
    let count = ranking.ranking.len().max(1) as f64;
    Ok(ranking
        .ranking
        .into_iter()
        .filter(|number| (1..=passages.len()).contains(number))
        .enumerate()
        .map(|(position, number)| (number - 1, 1.0 - position as f64 / count))
        .collect())
}

/// Widens a plan so that a reranker sees `candidates` fused candidates, when that is more
/// than the `k` kept (otherwise reranking cannot change which passages are kept, only
/// their order, and is not worth a model call).
pub fn with_rerank(mut plan: RetrievalPlan, k: u32, candidates: u32) -> RetrievalPlan {
    if candidates <= k {
        return plan;
    }
    if plan.keyword_k > 0 {
        plan.keyword_k = plan.keyword_k.max(candidates);
    }
    if plan.vector_k > 0 {
        plan.vector_k = plan.vector_k.max(candidates);
    }
    plan.rerank_candidates = Some(candidates);
    plan.strategy
        .push_str(&format!(", then rerank of the top {candidates}"));
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fan_out::Candidate;

    fn hits(ids: &[&str]) -> Vec<ShardedCandidate> {
        ids.iter()
            .enumerate()
            .map(|(position, id)| ShardedCandidate {
                shard: 0,
                candidate: Candidate {
                    doc_id: id.to_string(),
                    score: 10.0 - position as f64,
                    ..Candidate::default()
                },
            })
            .collect()
    }

    #[test]
    fn the_rerankers_order_comes_first_and_the_rest_follows_in_fused_order() {
        let reordered = reorder(&hits(&["a", "b", "c", "d"]), &[(2, 0.9), (0, 0.5)]).unwrap();
        let ids: Vec<&str> = reordered
            .iter()
            .map(|hit| hit.candidate.doc_id.as_str())
            .collect();
        assert_eq!(ids, ["c", "a", "b", "d"]);
        assert!(reordered
            .windows(2)
            .all(|pair| pair[0].candidate.score > pair[1].candidate.score));
        assert!(reorder(&hits(&["a"]), &[]).is_err());
    }
}
