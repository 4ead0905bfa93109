//! The tonic `quarry.v1.Analyzer` service over `QuestionAnalyzer` and the configured encoder,
//! whose concurrent `Embed` calls share batches through `EmbedBatcher`; analyses and
//! embeddings are answered from `AnalyzerCaches` when they can be.

use std::sync::Arc;

use quarry_proto::v1::analyzer_server::Analyzer;
use quarry_proto::v1::{AnalyzeRequest, AnalyzeResponse, EmbedRequest, EmbedResponse, Vector};
use tonic::{Request, Response, Status};
use tracing::warn;

use crate::analyzer::QuestionAnalyzer;
use crate::cache::{AnalyzerCaches, CacheCounts, CacheOptions};
use crate::encoder::{BatchOptions, BatchStats, EmbedBatcher, Encoder};
use crate::error::AnalyzerError;
use crate::llm::LlmAnalyzer;
use crate::query_head::QueryTypeHead;

/// Most texts embedded in one request.
const MAX_EMBED_BATCH: usize = 1024;

/// What `Analyze` answers with.
struct Analyzed {
    analysis: quarry_proto::v1::Analysis,
    embedding: Option<Vec<f32>>,
    cache_hit: bool,
}

#[derive(Clone)]
pub struct AnalyzerService {
    analyzer: QuestionAnalyzer,
    /// The `openai` backend; the rules answer when it is absent.
    model: Option<Arc<LlmAnalyzer>>,
    embedder: Option<Arc<EmbedBatcher>>,
    caches: AnalyzerCaches,
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
        let head = embedder
            .as_ref()
            .and_then(|embedder| QueryTypeHead::builtin_for(&embedder.encoder().name()));
        Ok(Self {
            analyzer: QuestionAnalyzer::with_head(head),
            model: None,
            embedder,
            caches: AnalyzerCaches::disabled(),
        })
    }

    /// Analyses questions with a chat model (the rules stay the fallback).
    pub fn with_model(mut self, model: Arc<LlmAnalyzer>) -> Self {
        self.model = Some(model);
        self
    }

    /// Caches analyses and embeddings with `options` (off until this is called).
    pub fn with_caches(mut self, options: CacheOptions) -> Self {
        self.caches = AnalyzerCaches::new(options);
        self
    }

    /// What the embedding batcher has done so far; `None` without an encoder.
    pub fn batch_stats(&self) -> Option<BatchStats> {
        self.embedder.as_ref().map(|embedder| embedder.stats())
    }

    /// Cache hits and misses so far.
    pub fn cache_counts(&self) -> CacheCounts {
        self.caches.counts()
    }

    /// The analysis of `query`, from the cache when it is there.
    /// A fallback analysis (the model's reply was unusable) is not cached, so the next ask
    /// tries the model again.
    pub async fn analyze_cached(
        &self,
        query: &str,
    ) -> Result<quarry_proto::v1::Analysis, AnalyzerError> {
        self.analyze_with_cache(query, false)
            .await
            .map(|analyzed| analyzed.analysis)
    }

    /// The analysis of `query` (from the cache when it is there) and, when `embed` is asked
    /// for or the rules' head needs it, the question's embedding: one forward pass serves
    /// both, and the search that follows.
    async fn analyze_with_cache(
        &self,
        query: &str,
        embed: bool,
    ) -> Result<Analyzed, AnalyzerError> {
        self.analyzer.validate(query)?;
        let cached = self.caches.analysis(query);
        let uses_head = self.model.is_none() && self.analyzer.has_head() && cached.is_none();
        let embedding = async {
            match &self.embedder {
                Some(embedder) if embed || uses_head => {
                    match self.embed_cached(embedder, vec![query.to_string()]).await {
                        Ok(vectors) => Ok(vectors.into_iter().next()),
                        Err(error) if !embed => {
                            warn!(error = %error, "embedding the question failed; the rules decide alone");
                            Ok(None)
                        }
                        Err(error) => Err(error),
                    }
                }
                _ => Ok(None),
            }
        };
        if let Some(analysis) = cached {
            return Ok(Analyzed {
                analysis,
                embedding: embedding.await?,
                cache_hit: true,
            });
        }
        let (analysis, embedding, degraded) = match &self.model {
            // The chat model does not use the embedding: both run at once.
            Some(model) => {
                let (analysed, embedding) =
                    futures::join!(model.analyze_or_fall_back(query), embedding);
                let (analysis, fallback) = analysed?;
                (analysis, embedding?, fallback)
            }
            None => {
                let embedding = embedding.await?;
                let analysis = self
                    .analyzer
                    .analyze_with_embedding(query, embedding.as_deref())?;
                // Without the vector the head could not help: not cached, so the next
                // analysis of this question tries again.
                (
                    analysis,
                    embedding.clone(),
                    uses_head && embedding.is_none(),
                )
            }
        };
        if !degraded {
            self.caches.store_analysis(query, &analysis);
        }
        Ok(Analyzed {
            analysis,
            embedding,
            cache_hit: false,
        })
    }

    /// The vectors of `texts`, encoding only those not cached.
    pub async fn embed_cached(
        &self,
        embedder: &EmbedBatcher,
        texts: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, AnalyzerError> {
        let cached = self.caches.embeddings(&texts);
        let missing: Vec<String> = texts
            .iter()
            .zip(&cached)
            .filter(|(_, found)| found.is_none())
            .map(|(text, _)| text.clone())
            .collect();
        let mut fresh = if missing.is_empty() {
            Vec::new()
        } else {
            embedder.embed(missing.clone()).await?
        };
        if fresh.len() != missing.len() {
            return Err(AnalyzerError::Encoder(format!(
                "{} vectors for {} texts",
                fresh.len(),
                missing.len()
            )));
        }
        for (text, vector) in missing.iter().zip(&fresh) {
            self.caches.store_embedding(text, vector);
        }
        fresh.reverse();
        let vectors = cached
            .into_iter()
            .map(|found| match found {
                Some(vector) => Some(vector.as_ref().clone()),
                None => fresh.pop(),
            })
            .collect::<Option<Vec<Vec<f32>>>>()
            .ok_or_else(|| AnalyzerError::Encoder("a vector is missing".to_string()))?;
        Ok(vectors)
    }
}

