//! The tonic `quarry.v1.Evaluator` service over the heuristic evaluator.

use quarry_proto::v1::evaluator_server::Evaluator;
use quarry_proto::v1::{EvaluateRequest, Evaluation};
use tonic::{Request, Response, Status};

use crate::heuristic::evaluate_heuristic;

#[derive(Clone, Default)]
pub struct EvaluatorService;

impl EvaluatorService {
    /// Judges an answer against the passages it was written from.
    pub fn judge(&self, request: &EvaluateRequest) -> Evaluation {
        let mut passages: Vec<&quarry_proto::v1::Passage> = request.passages.iter().collect();
        passages.sort_by_key(|passage| passage.number);
        let texts: Vec<&str> = passages
            .iter()
            .map(|passage| passage.text.as_str())
            .collect();
        let judged = evaluate_heuristic(&request.question, &request.answer, &texts);
        Evaluation {
            evaluation: judged.evaluation,
            groundedness: judged.groundedness,
            relevance: judged.relevance,
            citation_validity: judged.citation_validity,
            confidence: judged.confidence,
            evaluator: "heuristic".to_string(),
        }
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
        Ok(Response::new(self.judge(&request)))
    }
}
