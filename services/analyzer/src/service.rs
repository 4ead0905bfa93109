//! The tonic `quarry.v1.Analyzer` service over `QuestionAnalyzer` and the configured encoder.

use std::sync::Arc;

use quarry_proto::v1::analyzer_server::Analyzer;
use quarry_proto::v1::{AnalyzeRequest, AnalyzeResponse, EmbedRequest, EmbedResponse, Vector};
use tonic::{Request, Response, Status};

use crate::analyzer::QuestionAnalyzer;
use crate::encoder::Encoder;
use crate::error::AnalyzerError;

/// Most texts embedded in one request.
const MAX_EMBED_BATCH: usize = 1024;

#[derive(Clone)]
pub struct AnalyzerService {
    analyzer: QuestionAnalyzer,
    encoder: Option<Arc<dyn Encoder>>,
}

impl AnalyzerService {
    pub fn new(encoder: Option<Arc<dyn Encoder>>) -> Self {
        Self {
            analyzer: QuestionAnalyzer,
            encoder,
        }
    }
}

#[tonic::async_trait]
impl Analyzer for AnalyzerService {
    async fn analyze(
        &self,
        request: Request<AnalyzeRequest>,
    ) -> Result<Response<AnalyzeResponse>, Status> {
        let analysis = self.analyzer.analyze(&request.into_inner().query)?;
        Ok(Response::new(AnalyzeResponse {
            analysis: Some(analysis),
        }))
    }

    async fn embed(
        &self,
        request: Request<EmbedRequest>,
    ) -> Result<Response<EmbedResponse>, Status> {
        let encoder = self.encoder.clone().ok_or(AnalyzerError::NoEncoder)?;
        let texts = request.into_inner().texts;
        if texts.len() > MAX_EMBED_BATCH {
            return Err(AnalyzerError::InvalidArgument {
                field: "texts",
                reason: format!("at most {MAX_EMBED_BATCH} texts per request"),
            }
            .into());
        }
        let encoder_for_task = Arc::clone(&encoder);
        let vectors = tokio::task::spawn_blocking(move || encoder_for_task.encode(&texts))
            .await
            .map_err(|error| Status::internal(format!("encoder task failed: {error}")))??;
        Ok(Response::new(EmbedResponse {
            vectors: vectors
                .into_iter()
                .map(|values| Vector { values })
                .collect(),
            model: encoder.name(),
            dimensions: encoder.dimensions() as u32,
        }))
    }
}