#[tonic::async_trait]
impl Analyzer for AnalyzerService {
    async fn analyze(
        &self,
        request: Request<AnalyzeRequest>,
    ) -> Result<Response<AnalyzeResponse>, Status> {
        let request = request.into_inner();
        let analyzed = self
            .analyze_with_cache(&request.query, request.embed)
            .await?;
        let span = tracing::Span::current();
        span.record("cache_hit", analyzed.cache_hit);
        span.record("query_type", analyzed.analysis.query_type);
        Ok(Response::new(AnalyzeResponse {
            analysis: Some(analyzed.analysis),
            embedding: analyzed
                .embedding
                .filter(|_| request.embed)
                .map(|values| Vector { values }),
        }))
    }

    async fn embed(
        &self,
        request: Request<EmbedRequest>,
    ) -> Result<Response<EmbedResponse>, Status> {
        let embedder = self.embedder.as_ref().ok_or(AnalyzerError::NoEncoder)?;
        let EmbedRequest { texts, documents } = request.into_inner();
        if texts.len() > MAX_EMBED_BATCH {
            return Err(AnalyzerError::InvalidArgument {
                field: "texts",
                reason: format!("at most {MAX_EMBED_BATCH} texts per request"),
            }
            .into());
        }
        tracing::Span::current().record("texts", texts.len());
        let vectors = if documents {
            // Documents are embedded once, at ingest: caching them would only evict queries.
            embedder.embed(texts).await?
        } else {
            self.embed_cached(embedder, texts).await?
        };
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::encoder::HashEncoder;

    /// A service over `encoder`, batching up to 8 texts.
    fn service_over(encoder: Arc<dyn Encoder>) -> AnalyzerService {
        AnalyzerService::new(
            Some(encoder),
            BatchOptions {
                max_batch: 8,
                window: Duration::from_micros(100),
                workers: 1,
                max_queued: 64,
            },
        )
        .unwrap()
    }

    /// A service over a 16-dimension hash encoder.
    fn hash_encoder_service() -> AnalyzerService {
        service_over(Arc::new(HashEncoder::new(16)))
    }

    /// `Analyze` of `query` through the gRPC trait.
    async fn call_analyze(
        service: &AnalyzerService,
        query: &str,
        embed: bool,
    ) -> Result<AnalyzeResponse, Status> {
        let request = AnalyzeRequest {
            query: query.to_string(),
            embed,
        };
        Analyzer::analyze(service, Request::new(request))
            .await
            .map(Response::into_inner)
    }

    #[tokio::test]
    async fn documents_being_ingested_neither_use_nor_fill_the_embedding_cache() {
        let service = hash_encoder_service().with_caches(CacheOptions {
            entries: 100,
            embedding_bytes: 1024 * 1024,
            ttl: Duration::from_secs(60),
        });
        let embed = |documents: bool| {
            Analyzer::embed(
                &service,
                Request::new(EmbedRequest {
                    texts: vec!["a document about moa".to_string()],
                    documents,
                }),
            )
        };
        embed(true).await.unwrap();
        embed(true).await.unwrap();
        let counts = service.caches.counts();
        assert_eq!((counts.embedding_hits, counts.embedding_misses), (0, 0));
        embed(false).await.unwrap();
        let counts = service.caches.counts();
        assert_eq!((counts.embedding_hits, counts.embedding_misses), (0, 1));
    }

    #[tokio::test]
    async fn repeated_questions_and_texts_are_answered_from_the_caches() {
        let service = hash_encoder_service().with_caches(CacheOptions {
            entries: 100,
            embedding_bytes: 1024 * 1024,
            ttl: Duration::from_secs(60),
        });
        let first = service
            .analyze_cached("Who discovered penicillin?")
            .await
            .unwrap();
        let again = service
            .analyze_cached(" Who  discovered penicillin? ")
            .await
            .unwrap();
        assert_eq!(first, again);
        let embedder = Arc::clone(service.embedder.as_ref().unwrap());
        let texts = vec!["kiwi".to_string(), "moa".to_string()];
        let cold = service
            .embed_cached(&embedder, texts.clone())
            .await
            .unwrap();
        let mixed = vec!["moa".to_string(), "emu".to_string(), "kiwi".to_string()];
        let warm = service.embed_cached(&embedder, mixed).await.unwrap();
        assert_eq!(warm[0], cold[1]);
        assert_eq!(warm[2], cold[0]);
        assert_eq!(warm[1].len(), 16);
        let counts = service.cache_counts();
        assert_eq!((counts.analysis_hits, counts.analysis_misses), (1, 1));
        assert_eq!((counts.embedding_hits, counts.embedding_misses), (2, 3));
    }

    /// Named like the model the compiled-in head belongs to, but every call fails.
    struct FailingMiniLm;

    impl Encoder for FailingMiniLm {
        fn name(&self) -> String {
            crate::MINILM_NAME.to_string()
        }

        fn dimensions(&self) -> usize {
            crate::MINILM_DIMENSIONS
        }

        fn encode(&self, _texts: &[String]) -> Result<Vec<Vec<f32>>, AnalyzerError> {
            Err(AnalyzerError::Encoder("down".to_string()))
        }
    }

    #[tokio::test]
    async fn an_analysis_made_without_the_heads_vector_is_not_cached() {
        let service = service_over(Arc::new(FailingMiniLm)).with_caches(CacheOptions {
            entries: 100,
            embedding_bytes: 1024 * 1024,
            ttl: Duration::from_secs(60),
        });
        assert!(service.analyzer.has_head());
        for _ in 0..2 {
            let analysis = service
                .analyze_cached("sourdough dense gummy middle")
                .await
                .expect("the rules answer when the encoder fails");
            assert_eq!(analysis.analyzer, "rules");
        }
        let counts = service.cache_counts();
        assert_eq!((counts.analysis_hits, counts.analysis_misses), (0, 2));
        let asked = call_analyze(&service, "sourdough dense gummy middle", true)
            .await
            .unwrap_err();
        assert_eq!(asked.code(), tonic::Code::Internal, "{asked}");
    }

    #[tokio::test]
    async fn analyze_returns_the_questions_embedding_only_when_asked() {
        let service = hash_encoder_service();
        let question = "Who discovered penicillin?";
        let with = call_analyze(&service, question, true).await.unwrap();
        let embedded = Analyzer::embed(
            &service,
            Request::new(EmbedRequest {
                texts: vec![question.to_string()],
                documents: false,
            }),
        )
        .await
        .unwrap()
        .into_inner();
        assert_eq!(with.embedding, embedded.vectors.first().cloned());
        let analysis = with.analysis.unwrap();
        // The hash encoder has no trained head: the rules decide alone.
        assert_eq!(analysis.analyzer, "rules");
        let without = call_analyze(&service, question, false).await.unwrap();
        assert_eq!(without.embedding, None);
        assert_eq!(without.analysis, Some(analysis));
        let blank = call_analyze(&service, " ", true).await.unwrap_err();
        assert_eq!(blank.code(), tonic::Code::InvalidArgument);
    }
}
