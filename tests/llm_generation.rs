//! `quarry up` with `generator.backend = "openai"` pointed at a fake chat-completions server
//! in this test process: `AskStream` forwards the model's streamed tokens over gRPC, then a
//! final answer whose sources are the documents behind the model's `[n]` citations.

mod support;

use std::time::{Duration, Instant};

use quarry_kit::openai::fake_server::{FakeChatServer, FakeReply, StreamEnd};
use quarry_proto::v1::{ask_chunk, AskRequest};
use serde_json::Value;
use support::{corpus, QuarryUp};
use tokio_stream::StreamExt;

/// The number the prompt gives the passage that starts with `title`, e.g. `[2] Penicillin: ...`.
fn passage_number(body: &Value, title: &str) -> Option<u32> {
    let prompt = body["messages"][1]["content"].as_str()?;
    prompt.lines().find_map(|line| {
        let rest = line.strip_prefix('[')?;
        let (number, text) = rest.split_once("] ")?;
        text.starts_with(title)
            .then(|| number.parse().ok())
            .flatten()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn ask_stream_forwards_model_tokens_and_maps_citations_to_documents() {
    let model = FakeChatServer::start(|_, body| {
        let cited = passage_number(body, "Penicillin").unwrap_or(99);
        if body["stream"] == false {
            return FakeReply::Completion(format!("Fleming found it [{cited}]."));
        }
        FakeReply::Stream {
            tokens: vec![
                "Alexander Fleming".to_string(),
                " discovered penicillin".to_string(),
                format!(" in 1928 [{cited}]"),
                " [42].".to_string(),
            ],
            first_token_delay: Duration::from_millis(200),
            token_delay: Duration::from_millis(20),
            end: StreamEnd::Done,
        }
    })
    .await
    .unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    let quarry = QuarryUp::start_with_env(
        data_dir.path(),
        2,
        &[
            ("QUARRY_ANALYZER__ENCODER", "hash"),
            ("QUARRY_GENERATOR__BACKEND", "openai"),
            ("QUARRY_GENERATOR__OPENAI__MODEL", "fake-llm"),
            (
                "QUARRY_GENERATOR__OPENAI__BASE_URLS",
                &format!("[\"{}\"]", model.base_url),
            ),
        ],
    )
    .await;
    let mut client = quarry.client().await;
    client.ingest(tokio_stream::iter(corpus())).await.unwrap();

    let started = Instant::now();
    let mut stream = client
        .ask_stream(AskRequest {
            question: "Who discovered penicillin?".to_string(),
            k: 3,
            mode: 0,
            ..AskRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut tokens = Vec::new();
    let mut first_token_after = None;
    let mut done = None;
    while let Some(chunk) = stream.next().await {
        match chunk.unwrap().chunk.unwrap() {
            ask_chunk::Chunk::Token(token) => {
                first_token_after.get_or_insert(started.elapsed());
                tokens.push(token);
            }
            ask_chunk::Chunk::Done(response) => done = Some(response),
        }
    }
    let done = done.expect("a final message after the tokens");
    assert_eq!(tokens.len(), 4, "{tokens:?}");
    assert_eq!(tokens[0], "Alexander Fleming");
    assert!(
        done.answer.starts_with(&tokens.concat()),
        "{tokens:?} vs {:?}",
        done.answer
    );
    assert_eq!(done.generator, "fake-llm");
    assert_eq!(
        done.sources,
        ["penicillin"],
        "[42] names no passage and is dropped"
    );
    assert!(done.reasoning.contains("[42]"), "{}", done.reasoning);
    assert!(
        first_token_after.unwrap() < Duration::from_secs(5),
        "{first_token_after:?}"
    );
    let requests = model.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].body["stream"], true);
    assert_eq!(requests[0].body["model"], "fake-llm");

    // Unary Ask goes through the same backend, without streaming.
    let answer = client
        .ask(AskRequest {
            question: "Who discovered penicillin?".to_string(),
            k: 3,
            mode: 0,
            // The streamed answer above is cached; this one must come from the backend.
            skip_cache: true,
            ..AskRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!answer.cached);
    assert!(
        answer.answer.starts_with("Fleming found it ["),
        "{}",
        answer.answer
    );
    assert_eq!(answer.sources, ["penicillin"]);
    assert_eq!(model.requests()[1].body["stream"], false);
}
