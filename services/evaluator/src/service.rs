//! The tonic `quarry.v1.Evaluator` service over the configured judge: `heuristic`, or `llm`
//! with the heuristic as its fallback. Citation validity is always counted locally. The
//! heuristic uses sentence embeddings from a ready analyzer when it can reach one
//! (`crate::embedder`), and lexical overlap alone otherwise.

use std::sync::Arc;

use quarry_kit::config::EvaluatorConfig;
use quarry_kit::openai::ChatError;
use quarry_proto::v1::evaluator_server::Evaluator;
use quarry_proto::v1::{EvaluateRequest, Evaluation, Passage};
use tonic::{Request, Response, Status};
use tracing::{debug, warn};

use crate::embedder::AnalyzerEmbedder;
use crate::heuristic::{evaluate_heuristic, evaluate_with_embeddings, HeuristicEvaluation};
use crate::llm::LlmJudge;

/// `Evaluation.evaluator` when sentence embeddings took part.
pub const HEURISTIC_EMBEDDINGS: &str = "heuristic (embeddings)";
/// `Evaluation.evaluator` when only lexical overlap did (no analyzer, or no encoder).
pub const HEURISTIC_LEXICAL: &str = "heuristic (lexical)";

#[derive(Clone, Default)]
pub struct EvaluatorService {
    /// The `llm` judge; `None` is `heuristic`.
    llm: Option<Arc<LlmJudge>>,
    /// Where sentence embeddings come from; `None` judges lexically.
    embedder: Option<Arc<AnalyzerEmbedder>>,
}

impl EvaluatorService {
    /// The `heuristic` evaluator.
    pub fn heuristic() -> Self {
        Self::default()
    }

    /// The `llm` judge, falling back to the heuristic.
    pub fn with_llm(judge: Arc<LlmJudge>) -> Self {
        Self {
            llm: Some(judge),
            embedder: None,
        }
    }

    /// The backend `config.backend` names (validated by the config: `heuristic` or `llm`).
    pub fn from_config(config: &EvaluatorConfig) -> Result<Self, ChatError> {
        if config.backend == "llm" {
            return Ok(Self::with_llm(Arc::new(LlmJudge::new(&config.openai)?)));
        }
        Ok(Self::heuristic())
    }

    /// Lets the heuristic use sentence embeddings from `embedder`.
    pub fn with_embedder(mut self, embedder: Arc<AnalyzerEmbedder>) -> Self {
        self.embedder = Some(embedder);
        self
    }

    fn sorted_passages(request: &EvaluateRequest) -> Vec<&Passage> {
        let mut passages: Vec<&Passage> = request.passages.iter().collect();
        passages.sort_by_key(|passage| passage.number);
        passages
    }

    fn passage_texts(request: &EvaluateRequest) -> Vec<&str> {
        Self::sorted_passages(request)
            .into_iter()
            .map(|passage| passage.text.as_str())
            .collect()
    }

    /// Judges an answer with the lexical heuristic alone.
    pub fn judge_lexically(&self, request: &EvaluateRequest) -> Evaluation {
        let texts = Self::passage_texts(request);
        let judged = evaluate_heuristic(&request.question, &request.answer, &texts);
        to_evaluation(judged, HEURISTIC_LEXICAL)
    }

    /// Judges an answer with the heuristic: with sentence embeddings when the analyzer gives
    /// them, lexically when it cannot (no analyzer, no encoder, an error or a timeout; each
    /// counted by the embedder).
    pub async fn judge(&self, request: &EvaluateRequest) -> Evaluation {
        let Some(embedder) = &self.embedder else {
            return self.judge_lexically(request);
        };
        let texts = Self::passage_texts(request);
        match embedder
            .sentence_vectors(&request.question, &request.answer, &texts)
            .await
        {
            Ok(vectors) => {
                let judged =
                    evaluate_with_embeddings(&request.question, &request.answer, &texts, &vectors);
                to_evaluation(judged, HEURISTIC_EMBEDDINGS)
            }
            Err(error) => {
                debug!(error = %error, "no sentence embeddings, judging lexically");
                self.judge_lexically(request)
            }
        }
    }

