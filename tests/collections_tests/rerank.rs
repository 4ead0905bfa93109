//! The rerank stage against the local model-protocol server: a `/v1/rerank` endpoint's
//! order is applied to the passages an answer is written from, as is a chat model's ranking
//! of numbered passages; a failing reranker leaves the fused order and is counted.

use quarry_kit::openai::fake_server::{FakeChatServer, FakeReply};
use quarry_proto::v1::{AskRequest, AskResponse};
use serde_json::{json, Value};

use crate::support::prometheus::{scrape, Exposition};
use crate::support::{corpus, free_port, QuarryUp, UpOptions};

const QUESTION: &str = "Who discovered penicillin?";

async fn start(env: Vec<(&str, &str)>, metrics: &str) -> QuarryUp {
    let data = tempfile::tempdir().unwrap().keep();
    let mut env = env;
    env.push(("QUARRY_ANALYZER__ENCODER", "hash"));
    env.push(("QUARRY_RERANK__CANDIDATES", "6"));
    let quarry = QuarryUp::start_with(
        &data,
        2,
        UpOptions {
            args: vec!["--metrics-addr".to_string(), metrics.to_string()],
            env,
            ..UpOptions::default()
        },
    )
    .await;
    quarry
        .client()
        .await
        .ingest(tokio_stream::iter(corpus()))
        .await
        .unwrap();
    quarry
}

async fn ask(quarry: &QuarryUp) -> AskResponse {
    quarry
        .client()
        .await
        .ask(AskRequest {
            question: QUESTION.to_string(),
            k: 2,
            skip_cache: true,
            ..AskRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
}

fn passages(answer: &AskResponse) -> Vec<String> {
    answer
        .retrieval
        .as_ref()
        .unwrap()
        .passages
        .iter()
        .map(|passage| passage.doc_id.clone())
        .collect()
}

async fn reranks(metrics: &str, outcome: &str) -> f64 {
    Exposition::parse(&scrape(metrics).await)
        .sum("quarry_gateway_rerank_total", &[("outcome", outcome)])
}

/// The corpus document a passage's text ("title text") is.
fn id_of(passage: &str) -> String {
    corpus()
        .into_iter()
        .find(|document| passage.starts_with(&format!("{} {}", document.title, document.text)))
        .map(|document| document.id)
        .unwrap_or_else(|| panic!("no document {passage:?}"))
}

/// The candidates' ids in the order the gateway sent them (the fused order).
fn sent_ids(documents: &Value) -> Vec<String> {
    documents
        .as_array()
        .unwrap()
        .iter()
        .map(|document| id_of(document.as_str().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rerank_endpoints_order_is_applied_and_a_failing_one_falls_back() {
    let server = FakeChatServer::start(|_, body| {
        // The fused order, reversed.
        let count = body["documents"].as_array().map_or(0, Vec::len);
        let results: Vec<Value> = (0..count)
            .rev()
            .enumerate()
            .map(|(rank, index)| json!({"index": index, "relevance_score": 1.0 - rank as f64 / 10.0}))
            .collect();
        FakeReply::Raw {
            status: 200,
            body: json!({"results": results}).to_string(),
            retry_after: None,
        }
    })
    .await
    .unwrap();
    let base_urls = format!("[\"{}\"]", server.base_url);
    let metrics = format!("127.0.0.1:{}", free_port());
    let quarry = start(
        vec![
            ("QUARRY_RERANK__BACKEND", "endpoint"),
            ("QUARRY_RERANK__ENDPOINT__BASE_URLS", &base_urls),
        ],
        &metrics,
    )
    .await;
    let answer = ask(&quarry).await;
    let seen = server.requests();
    let request = &seen.last().unwrap().body;
    assert_eq!(request["query"], QUESTION);
    let fused = sent_ids(&request["documents"]);
    assert_eq!(fused.len(), 6);
    assert_eq!(
        passages(&answer),
        [fused[5].clone(), fused[4].clone()],
        "the reranker's order"
    );
    let strategy = &answer.retrieval.as_ref().unwrap().strategy;
    assert!(strategy.contains("rerank of the top 6"), "{strategy}");
    assert_eq!(request["model"], "bge-reranker-base");
    assert_eq!(reranks(&metrics, "reranked").await, 1.0);

    let failing = FakeChatServer::start(|_, _| FakeReply::error(500, None))
        .await
        .unwrap();
    let failing_urls = format!("[\"{}\"]", failing.base_url);
    let failing_metrics = format!("127.0.0.1:{}", free_port());
    let fallback = start(
        vec![
            ("QUARRY_RERANK__BACKEND", "endpoint"),
            ("QUARRY_RERANK__ENDPOINT__BASE_URLS", &failing_urls),
            ("QUARRY_RERANK__ENDPOINT__MAX_RETRIES", "1"),
            ("QUARRY_RERANK__ENDPOINT__BACKOFF_MS", "1"),
        ],
        &failing_metrics,
    )
    .await;
    let answer = ask(&fallback).await;
    assert!(failing.request_count() >= 2, "tried and retried");
    let fused = sent_ids(&failing.requests()[0].body["documents"]);
    assert_eq!(passages(&answer), fused[..2], "the fused order stands");
    assert_eq!(reranks(&failing_metrics, "fallback").await, 1.0);
    assert_eq!(reranks(&failing_metrics, "reranked").await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chat_models_ranking_of_numbered_passages_is_applied() {
    let server = FakeChatServer::start(|_, body| {
        // The passages are listed as "[n] text" lines in the user message.
        let prompt = body["messages"][1]["content"].as_str().unwrap_or_default();
        let listed = prompt.lines().filter(|line| line.starts_with('[')).count();
        let ranking: Vec<usize> = (1..=listed).rev().collect();
        FakeReply::Completion(json!({"ranking": ranking}).to_string())
    })
    .await
    .unwrap();
    let base_urls = format!("[\"{}\"]", server.base_url);
    let metrics = format!("127.0.0.1:{}", free_port());
    let quarry = start(
        vec![
            ("QUARRY_RERANK__BACKEND", "chat"),
            ("QUARRY_RERANK__CHAT__BASE_URLS", &base_urls),
            ("QUARRY_RERANK__CHAT__MODEL", "fake-ranker"),
        ],
        &metrics,
    )
    .await;
    let answer = ask(&quarry).await;
    let request = server.requests().last().unwrap().body.clone();
    assert_eq!(request["model"], "fake-ranker");
    let prompt = request["messages"][1]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let fused: Vec<String> = prompt
        .lines()
        .filter_map(|line| line.split_once("] ").map(|(_, text)| id_of(text)))
        .collect();
    assert_eq!(fused.len(), 6);
    assert_eq!(
        passages(&answer),
        [fused[5].clone(), fused[4].clone()],
        "the model's order"
    );
    assert_eq!(reranks(&metrics, "reranked").await, 1.0);
}
