//! `Ask` and `AskStream`, the whole question path of DESIGN.md: analyse, plan, fan out and
//! merge, build the numbered context, generate, evaluate, and answer with sources, the
//! analysis, retrieval metadata, timings and the evaluation.

use std::sync::Arc;
use std::time::Instant;

use quarry_proto::v1::{
    ask_chunk, generate_chunk, Analysis, AnalyzeRequest, AskChunk, AskRequest, AskResponse,
    EvaluateRequest, Evaluation, GenerateRequest, GenerateResponse, Passage, QueryType,
    RetrievalInfo, SearchMode, Timings,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Status};
use tracing::{info, Instrument, Span};

use crate::answer_cache::CacheKey;
use crate::context::build_context;
use crate::deadline::Deadline;
use crate::error::GatewayError;
use crate::front::CollectionGrant;
use crate::gateway::Gateway;
use crate::plan::plan_question;
use crate::retrieve::SearchTarget;
use crate::validate::{resolve_k, resolve_mode, validate_query};

/// A question, checked: where to look, how many passages, which mode, and its cache key.
struct Question {
    request: AskRequest,
    target: SearchTarget,
    k: u32,
    mode: SearchMode,
    /// `None` when the cache is off.
    cache_key: Option<CacheKey>,
}

/// Everything an answer is written from.
struct Prepared {
    question: String,
    analysis: Analysis,
    retrieval: RetrievalInfo,
    started: Instant,
}

impl Gateway {
    /// Records k, passages, confidence and partial on the current (server) span.
    pub async fn ask(
        &self,
        request: AskRequest,
        grant: Option<&CollectionGrant>,
        deadline: Deadline,
    ) -> Result<AskResponse, GatewayError> {
        let question = self.question(request, grant)?;
        if let Some(cached) = self.cached_answer(&question).await {
            return Ok(cached);
        }
        let mut prepared = self.prepare(&question, deadline).await?;
        let generate_started = Instant::now();
        let mut generator = self.clients.generator()?;
        let generated = generator
            .generate(with_timeout(
                self.generate_request(&prepared),
                deadline,
                self,
            ))
            .await
            .map_err(|status| GatewayError::downstream("generator", status))?
            .into_inner();
        timings(&mut prepared).generate_ms = elapsed_ms(generate_started);
        let response = self.finish(prepared, generated, deadline).await?;
        self.remember(&question, &response).await;
        Ok(response)
    }

    /// Checks a question: its collection (and the caller's grant), filter, k and mode.
    fn question(
        &self,
        request: AskRequest,
        grant: Option<&CollectionGrant>,
    ) -> Result<Question, GatewayError> {
        let target = self.target_of(&request.collection, request.filter.clone(), grant)?;
        validate_query("question", &request.question, &self.config)?;
        let k = resolve_k(request.k, self.config.default_ask_k, &self.config)?;
        let mode = resolve_mode(request.mode)?;
        let cache_key = self.answers.enabled().then(|| {
            let generation = self
                .catalog
                .snapshot()
                .generation(&target.collection)
                .unwrap_or_default();
            self.answers.answer_key(
                &target.collection,
                generation,
                &request.question,
                k,
                mode as i32,
                &format!("{:?}/{}", self.config.fusion, self.config.rrf_k),
                target.filter.as_ref(),
            )
        });
        Ok(Question {
            request,
            target,
            k,
            mode,
            cache_key,
        })
    }

    /// A cached answer to the same question on the same collection, with no write since;
    /// `None` when there is none, the cache is off, or the client asked for a fresh one.
    async fn cached_answer(&self, question: &Question) -> Option<AskResponse> {
        let key = question.cache_key.as_ref()?;
        if question.request.skip_cache {
            return None;
        }
        let mut answer = self.answers.answer(key).await?;
        answer.cached = true;
        Span::current().record("cache_hit", true);
        info!(collection = %question.target.collection, "question answered from the cache");
        Some(answer)
    }

    /// Caches a whole answer (not a partial one: a shard's absence is not an answer).
    async fn remember(&self, question: &Question, response: &AskResponse) {
        let (Some(key), Some(retrieval)) = (&question.cache_key, &response.retrieval) else {
            return;
        };
        if !retrieval.partial {
            self.answers.put_answer(key, response).await;
        }
    }

    /// Streams answer text as the generator writes it, then the whole `AskResponse`.
    pub fn ask_stream(
        self: Arc<Self>,
        request: AskRequest,
        grant: Option<CollectionGrant>,
        deadline: Deadline,
    ) -> ReceiverStream<Result<AskChunk, Status>> {
        let (sender, receiver) = mpsc::channel(32);
        // The answer is written in the server span, which lives until the stream ends.
        tokio::spawn(
            async move {
                let answered = match self.question(request, grant.as_ref()) {
                    Ok(question) => self.stream_answer(question, deadline, &sender).await,
                    Err(error) => Err(error),
                };
                if let Err(error) = answered {
                    let _ = sender.send(Err(error.into())).await;
                }
            }
            .in_current_span(),
        );
        ReceiverStream::new(receiver)
    }

