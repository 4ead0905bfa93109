//! The `openai` backend behind the generator service, against the fake chat-completions
//! server: streamed tokens in order, citations checked, bad input refused before any
//! request, and a gRPC client that hangs up closing the upstream connection.

use std::time::{Duration, Instant};

use futures::StreamExt;
use quarry_kit::config::OpenAiChatConfig;
use quarry_kit::openai::fake_server::{unreachable_base_url, FakeChatServer, FakeReply, StreamEnd};
use quarry_kit::text::NO_ANSWER;
use quarry_proto::v1::generator_client::GeneratorClient;
use quarry_proto::v1::generator_server::GeneratorServer;
use quarry_proto::v1::{Analysis, QueryType};
use tonic::Code;

use super::*;

fn config(base_urls: Vec<String>) -> OpenAiChatConfig {
    OpenAiChatConfig {
        base_urls,
        model: "fake-llm".to_string(),
        api_key_env: "QUARRY_TEST_GENERATOR_KEY_UNSET".to_string(),
        timeout_ms: 2_000,
        max_retries: 1,
        backoff_ms: 10,
        max_prompt_chars: 2_000,
        ..OpenAiChatConfig::default()
    }
}

fn openai_service(base_urls: Vec<String>) -> (GeneratorService, Arc<OpenAiWriter>) {
    let writer = Arc::new(OpenAiWriter::new(&config(base_urls)).unwrap());
    (
        GeneratorService::with_openai(500, Arc::clone(&writer)),
        writer,
    )
}

fn request() -> GenerateRequest {
    let passage = |number: u32, text: &str| ProtoPassage {
        number,
        doc_id: format!("doc-{number}"),
        title: String::new(),
        text: text.to_string(),
        score: 1.0,
    };
    GenerateRequest {
        question: "What does insulin do?".to_string(),
        passages: vec![
            passage(1, "Insulin lowers blood glucose."),
            passage(2, "Tides follow the Moon."),
        ],
        analysis: Some(Analysis {
            query_type: QueryType::Factual as i32,
            ..Analysis::default()
        }),
        max_answer_chars: 0,
    }
}

async fn collect(
    mut stream: ChunkStream,
) -> (Vec<String>, Option<GenerateResponse>, Option<Status>) {
    let mut tokens = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(GenerateChunk {
                chunk: Some(generate_chunk::Chunk::Token(token)),
            }) => tokens.push(token),
            Ok(GenerateChunk {
                chunk: Some(generate_chunk::Chunk::Done(done)),
            }) => return (tokens, Some(done), None),
            Ok(GenerateChunk { chunk: None }) => {}
            Err(status) => return (tokens, None, Some(status)),
        }
    }
    (tokens, None, None)
}

#[tokio::test]
async fn tokens_are_forwarded_in_order_then_the_checked_answer() {
    let server = FakeChatServer::start(|_, _| {
        FakeReply::stream(&["Insulin lowers", " blood glucose [1]", " (see [5])."])
    })
    .await
    .unwrap();
    let (service, writer) = openai_service(vec![server.base_url.clone()]);
    let stream = service.write_stream(request()).await.unwrap();
    let (tokens, done, error) = collect(stream).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(
        tokens,
        ["Insulin lowers", " blood glucose [1]", " (see [5])."]
    );
    let done = done.unwrap();
    assert_eq!(done.answer, tokens.concat());
    assert_eq!(done.cited, vec![1]);
    assert_eq!(done.generator, "fake-llm");
    assert!(
        done.reasoning.contains("do not exist: [5]"),
        "{}",
        done.reasoning
    );
    assert_eq!(writer.stats().dropped_citations(), 1);
    let prompt = &server.requests()[0].body["messages"];
    assert!(prompt[0]["content"]
        .as_str()
        .unwrap()
        .contains("answer it directly"));
    assert!(prompt[1]["content"]
        .as_str()
        .unwrap()
        .contains("[2] Tides follow the Moon."));
}

#[tokio::test]
async fn a_whole_answer_is_checked_and_an_empty_one_becomes_the_no_answer_reply() {
    let server = FakeChatServer::start(|index, _| match index {
        0 => FakeReply::Completion("Tides follow the Moon [2][2].".to_string()),
        _ => FakeReply::Completion("  ".to_string()),
    })
    .await
    .unwrap();
    let (service, writer) = openai_service(vec![server.base_url.clone()]);
    let response = service.write(request()).await.unwrap();
    assert_eq!(response.cited, vec![2]);
    let empty = service.write(request()).await.unwrap();
    assert_eq!(empty.answer, NO_ANSWER);
    assert!(empty.cited.is_empty());
    assert_eq!(writer.stats().empty_answers(), 1);
}

#[tokio::test]
async fn bad_input_is_refused_before_any_model_call() {
    let server = FakeChatServer::start(|_, _| FakeReply::Completion("x".to_string()))
        .await
        .unwrap();
    let (service, _) = openai_service(vec![server.base_url.clone()]);
    let mut oversized = request();
    oversized.passages[0].text = "glucose ".repeat(400);
    let status = Status::from(service.write(oversized).await.unwrap_err());
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("passages: "),
        "{}",
        status.message()
    );
    let blank = GenerateRequest {
        question: " ".to_string(),
        ..request()
    };
    let status = Status::from(service.write_stream(blank).await.err().unwrap());
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(server.request_count(), 0);
}

#[tokio::test]
async fn a_broken_stream_ends_with_unavailable_after_its_tokens_and_a_down_backend_fails_fast() {
    let server = FakeChatServer::start(|_, _| FakeReply::Stream {
        tokens: vec!["Insulin".to_string()],
        first_token_delay: Duration::ZERO,
        token_delay: Duration::ZERO,
        end: StreamEnd::DropConnection,
    })
    .await
    .unwrap();
    let (service, _) = openai_service(vec![server.base_url.clone()]);
    let (tokens, done, error) = collect(service.write_stream(request()).await.unwrap()).await;
    assert_eq!(tokens, ["Insulin"]);
    assert!(done.is_none());
    assert_eq!(error.map(|status| status.code()), Some(Code::Unavailable));
    assert_eq!(server.request_count(), 1);

    let (down, _) = openai_service(vec![unreachable_base_url()]);
    let started = Instant::now();
    let status = Status::from(down.write(request()).await.unwrap_err());
    assert_eq!(status.code(), Code::Unavailable);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_grpc_client_that_hangs_up_closes_the_upstream_request() {
    let server = FakeChatServer::start(|_, _| FakeReply::Stream {
        tokens: vec!["first".to_string(), " second".to_string()],
        first_token_delay: Duration::ZERO,
        token_delay: Duration::from_secs(30),
        end: StreamEnd::Done,
    })
    .await
    .unwrap();
    let (service, _) = openai_service(vec![server.base_url.clone()]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(GeneratorServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut client = GeneratorClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    let mut stream = client
        .generate_stream(request())
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(
        first.chunk,
        Some(generate_chunk::Chunk::Token("first".to_string()))
    );
    drop(stream);
    drop(client);
    assert!(
        server.wait_for_hangups(1, Duration::from_secs(5)).await,
        "the model server never saw the request end"
    );
}
