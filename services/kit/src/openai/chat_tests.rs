//! `ChatClient` against the fake chat-completions server: the real wire format, retries,
//! ejection, timeouts, and cancellation seen from the server's side.

use std::time::{Duration, Instant};

use super::fake_server::{unreachable_base_url, FakeChatServer, FakeReply, StreamEnd};
use super::*;
use crate::config::OpenAiChatConfig;

fn config(base_urls: Vec<String>) -> OpenAiChatConfig {
    OpenAiChatConfig {
        base_urls,
        model: "fake-model".to_string(),
        api_key_env: "QUARRY_TEST_CHAT_KEY_UNSET".to_string(),
        temperature: 0.2,
        max_tokens: 64,
        timeout_ms: 2_000,
        max_retries: 2,
        backoff_ms: 20,
        eject_ms: 60_000,
        max_prompt_chars: 10_000,
    }
}

fn question() -> Vec<ChatMessage> {
    vec![ChatMessage::system("be brief"), ChatMessage::user("why?")]
}

async fn drain(stream: &mut ChatStream) -> (Vec<String>, Option<ChatError>) {
    let mut tokens = Vec::new();
    loop {
        match stream.next_token().await {
            Ok(Some(token)) => tokens.push(token),
            Ok(None) => return (tokens, None),
            Err(error) => return (tokens, Some(error)),
        }
    }
}

#[tokio::test]
async fn streamed_tokens_arrive_in_order_from_a_chat_completions_request() {
    std::env::set_var("QUARRY_TEST_CHAT_KEY_SET", "sk-secret");
    let server =
        FakeChatServer::start(|_, _| FakeReply::stream(&["Insulin", " lowers", " glucose [1]."]))
            .await
            .unwrap();
    let client = ChatClient::new(&OpenAiChatConfig {
        api_key_env: "QUARRY_TEST_CHAT_KEY_SET".to_string(),
        ..config(vec![server.base_url.clone()])
    })
    .unwrap();
    assert!(!format!("{client:?}").contains("sk-secret"));
    let mut stream = client.stream(&question()).await.unwrap();
    let (tokens, error) = drain(&mut stream).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(tokens, ["Insulin", " lowers", " glucose [1]."]);
    let seen = server.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer sk-secret"));
    assert_eq!(seen[0].body["model"], "fake-model");
    assert_eq!(seen[0].body["stream"], true);
    assert_eq!(seen[0].body["max_tokens"], 64);
    assert_eq!(seen[0].body["messages"][1]["role"], "user");
    assert_eq!(seen[0].body["messages"][1]["content"], "why?");
}

#[tokio::test]
async fn a_whole_completion_is_read_and_a_malformed_one_is_refused() {
    let server = FakeChatServer::start(|index, _| match index {
        0 => FakeReply::Completion("Tides follow the Moon [2].".to_string()),
        _ => FakeReply::Raw {
            status: 200,
            body: "{\"not\": \"a completion\"}".to_string(),
            retry_after: None,
        },
    })
    .await
    .unwrap();
    let client = ChatClient::new(&config(vec![server.base_url.clone()])).unwrap();
    assert_eq!(
        client.complete(&question()).await.unwrap(),
        "Tides follow the Moon [2]."
    );
    assert_eq!(server.requests()[0].body["stream"], false);
    let error = client.complete(&question()).await.unwrap_err();
    assert!(matches!(error, ChatError::Malformed(_)), "{error}");
    assert_eq!(
        server.request_count(),
        2,
        "a malformed reply is not retried"
    );
}

#[tokio::test]
async fn retries_on_429_honouring_retry_after_and_on_500_then_succeeds() {
    let server = FakeChatServer::start(|index, _| match index {
        0 => FakeReply::error(429, Some("1")),
        1 => FakeReply::error(500, None),
        _ => FakeReply::stream(&["ok"]),
    })
    .await
    .unwrap();
    let client = ChatClient::new(&config(vec![server.base_url.clone()])).unwrap();
    let started = Instant::now();
    let mut stream = client.stream(&question()).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After: 1 was not honoured: {:?}",
        started.elapsed()
    );
    assert_eq!(drain(&mut stream).await.0, ["ok"]);
    assert_eq!(server.request_count(), 3);
}