    async fn stream_answer(
        &self,
        question: Question,
        deadline: Deadline,
        sender: &mpsc::Sender<Result<AskChunk, Status>>,
    ) -> Result<(), GatewayError> {
        if let Some(cached) = self.cached_answer(&question).await {
            // The whole answer as one piece of text, then the response, as a fresh one ends.
            for chunk in [
                ask_chunk::Chunk::Token(cached.answer.clone()),
                ask_chunk::Chunk::Done(cached),
            ] {
                let _ = sender.send(Ok(AskChunk { chunk: Some(chunk) })).await;
            }
            return Ok(());
        }
        let mut prepared = self.prepare(&question, deadline).await?;
        let generate_started = Instant::now();
        let mut generator = self.clients.generator()?;
        let mut upstream = generator
            .generate_stream(with_timeout(
                self.generate_request(&prepared),
                deadline,
                self,
            ))
            .await
            .map_err(|status| GatewayError::downstream("generator", status))?
            .into_inner();
        let mut generated = None;
        while let Some(chunk) = upstream.next().await {
            let chunk = chunk.map_err(|status| GatewayError::downstream("generator", status))?;
            match chunk.chunk {
                Some(generate_chunk::Chunk::Token(token)) => {
                    let forwarded = AskChunk {
                        chunk: Some(ask_chunk::Chunk::Token(token)),
                    };
                    if sender.send(Ok(forwarded)).await.is_err() {
                        info!("client left the answer stream; stopping generation");
                        return Ok(());
                    }
                }
                Some(generate_chunk::Chunk::Done(response)) => generated = Some(response),
                None => {}
            }
        }
        let generated = generated.ok_or_else(|| GatewayError::Downstream {
            role: "generator",
            code: tonic::Code::Unavailable,
            status_message: "stream ended without a final answer".to_string(),
        })?;
        timings(&mut prepared).generate_ms = elapsed_ms(generate_started);
        let response = self.finish(prepared, generated, deadline).await?;
        self.remember(&question, &response).await;
        let _ = sender
            .send(Ok(AskChunk {
                chunk: Some(ask_chunk::Chunk::Done(response)),
            }))
            .await;
        Ok(())
    }

    /// Analyse, plan, search every shard, and number the best passages.
    async fn prepare(
        &self,
        question: &Question,
        deadline: Deadline,
    ) -> Result<Prepared, GatewayError> {
        let started = Instant::now();
        let (request, k, mode) = (&question.request, question.k, question.mode);
        Span::current().record("k", k);

        let wants_vectors = mode != SearchMode::Keyword;
        let (analysis, mut query_vector) = self
            .analyze(
                &request.question,
                wants_vectors,
                request.skip_cache,
                deadline,
            )
            .await?;
        if wants_vectors && query_vector.is_none() {
            // An analyzer without an encoder, or one from before `AnalyzeRequest.embed`
            // (a rolling upgrade): `Embed` tells which, and answers the latter.
            query_vector = self.embed_query(&request.question, deadline).await?;
        }
        let analyze_ms = elapsed_ms(started);

        let query_type = QueryType::try_from(analysis.query_type).unwrap_or(QueryType::Unspecified);
        let entities: Vec<String> = analysis
            .entities
            .iter()
            .map(|entity| entity.text.clone())
            .collect();
        let context = self.plan_context(mode, k, query_vector.is_some());
        let plan = self.plan_rerank(plan_question(context, query_type, &entities)?, k, true);
        let search_started = Instant::now();
        let retrieved = self
            .retrieve(
                &question.target,
                &request.question,
                &plan,
                query_vector.unwrap_or_default(),
                k,
                deadline,
            )
            .await?;
        let passages = build_context(&retrieved.ranked, self.config.max_context_chars);
        let retrieval = RetrievalInfo {
            strategy: plan.strategy,
            shards_total: retrieved.shards_total,
            shards_answered: retrieved.shards_answered(),
            partial: retrieved.partial(),
            shards_failed: retrieved.shards_failed,
            hedges: retrieved.hedges,
            timings: Some(Timings {
                analyze_ms,
                search_ms: elapsed_ms(search_started),
                ..Timings::default()
            }),
            passages,
        };
        Ok(Prepared {
            question: request.question.clone(),
            analysis,
            retrieval,
            started,
        })
    }

