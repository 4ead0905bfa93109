//! The embedding heuristic through a real in-process analyzer gRPC server (hash encoder),
//! found through discovery; and its lexical fallbacks when there is no analyzer or the
//! analyzer has no encoder.

use std::sync::Arc;
use std::time::Duration;

use quarry_analyzer::{AnalyzerService, BatchOptions, Encoder, HashEncoder};
use quarry_kit::discovery::{Discovery, Member, Role, RoleChannels, StaticDiscovery};
use quarry_proto::v1::analyzer_server::AnalyzerServer;
use quarry_proto::v1::{EvaluateRequest, Passage};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use super::*;
use crate::similarity::cosine;
use crate::AnalyzerEmbedder;

const QUESTION: &str = "What does insulin do to blood glucose?";
const ANSWER: &str = "Insulin lowers blood glucose [1].";

fn request() -> EvaluateRequest {
    EvaluateRequest {
        question: QUESTION.to_string(),
        answer: ANSWER.to_string(),
        passages: vec![Passage {
            number: 1,
            doc_id: "insulin".to_string(),
            title: String::new(),
            text: "Insulin lowers blood glucose. The pancreas makes it.".to_string(),
            score: 1.0,
        }],
    }
}

/// Serves an analyzer with `encoder` on a free port; returns its address.
async fn start_analyzer(encoder: Option<Arc<dyn Encoder>>) -> String {
    let service = AnalyzerService::new(
        encoder,
        BatchOptions {
            max_batch: 32,
            window: Duration::from_micros(500),
            workers: 1,
            max_queued: 64,
        },
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AnalyzerServer::new(service))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    address
}

async fn service_with_analyzer_at(
    address: Option<String>,
) -> (EvaluatorService, Arc<AnalyzerEmbedder>) {
    let discovery = Arc::new(StaticDiscovery::new(1, Vec::new()));
    if let Some(address) = address {
        discovery
            .register(Member {
                node_id: "analyzer-test".to_string(),
                role: Role::Analyzer,
                address,
                shard: 0,
                replica: 0,
                version: "test".to_string(),
                ready: true,
                recovering: false,
                internal_tls: Default::default(),
            })
            .await
            .unwrap();
    }
    let embedder = Arc::new(AnalyzerEmbedder::new(
        Arc::new(RoleChannels::new(discovery)),
        4 * 1024 * 1024,
    ));
    (
        EvaluatorService::heuristic().with_embedder(Arc::clone(&embedder)),
        embedder,
    )
}

#[tokio::test]
async fn the_heuristic_uses_the_analyzers_embeddings_over_grpc() {
    let address = start_analyzer(Some(Arc::new(HashEncoder::new(64)))).await;
    let (service, embedder) = service_with_analyzer_at(Some(address)).await;
    let judged = service.evaluate_request(&request()).await;
    assert_eq!(judged.evaluator, HEURISTIC_EMBEDDINGS);
    assert_eq!(judged.groundedness, 1.0);
    assert_eq!(embedder.embedded(), 1);

    // Relevance is the cosine of the question's and the answer's vectors.
    let vectors = HashEncoder::new(64)
        .encode(&[
            QUESTION.to_string(),
            "Insulin lowers blood glucose .".to_string(),
        ])
        .unwrap();
    let expected = cosine(&vectors[0], &vectors[1]).clamp(0.0, 1.0);
    assert!(
        (judged.relevance - expected).abs() < 1e-5,
        "{judged:?} vs {expected}"
    );
}

#[tokio::test]
async fn without_an_encoder_or_an_analyzer_the_heuristic_is_lexical() {
    let address = start_analyzer(None).await;
    let (service, embedder) = service_with_analyzer_at(Some(address)).await;
    let judged = service.evaluate_request(&request()).await;
    assert_eq!(judged.evaluator, HEURISTIC_LEXICAL);
    assert_eq!(judged, service.judge_lexically(&request()));
    assert_eq!(embedder.fallbacks(), 1);
    let error = embedder
        .sentence_vectors(QUESTION, ANSWER, &["Insulin lowers blood glucose."])
        .await
        .unwrap_err();
    assert!(
        matches!(error, crate::embedder::EmbedderError::NoEncoder(_)),
        "{error}"
    );

    let (service, embedder) = service_with_analyzer_at(None).await;
    assert_eq!(
        service.evaluate_request(&request()).await.evaluator,
        HEURISTIC_LEXICAL
    );
    assert_eq!(embedder.fallbacks(), 1);

    // An analyzer that does not answer: lexical, not an error.
    let dead = quarry_kit::openai::fake_server::unreachable_base_url().replace("/v1", "");
    let (service, _) = service_with_analyzer_at(Some(dead)).await;
    assert_eq!(
        service.evaluate_request(&request()).await.evaluator,
        HEURISTIC_LEXICAL
    );
}