    /// Judges an answer with the configured backend. The `llm` judge's scores replace the
    /// heuristic's groundedness, relevance and confidence; when its reply is unusable or its
    /// backend fails, the heuristic's verdict stands, says so, and the fallback is counted.
    pub async fn evaluate_request(&self, request: &EvaluateRequest) -> Evaluation {
        let heuristic = self.judge(request).await;
        let Some(judge) = &self.llm else {
            return heuristic;
        };
        let passages = Self::sorted_passages(request);
        match judge
            .judge(&request.question, &request.answer, &passages)
            .await
        {
            Ok(scores) => Evaluation {
                evaluation: scores.evaluation,
                groundedness: scores.groundedness,
                relevance: scores.relevance,
                citation_validity: heuristic.citation_validity,
                confidence: scores.confidence,
                evaluator: format!("llm:{}", judge.model()),
            },
            Err(error) => {
                judge.stats().count(&error);
                warn!(error = %error, "llm judge failed, the heuristic judged instead");
                Evaluation {
                    evaluation: format!(
                        "{} (The llm judge failed, so the heuristic judged: {error}.)",
                        heuristic.evaluation
                    ),
                    evaluator: "heuristic (llm fallback)".to_string(),
                    ..heuristic
                }
            }
        }
    }
}

fn to_evaluation(judged: HeuristicEvaluation, evaluator: &str) -> Evaluation {
    Evaluation {
        evaluation: judged.evaluation,
        groundedness: judged.groundedness,
        relevance: judged.relevance,
        citation_validity: judged.citation_validity,
        confidence: judged.confidence,
        evaluator: evaluator.to_string(),
    }
}

#[tonic::async_trait]
impl Evaluator for EvaluatorService {
    async fn evaluate(
        &self,
        request: Request<EvaluateRequest>,
    ) -> Result<Response<Evaluation>, Status> {
        let request = request.into_inner();
        if request.question.trim().is_empty() {
            return Err(Status::invalid_argument("question: must not be empty"));
        }
        Ok(Response::new(self.evaluate_request(&request).await))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use quarry_kit::config::OpenAiChatConfig;
    use quarry_kit::openai::fake_server::{unreachable_base_url, FakeChatServer, FakeReply};

    use super::*;

    fn request() -> EvaluateRequest {
        EvaluateRequest {
            question: "What does insulin do?".to_string(),
            answer: "Insulin lowers blood glucose [1].".to_string(),
            passages: vec![Passage {
                number: 1,
                doc_id: "insulin".to_string(),
                title: String::new(),
                text: "Insulin lowers blood glucose.".to_string(),
                score: 1.0,
            }],
        }
    }

    fn llm_service(base_url: String) -> (EvaluatorService, Arc<LlmJudge>) {
        let judge = Arc::new(
            LlmJudge::new(&OpenAiChatConfig {
                base_urls: vec![base_url],
                model: "judge".to_string(),
                timeout_ms: 1_000,
                max_retries: 0,
                ..OpenAiChatConfig::default()
            })
            .unwrap(),
        );
        (EvaluatorService::with_llm(Arc::clone(&judge)), judge)
    }

    #[tokio::test]
    async fn the_llm_judge_scores_and_falls_back_to_the_heuristic_when_unusable() {
        let server = FakeChatServer::start(|index, _| match index {
            0 => FakeReply::Completion(
                "{\"groundedness\": 0.9, \"relevance\": 0.8, \"confidence\": 0.85, \"evaluation\": \"Supported by [1].\"}"
                    .to_string(),
            ),
            _ => FakeReply::Completion("Looks good to me!".to_string()),
        })
        .await
        .unwrap();
        let (service, judge) = llm_service(server.base_url.clone());
        let judged = service.evaluate_request(&request()).await;
        assert_eq!(judged.evaluator, "llm:judge");
        assert_eq!(judged.confidence, 0.85);
        assert_eq!(judged.citation_validity, 1.0);
        let prompt = server.requests()[0].body["messages"][1]["content"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            prompt.contains("[1] Insulin lowers blood glucose."),
            "{prompt}"
        );

        let fallback = service.evaluate_request(&request()).await;
        assert_eq!(fallback.evaluator, "heuristic (llm fallback)");
        assert_eq!(
            fallback.confidence,
            service.judge(&request()).await.confidence
        );
        assert!(fallback.evaluation.contains("judge reply unusable"));
        assert_eq!(judge.stats().malformed_replies(), 1);
    }

    #[tokio::test]
    async fn a_down_judge_falls_back_within_its_timeout() {
        let (service, judge) = llm_service(unreachable_base_url());
        let judged =
            tokio::time::timeout(Duration::from_secs(3), service.evaluate_request(&request()))
                .await
                .unwrap();
        assert_eq!(judged.evaluator, "heuristic (llm fallback)");
        assert_eq!(judge.stats().backend_failures(), 1);
    }
}

#[cfg(test)]
#[path = "service_embedding_tests.rs"]
mod embedding_tests;
