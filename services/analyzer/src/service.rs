//! The tonic `quarry.v1.Analyzer` service over `QuestionAnalyzer` and the configured encoder,
//! whose concurrent `Embed` calls share batches through `EmbedBatcher`.

use std::sync::Arc;

use quarry_proto::v1::analyzer_server::Analyzer;
use quarry_proto::v1::{AnalyzeRequest, AnalyzeResponse, EmbedRequest, EmbedResponse, Vector};
use tonic::{Request, Response, Status};

use crate::analyzer::QuestionAnalyzer;
use crate::encoder::{BatchOptions, EmbedBatcher, Encoder};
use crate::error::AnalyzerError;

/// Most texts embedded in one request.
const MAX_EMBED_BATCH: usize = 1024;

#[derive(Clone)]
pub struct AnalyzerService {
    analyzer: QuestionAnalyzer,
    embedder: Option<Arc<EmbedBatcher>>,
}

impl AnalyzerService {
    /// Serves `encoder` (if any) through a batcher with `batching`'s limits.
    pub fn new(
        encoder: Option<Arc<dyn Encoder>>,
        batching: BatchOptions,
    ) -> Result<Self, AnalyzerError> {
        let embedder = match encoder {
            Some(encoder) => Some(Arc::new(EmbedBatcher::start(encoder, batching)?)),
            None => None,
        };
        Ok(Self {
            analyzer: QuestionAnalyzer,
            embedder,
        })
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
        let embedder = self.embedder.as_ref().ok_or(AnalyzerError::NoEncoder)?;
        let texts = request.into_inner().texts;
        if texts.len() > MAX_EMBED_BATCH {
            return Err(AnalyzerError::InvalidArgument {
                field: "texts",
                reason: format!("at most {MAX_EMBED_BATCH} texts per request"),
            }
            .into());
        }
        let vectors = embedder.embed(texts).await?;
        let encoder = embedder.encoder();
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
