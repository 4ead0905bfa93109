//! The tonic `quarry.v1.Generator` service over the extractive writer. The stream sends the
//! answer one cited sentence at a time, then the whole response.

use std::pin::Pin;

use futures::Stream;
use quarry_proto::v1::generator_server::Generator;
use quarry_proto::v1::{generate_chunk, GenerateChunk, GenerateRequest, GenerateResponse};
use tonic::{Request, Response, Status};

use crate::error::GeneratorError;
use crate::extractive::{extractive_answer, Passage};

/// Most passages one request may carry.
const MAX_PASSAGES: usize = 1000;

#[derive(Clone)]
pub struct GeneratorService {
    default_max_answer_chars: u32,
}

impl GeneratorService {
    pub fn new(default_max_answer_chars: u32) -> Self {
        Self {
            default_max_answer_chars,
        }
    }

    fn write(&self, request: GenerateRequest) -> Result<GenerateResponse, GeneratorError> {
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
        let budget = match request.max_answer_chars {
            0 => self.default_max_answer_chars,
            requested => requested,
        };
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
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<GenerateChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Generator for GeneratorService {
    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<GenerateResponse>, Status> {
        Ok(Response::new(self.write(request.into_inner())?))
    }

    type GenerateStreamStream = ChunkStream;

    async fn generate_stream(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        let response = self.write(request.into_inner())?;
        let mut chunks: Vec<Result<GenerateChunk, Status>> =
            split_after_citations(&response.answer)
                .into_iter()
                .map(|piece| {
                    Ok(GenerateChunk {
                        chunk: Some(generate_chunk::Chunk::Token(piece)),
                    })
                })
                .collect();
        chunks.push(Ok(GenerateChunk {
            chunk: Some(generate_chunk::Chunk::Done(response)),
        }));
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
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
mod tests {
    use super::*;
    use quarry_proto::v1::Passage as ProtoPassage;

    #[test]
    fn pieces_reassemble_into_the_answer() {
        let answer = "Insulin lowers glucose [1]. Cells absorb it [2]. ";
        let pieces = split_after_citations(answer);
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces.concat(), answer);
    }

    #[test]
    fn answers_cite_the_passage_that_holds_the_answer() {
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
            .unwrap();
        assert_eq!(response.cited, vec![2]);
        assert!(response.answer.contains("[2]"));
        let blank = service.write(GenerateRequest {
            question: " ".to_string(),
            ..GenerateRequest::default()
        });
        assert!(blank.unwrap_err().to_string().starts_with("question"));
    }
}