#[tokio::test]
async fn retries_stop_after_max_retries_and_client_errors_are_not_retried() {
    let server = FakeChatServer::start(|index, _| match index {
        0..=2 => FakeReply::error(503, None),
        _ => FakeReply::error(400, None),
    })
    .await
    .unwrap();
    let client = ChatClient::new(&config(vec![server.base_url.clone()])).unwrap();
    let error = client.complete(&question()).await.unwrap_err();
    assert!(matches!(error, ChatError::Unavailable(_)), "{error}");
    assert_eq!(server.request_count(), 3, "one attempt and two retries");
    let error = client.complete(&question()).await.unwrap_err();
    assert!(matches!(error, ChatError::Rejected(_)), "{error}");
    assert_eq!(error.code(), tonic::Code::FailedPrecondition);
    assert_eq!(server.request_count(), 4, "a 400 is not retried");
}

#[tokio::test]
async fn a_stream_dropped_after_the_first_token_is_an_error_and_never_retried() {
    let server = FakeChatServer::start(|_, _| FakeReply::Stream {
        tokens: vec!["Half".to_string(), " an".to_string()],
        first_token_delay: Duration::ZERO,
        token_delay: Duration::ZERO,
        end: StreamEnd::DropConnection,
    })
    .await
    .unwrap();
    let client = ChatClient::new(&config(vec![server.base_url.clone()])).unwrap();
    let mut stream = client.stream(&question()).await.unwrap();
    let (tokens, error) = drain(&mut stream).await;
    assert_eq!(tokens, ["Half", " an"]);
    assert!(
        matches!(error, Some(ChatError::StreamBroken(_))),
        "{error:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.request_count(), 1, "no retry after a streamed token");
}

#[tokio::test]
async fn dropping_the_stream_closes_the_upstream_connection() {
    let server = FakeChatServer::start(|_, _| FakeReply::Stream {
        tokens: vec!["first".to_string()],
        first_token_delay: Duration::ZERO,
        token_delay: Duration::ZERO,
        end: StreamEnd::HoldOpen,
    })
    .await
    .unwrap();
    let client = ChatClient::new(&config(vec![server.base_url.clone()])).unwrap();
    let mut stream = client.stream(&question()).await.unwrap();
    assert_eq!(stream.next_token().await.unwrap().as_deref(), Some("first"));
    assert_eq!(server.hangups(), 0);
    drop(stream);
    assert!(
        server.wait_for_hangups(1, Duration::from_secs(5)).await,
        "the server never saw the connection close"
    );
}

#[tokio::test]
async fn a_slow_first_token_and_a_silent_server_time_out() {
    let server = FakeChatServer::start(|index, _| match index {
        0 => FakeReply::Stream {
            tokens: vec!["late".to_string()],
            first_token_delay: Duration::from_secs(5),
            token_delay: Duration::ZERO,
            end: StreamEnd::Done,
        },
        _ => FakeReply::Hang,
    })
    .await
    .unwrap();
    let client = ChatClient::new(&OpenAiChatConfig {
        timeout_ms: 300,
        max_retries: 0,
        ..config(vec![server.base_url.clone()])
    })
    .unwrap();
    let started = Instant::now();
    let mut stream = client.stream(&question()).await.unwrap();
    let (tokens, error) = drain(&mut stream).await;
    drop(stream);
    assert!(tokens.is_empty());
    assert!(matches!(error, Some(ChatError::Timeout(_))), "{error:?}");
    assert_eq!(
        error.map(|error| error.code()),
        Some(tonic::Code::DeadlineExceeded)
    );
    let error = client.complete(&question()).await.unwrap_err();
    assert!(matches!(error, ChatError::Timeout(_)), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(server.wait_for_hangups(2, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn with_one_of_two_base_urls_down_requests_succeed_and_it_is_ejected() {
    let server = FakeChatServer::start(|_, _| FakeReply::Completion("fine".to_string()))
        .await
        .unwrap();
    let down = unreachable_base_url();
    let client = ChatClient::new(&config(vec![down, server.base_url.clone()])).unwrap();
    for _ in 0..6 {
        assert_eq!(client.complete(&question()).await.unwrap(), "fine");
    }
    assert!(client.endpoints().is_ejected(0), "the down URL is ejected");
    assert!(!client.endpoints().is_ejected(1));
    assert_eq!(server.request_count(), 6);
}

#[tokio::test]
async fn every_base_url_down_is_unavailable_quickly() {
    let client = ChatClient::new(&config(vec![
        unreachable_base_url(),
        unreachable_base_url(),
    ]))
    .unwrap();
    let started = Instant::now();
    let error = client.complete(&question()).await.unwrap_err();
    assert!(matches!(error, ChatError::Unavailable(_)), "{error}");
    assert_eq!(error.code(), tonic::Code::Unavailable);
    assert!(started.elapsed() < Duration::from_secs(2));
}
