//! Tests of `OpenAiEncoder` against a tiny hand-written HTTP/1.1 embeddings server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;

use serde_json::{json, Value};

use super::*;

/// What the fake server saw of one request.
struct SeenRequest {
    request_line: String,
    /// Header lines, names lowercased.
    headers: Vec<(String, String)>,
    body: Value,
}

impl SeenRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Serves `POST /v1/embeddings` on a free port: each request is reported on the returned
/// channel and answered with `status` and `answer(request body)`.
fn fake_server(
    status: u16,
    answer: impl Fn(&Value) -> Value + Send + 'static,
) -> (String, mpsc::Receiver<SeenRequest>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
    let (seen, requests) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').unwrap();
                headers.push((name.trim().to_lowercase(), value.trim().to_string()));
            }
            let length: usize = headers
                .iter()
                .find(|(name, _)| name == "content-length")
                .map(|(_, value)| value.parse().unwrap())
                .unwrap_or(0);
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).unwrap();
            let body: Value = serde_json::from_slice(&body).unwrap();
            let reply = answer(&body).to_string();
            let _ = seen.send(SeenRequest {
                request_line: request_line.trim_end().to_string(),
                headers,
                body,
            });
            let head = format!(
                "HTTP/1.1 {status} Status\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                reply.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(reply.as_bytes()).unwrap();
        }
    });
    (base_url, requests)
}

fn config(base_url: &str, api_key_env: &str, dimensions: usize) -> OpenAiEmbeddingsConfig {
    OpenAiEmbeddingsConfig {
        base_url: base_url.to_string(),
        model: "test-embedder".to_string(),
        api_key_env: api_key_env.to_string(),
        dimensions,
        timeout_ms: 5_000,
    }
}

fn texts(count: usize) -> Vec<String> {
    (0..count).map(|text| format!("text {text}")).collect()
}

/// Answers input `i` with `[i + 1, 1, 0]`, listing the inputs in reverse order.
fn reversed_answer(body: &Value) -> Value {
    let inputs = body["input"].as_array().unwrap().len();
    let data: Vec<Value> = (0..inputs)
        .rev()
        .map(|index| {
            json!({"object": "embedding", "index": index, "embedding": [index as f32 + 1.0, 1.0, 0.0]})
        })
        .collect();
    json!({"object": "list", "data": data, "model": "test-embedder",
           "usage": {"prompt_tokens": 3, "total_tokens": 3}})
}

#[test]
fn vectors_come_back_in_input_order_normalised_with_the_key_as_bearer() {
    std::env::set_var("QUARRY_TEST_OPENAI_KEY_ORDER", "sk-test-123");
    let (base_url, requests) = fake_server(200, reversed_answer);
    let encoder =
        OpenAiEncoder::new(&config(&base_url, "QUARRY_TEST_OPENAI_KEY_ORDER", 3)).unwrap();
    let vectors = encoder.encode(&texts(4)).unwrap();
    for (index, vector) in vectors.iter().enumerate() {
        let first = index as f32 + 1.0;
        let norm = (first * first + 1.0).sqrt();
        let expected = [first / norm, 1.0 / norm, 0.0];
        for (got, want) in vector.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "vector {index}: {vector:?}");
        }
    }
    let seen = requests.recv().unwrap();
    assert_eq!(seen.request_line, "POST /v1/embeddings HTTP/1.1");
    assert_eq!(seen.header("authorization"), Some("Bearer sk-test-123"));
    assert_eq!(
        seen.body,
        json!({"model": "test-embedder", "input": ["text 0", "text 1", "text 2", "text 3"]})
    );
    assert!(!format!("{encoder:?}").contains("sk-test-123"));
}

#[test]
fn without_a_key_no_authorization_header_is_sent() {
    let (base_url, requests) = fake_server(200, reversed_answer);
    let encoder =
        OpenAiEncoder::new(&config(&base_url, "QUARRY_TEST_OPENAI_KEY_NEVER_SET", 3)).unwrap();
    encoder.encode(&texts(1)).unwrap();
    assert_eq!(requests.recv().unwrap().header("authorization"), None);
}

#[test]
fn server_errors_and_rate_limits_are_unavailable_other_refusals_are_errors() {
    for (status, unavailable) in [(500, true), (503, true), (429, true), (400, false)] {
        let (base_url, _requests) = fake_server(status, |_| json!({"error": {"message": "nope"}}));
        let encoder = OpenAiEncoder::new(&config(&base_url, "UNSET_KEY_ENV", 3)).unwrap();
        let error = encoder.encode(&texts(2)).unwrap_err();
        match error {
            AnalyzerError::EncoderUnavailable(ref message) if unavailable => {
                assert!(message.contains(&status.to_string()), "{message}")
            }
            AnalyzerError::Encoder(ref message) if !unavailable => {
                assert!(message.contains(&status.to_string()), "{message}")
            }
            other => panic!("status {status}: {other:?}"),
        }
    }
}

#[test]
fn a_refused_connection_is_unavailable() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base_url = format!("http://127.0.0.1:{port}/v1");
    let encoder = OpenAiEncoder::new(&config(&base_url, "UNSET_KEY_ENV", 3)).unwrap();
    let error = encoder.encode(&texts(1)).unwrap_err();
    assert!(
        matches!(error, AnalyzerError::EncoderUnavailable(_)),
        "{error:?}"
    );
}

#[test]
fn a_wrong_width_names_expected_and_got() {
    let (base_url, _requests) = fake_server(200, reversed_answer);
    let encoder = OpenAiEncoder::new(&config(&base_url, "UNSET_KEY_ENV", 384)).unwrap();
    let error = encoder.encode(&texts(2)).unwrap_err();
    match error {
        AnalyzerError::Encoder(message) => {
            assert!(
                message.contains("expected 384 dimensions, got 3"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_or_repeated_indexes_are_errors() {
    let (base_url, _requests) = fake_server(200, |_| {
        json!({"data": [{"index": 0, "embedding": [1.0, 0.0, 0.0]},
                        {"index": 0, "embedding": [0.0, 1.0, 0.0]}]})
    });
    let encoder = OpenAiEncoder::new(&config(&base_url, "UNSET_KEY_ENV", 3)).unwrap();
    let error = encoder.encode(&texts(2)).unwrap_err();
    assert!(matches!(error, AnalyzerError::Encoder(ref message) if message.contains("repeated")));
}

#[tokio::test]
async fn it_can_be_created_and_dropped_inside_async_code() {
    let (base_url, _requests) = fake_server(200, reversed_answer);
    let encoder = OpenAiEncoder::new(&config(&base_url, "UNSET_KEY_ENV", 3)).unwrap();
    let encoder = std::sync::Arc::new(encoder);
    let worker = std::sync::Arc::clone(&encoder);
    let vectors = tokio::task::spawn_blocking(move || worker.encode(&texts(2)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(vectors.len(), 2);
    drop(encoder);
}
