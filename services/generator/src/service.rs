//! The tonic `quarry.v1.Generator` service over the configured backend. `extractive` streams
//! the answer one cited sentence at a time; `openai` forwards the model's tokens as they
//! arrive. Either stream ends with the whole response. Dropping the stream (a client that
//! hangs up) drops the upstream HTTP request.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use quarry_kit::config::GeneratorConfig;
use quarry_kit::openai::{ChatError, ChatStream};
use quarry_proto::v1::generator_server::Generator;
use quarry_proto::v1::{
    generate_chunk, GenerateChunk, GenerateRequest, GenerateResponse, Passage as ProtoPassage,
};
use tonic::{Request, Response, Status};
use tracing::warn;

use crate::error::GeneratorError;
use crate::extractive::{extractive_answer, Passage};
use crate::openai::OpenAiWriter;

/// Most passages one request may carry.
const MAX_PASSAGES: usize = 1000;

#[derive(Clone)]
pub struct GeneratorService {
    default_max_answer_chars: u32,
    /// The `openai` backend; `None` is `extractive`.
    openai: Option<Arc<OpenAiWriter>>,
}

impl GeneratorService {
    /// The `extractive` backend.
    pub fn new(default_max_answer_chars: u32) -> Self {
        Self {
            default_max_answer_chars,
            openai: None,
        }
    }

    /// The `openai` backend.
    pub fn with_openai(default_max_answer_chars: u32, writer: Arc<OpenAiWriter>) -> Self {
        Self {
            default_max_answer_chars,
            openai: Some(writer),
        }
    }

    /// The backend `config.backend` names (validated by the config: `extractive` or `openai`).
    pub fn from_config(config: &GeneratorConfig) -> Result<Self, ChatError> {
        if config.backend == "openai" {
            let writer = OpenAiWriter::new(&config.openai)?;
            return Ok(Self::with_openai(config.max_answer_chars, Arc::new(writer)));
        }
        Ok(Self::new(config.max_answer_chars))
    }

    /// Checks the request and returns its answer budget.
    fn validate(&self, request: &GenerateRequest) -> Result<u32, GeneratorError> {
        if request.question.trim().is_empty() {
            return Err(GeneratorError::InvalidArgument {
                field: "question",
                reason: "must not be empty".to_string(),
            });
        }
        if request.passages.len() > MAX_PASSAGES {
            return Err(GeneratorError::InvalidArgument {
                field: "passages",
                reason: format!("at most {MAX_PASSAGES} passages"),
            });
        }
        Ok(match request.max_answer_chars {
            0 => self.default_max_answer_chars,
            requested => requested,
        })
    }

    fn write_extractive(
        &self,
        request: GenerateRequest,
    ) -> Result<GenerateResponse, GeneratorError> {
        let budget = self.validate(&request)?;
        let passages: Vec<Passage> = request
            .passages
            .into_iter()
            .map(|passage| Passage {
                number: passage.number,
                doc_id: passage.doc_id,
                title: passage.title,
                text: passage.text,
            })
            .collect();
        let answer = extractive_answer(&request.question, &passages, budget as usize);
        Ok(GenerateResponse {
            answer: answer.answer,
            reasoning: answer.reasoning,
            cited: answer.cited,
            generator: "extractive".to_string(),
        })
    }

    /// The whole answer from the configured backend.
    pub async fn write(
        &self,
        request: GenerateRequest,
    ) -> Result<GenerateResponse, GeneratorError> {
        match &self.openai {
            None => self.write_extractive(request),
            Some(writer) => {
                let budget = self.validate(&request)?;
                writer.write(&request, budget).await
            }
        }
    }

    /// The answer as a stream of chunks, the whole response last.
    pub async fn write_stream(
        &self,
        request: GenerateRequest,
    ) -> Result<ChunkStream, GeneratorError> {
        let Some(writer) = &self.openai else {
            return Ok(extractive_stream(self.write_extractive(request)?));
        };
        let budget = self.validate(&request)?;
        let chat = writer.open_stream(&request, budget).await?;
        Ok(model_stream(ModelStreamState {
            chat,
            answer: String::new(),
            writer: Arc::clone(writer),
            passages: request.passages,
        }))
    }
}

pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<GenerateChunk, Status>> + Send>>;

fn token_chunk(token: String) -> GenerateChunk {
    GenerateChunk {
        chunk: Some(generate_chunk::Chunk::Token(token)),
    }
}

fn done_chunk(response: GenerateResponse) -> GenerateChunk {
    GenerateChunk {
        chunk: Some(generate_chunk::Chunk::Done(response)),
    }
}

fn extractive_stream(response: GenerateResponse) -> ChunkStream {
    let mut chunks: Vec<Result<GenerateChunk, Status>> = split_after_citations(&response.answer)
        .into_iter()
        .map(|piece| Ok(token_chunk(piece)))
        .collect();
    chunks.push(Ok(done_chunk(response)));
    Box::pin(futures::stream::iter(chunks))
}

/// A model's reply being forwarded; it owns the upstream request.
struct ModelStreamState {
    chat: ChatStream,
    answer: String,
    writer: Arc<OpenAiWriter>,
    passages: Vec<ProtoPassage>,
}

/// Each token as it arrives, then the checked response; an upstream failure ends the stream
/// with its status (never retried: tokens may already be out).
fn model_stream(state: ModelStreamState) -> ChunkStream {
    Box::pin(futures::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        match state.chat.next_token().await {
            Ok(Some(token)) => {
                state.answer.push_str(&token);
                Some((Ok(token_chunk(token)), Some(state)))
            }
            Ok(None) => {
                let answer = std::mem::take(&mut state.answer);
                let response = state.writer.finish(answer, &state.passages);
                Some((Ok(done_chunk(response)), None))
            }
            Err(error) => {
                warn!(error = %error, streamed_chars = state.answer.len(), "model stream failed");
                Some((Err(Status::from(GeneratorError::from(error))), None))
            }
        }
    }))
}

#[tonic::async_trait]
impl Generator for GeneratorService {
    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<GenerateResponse>, Status> {
        Ok(Response::new(self.write(request.into_inner()).await?))
    }

    type GenerateStreamStream = ChunkStream;

    async fn generate_stream(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        Ok(Response::new(
            self.write_stream(request.into_inner()).await?,
        ))
    }
}

/// Splits an answer into pieces that each end after a `[n]` citation (the last piece takes
/// the rest); concatenated, the pieces are the answer.
fn split_after_citations(answer: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for (position, character) in answer.char_indices() {
        if character == ']' {
            let end = position + character.len_utf8();
            pieces.push(answer[start..end].to_string());
            start = end;
        }
    }
    if start < answer.len() {
        pieces.push(answer[start..].to_string());
    }
    pieces
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod openai_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_reassemble_into_the_answer() {
        let answer = "Insulin lowers glucose [1]. Cells absorb it [2]. ";
        let pieces = split_after_citations(answer);
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces.concat(), answer);
    }

    #[tokio::test]
    async fn answers_cite_the_passage_that_holds_the_answer() {
        let service = GeneratorService::new(500);
        let passage = |number: u32, text: &str| ProtoPassage {
            number,
            doc_id: format!("doc-{number}"),
            title: String::new(),
            text: text.to_string(),
            score: 1.0,
        };
        let response = service
            .write(GenerateRequest {
                question: "What does insulin do to blood glucose?".to_string(),
                passages: vec![
                    passage(1, "Rivers carry sediment to the sea."),
                    passage(2, "Insulin lowers blood glucose by moving it into cells."),
                ],
                analysis: None,
                max_answer_chars: 0,
            })
            .await
            .unwrap();
        assert_eq!(response.cited, vec![2]);
        assert!(response.answer.contains("[2]"));
        let blank = service
            .write(GenerateRequest {
                question: " ".to_string(),
                ..GenerateRequest::default()
            })
            .await;
        assert!(blank.unwrap_err().to_string().starts_with("question"));
    }
}