    /// The question's analysis and, when `embed`, its embedding (`None` when the analyzer
    /// has no encoder), from one call: the analyzer's classifier and the search share the
    /// one forward pass. Taken from the cache unless `fresh`; kept there either way.
    async fn analyze(
        &self,
        question: &str,
        embed: bool,
        fresh: bool,
        deadline: Deadline,
    ) -> Result<(Analysis, Option<Vec<f32>>), GatewayError> {
        let key = self
            .answers
            .enabled()
            .then(|| self.answers.analysis_key(question, embed));
        let cached = match &key {
            Some(key) if !fresh => self.answers.analysis(key).await,
            _ => None,
        };
        let response = match cached {
            Some(response) => response,
            None => {
                let mut analyzer = self.clients.analyzer()?;
                let request = AnalyzeRequest {
                    query: question.to_string(),
                    embed,
                };
                let response = analyzer
                    .analyze(with_timeout(request, deadline, self))
                    .await
                    .map_err(|status| GatewayError::downstream("analyzer", status))?
                    .into_inner();
                if let Some(key) = &key {
                    self.answers.put_analysis(key, &response).await;
                }
                response
            }
        };
        let embedding = response
            .embedding
            .map(|vector| vector.values)
            .filter(|values| embed && !values.is_empty());
        Ok((response.analysis.unwrap_or_default(), embedding))
    }

    fn generate_request(&self, prepared: &Prepared) -> GenerateRequest {
        GenerateRequest {
            question: prepared.question.clone(),
            passages: prepared.retrieval.passages.clone(),
            analysis: Some(prepared.analysis.clone()),
            max_answer_chars: 0,
        }
    }

    /// Evaluate the answer and put the response together.
    async fn finish(
        &self,
        mut prepared: Prepared,
        generated: GenerateResponse,
        deadline: Deadline,
    ) -> Result<AskResponse, GatewayError> {
        let evaluate_started = Instant::now();
        let mut evaluator = self.clients.evaluator()?;
        let evaluate_request = EvaluateRequest {
            question: prepared.question.clone(),
            answer: generated.answer.clone(),
            passages: prepared.retrieval.passages.clone(),
        };
        let evaluation = evaluator
            .evaluate(with_timeout(evaluate_request, deadline, self))
            .await
            .map_err(|status| GatewayError::downstream("evaluator", status))?
            .into_inner();
        let total_ms = elapsed_ms(prepared.started);
        let timings = timings(&mut prepared);
        timings.evaluate_ms = elapsed_ms(evaluate_started);
        timings.total_ms = total_ms;
        Ok(self.compose(prepared, generated, evaluation))
    }

    fn compose(
        &self,
        prepared: Prepared,
        generated: GenerateResponse,
        evaluation: Evaluation,
    ) -> AskResponse {
        let confidence = evaluation.confidence;
        let low_confidence = confidence < self.config.confidence_threshold;
        let mut answer = generated.answer;
        if low_confidence {
            answer.push_str(&low_confidence_notice(
                confidence,
                self.config.confidence_threshold,
                &evaluation.evaluator,
            ));
        }
        let sources = cited_sources(&generated.cited, &prepared.retrieval.passages);
        let span = Span::current();
        span.record("passages", prepared.retrieval.passages.len());
        span.record("confidence", confidence);
        span.record("partial", prepared.retrieval.partial);
        info!(
            query_type = prepared.analysis.query_type,
            passages = prepared.retrieval.passages.len(),
            cited = sources.len(),
            confidence,
            partial = prepared.retrieval.partial,
            "question answered"
        );
        AskResponse {
            answer,
            reasoning: generated.reasoning,
            confidence,
            sources,
            analysis: Some(prepared.analysis),
            retrieval: Some(prepared.retrieval),
            evaluation: Some(evaluation),
            low_confidence,
            generator: generated.generator,
            cached: false,
        }
    }
}

/// The notice appended to an answer under the confidence threshold.
pub fn low_confidence_notice(confidence: f32, threshold: f32, evaluator: &str) -> String {
    format!(
        "\n\n(Low confidence: {confidence:.2} is below {threshold:.2}, as judged by the {evaluator} evaluator; check the sources before relying on this answer.)"
    )
}

/// Document ids of the cited passages, in citation order, without repeats.
fn cited_sources(cited: &[u32], passages: &[Passage]) -> Vec<String> {
    let mut sources: Vec<String> = Vec::new();
    for number in cited {
        let Some(passage) = passages.iter().find(|passage| passage.number == *number) else {
            continue;
        };
        if !sources.contains(&passage.doc_id) {
            sources.push(passage.doc_id.clone());
        }
    }
    sources
}

fn with_timeout<T>(message: T, deadline: Deadline, gateway: &Gateway) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(deadline.hop(gateway.hop_limit()));
    request
}

fn timings(prepared: &mut Prepared) -> &mut Timings {
    prepared
        .retrieval
        .timings
        .get_or_insert_with(Timings::default)
}

fn elapsed_ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_follow_citations_without_repeats() {
        let passage = |number: u32, id: &str| Passage {
            number,
            doc_id: id.to_string(),
            ..Passage::default()
        };
        let passages = [passage(1, "a"), passage(2, "b"), passage(3, "a")];
        assert_eq!(cited_sources(&[1, 2, 3, 9], &passages), ["a", "b"]);
    }

    #[test]
    fn the_notice_names_the_numbers() {
        let notice = low_confidence_notice(0.42, 0.6, "heuristic");
        assert!(notice.contains("0.42") && notice.contains("0.60") && notice.contains("heuristic"));
    }
}
