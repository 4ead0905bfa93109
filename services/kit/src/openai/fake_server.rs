//! A small OpenAI-compatible chat-completions server for tests (feature `fake-openai`):
//! hand-written HTTP/1.1 on a tokio listener that answers `POST /v1/chat/completions` with
//! JSON bodies, SSE `data:` chunks (chunked transfer encoding) ending in `data: [DONE]`,
//! error statuses with `Retry-After`, dropped connections, slow tokens or no answer at all,
//! and records every request and every client that hung up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// How a streamed reply ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// `data: [DONE]` and the final zero-length chunk.
    Done,
    /// The connection is closed mid-body, without `[DONE]`.
    DropConnection,
    /// Nothing more is sent; the server waits for the client to hang up.
    HoldOpen,
}

/// What the server answers to one request.
#[derive(Debug, Clone)]
pub enum FakeReply {
    /// A `chat.completion` whose message content is this text.
    Completion(String),
    /// Any status and body, with an optional `Retry-After` header.
    Raw {
        status: u16,
        body: String,
        retry_after: Option<String>,
    },
    /// A `text/event-stream` of these tokens.
    Stream {
        tokens: Vec<String>,
        first_token_delay: Duration,
        token_delay: Duration,
        end: StreamEnd,
    },
    /// Reads the request and never answers.
    Hang,
}

impl FakeReply {
    /// A stream of `tokens` sent at once and ended with `[DONE]`.
    pub fn stream(tokens: &[&str]) -> Self {
        FakeReply::Stream {
            tokens: tokens.iter().map(|token| token.to_string()).collect(),
            first_token_delay: Duration::ZERO,
            token_delay: Duration::ZERO,
            end: StreamEnd::Done,
        }
    }

    /// An error status with an OpenAI-style error body.
    pub fn error(status: u16, retry_after: Option<&str>) -> Self {
        FakeReply::Raw {
            status,
            body: json!({"error": {"message": "fake failure", "type": "server_error"}}).to_string(),
            retry_after: retry_after.map(str::to_string),
        }
    }
}

/// One request as the server read it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
}

type Script = dyn Fn(usize, &Value) -> FakeReply + Send + Sync;

/// A running fake server; it stops when the test's runtime does.
pub struct FakeChatServer {
    /// `http://127.0.0.1:PORT/v1`.
    pub base_url: String,
    requests: Arc<Mutex<Vec<SeenRequest>>>,
    first_tokens: FirstTokenLog,
    hangups: Arc<AtomicUsize>,
    hangup_seen: Arc<Notify>,
}

impl FakeChatServer {
    /// Serves on a free port; `script(request_index, body)` decides each reply.
    pub async fn start(
        script: impl Fn(usize, &Value) -> FakeReply + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}/v1", listener.local_addr()?);
        let server = Self {
            base_url,
            requests: Arc::new(Mutex::new(Vec::new())),
            first_tokens: FirstTokenLog::default(),
            hangups: Arc::new(AtomicUsize::new(0)),
            hangup_seen: Arc::new(Notify::new()),
        };
        let script: Arc<Script> = Arc::new(script);
        let requests = Arc::clone(&server.requests);
        let first_tokens = server.first_tokens.clone();
        let hangups = Arc::clone(&server.hangups);
        let hangup_seen = Arc::clone(&server.hangup_seen);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let connection = Connection {
                    script: Arc::clone(&script),
                    requests: Arc::clone(&requests),
                    first_tokens: first_tokens.clone(),
                    hangups: Arc::clone(&hangups),
                    hangup_seen: Arc::clone(&hangup_seen),
                };
                tokio::spawn(connection.serve(socket));
            }
        });
        Ok(server)
    }

    /// When each stream's first token chunk was written (flushed to the socket), in order.
    pub fn first_token_instants(&self) -> Vec<Instant> {
        self.first_tokens
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn request_count(&self) -> usize {
        self.requests().len()
    }

    /// Clients that closed their connection before the reply was complete.
    pub fn hangups(&self) -> usize {
        self.hangups.load(Ordering::SeqCst)
    }

    /// Waits up to `patience` for at least `count` hang-ups; returns whether they came.
    pub async fn wait_for_hangups(&self, count: usize, patience: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let notified = self.hangup_seen.notified();
            if self.hangups() >= count {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.hangups() >= count;
            }
        }
    }
}

/// A base URL where nothing listens (a port bound and released at once).
pub fn unreachable_base_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap_or(9);
    format!("http://127.0.0.1:{port}/v1")
}

/// When each stream's first token chunk was written, in order.
#[derive(Clone, Default)]
struct FirstTokenLog(Arc<Mutex<Vec<Instant>>>);

impl FirstTokenLog {
    fn record(&self) {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(Instant::now());
    }
}

struct Connection {
    script: Arc<Script>,
    requests: Arc<Mutex<Vec<SeenRequest>>>,
    first_tokens: FirstTokenLog,
    hangups: Arc<AtomicUsize>,
    hangup_seen: Arc<Notify>,
}

impl Connection {
    async fn serve(self, socket: TcpStream) {
        let mut reader = BufReader::new(socket);
        let Some(seen) = read_request(&mut reader).await else {
            return;
        };
        let index = {
            let mut requests = self
                .requests
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            requests.push(seen.clone());
            requests.len() - 1
        };
        let reply = (self.script)(index, &seen.body);
        let mut socket = reader.into_inner();
        let completed = answer(&mut socket, reply, &self.first_tokens).await;
        if !completed {
            self.hangups.fetch_add(1, Ordering::SeqCst);
            self.hangup_seen.notify_waiters();
        }
    }
}

async fn read_request(reader: &mut BufReader<TcpStream>) -> Option<SeenRequest> {
    let mut request_line = String::new();
    reader.read_line(&mut request_line).await.ok()?;
    let path = request_line.split_whitespace().nth(1)?.to_string();
    let mut content_length = 0usize;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => content_length = value.trim().parse().ok()?,
            "authorization" => authorization = Some(value.trim().to_string()),
            _ => {}
        }
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body).await.ok()?;
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Some(SeenRequest {
        path,
        authorization,
        body,
    })
}

/// Writes the reply; returns false when the client hung up before it was complete.
async fn answer(socket: &mut TcpStream, reply: FakeReply, first_tokens: &FirstTokenLog) -> bool {
    match reply {
        FakeReply::Completion(text) => {
            let body = json!({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": "fake",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
            })
            .to_string();
            write_whole(socket, 200, &body, None).await
        }
        FakeReply::Raw {
            status,
            body,
            retry_after,
        } => write_whole(socket, status, &body, retry_after.as_deref()).await,
        FakeReply::Hang => {
            wait_for_close(socket).await;
            false
        }
        FakeReply::Stream {
            tokens,
            first_token_delay,
            token_delay,
            end,
        } => {
            write_stream(
                socket,
                &tokens,
                first_token_delay,
                token_delay,
                end,
                first_tokens,
            )
            .await
        }
    }
}

async fn write_whole(
    socket: &mut TcpStream,
    status: u16,
    body: &str,
    retry_after: Option<&str>,
) -> bool {
    let retry_after = retry_after
        .map(|value| format!("Retry-After: {value}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {status} Fake\r\nContent-Type: application/json\r\n{retry_after}\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.is_ok()
        && socket.write_all(body.as_bytes()).await.is_ok()
}

fn chunk_event(delta: Value, finish_reason: Value) -> String {
    let chunk = json!({
        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": "fake",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    });
    format!("data: {chunk}\n\n")
}

async fn write_chunk(socket: &mut TcpStream, data: &str) -> bool {
    let framed = format!("{:x}\r\n{data}\r\n", data.len());
    socket.write_all(framed.as_bytes()).await.is_ok() && socket.flush().await.is_ok()
}

async fn write_stream(
    socket: &mut TcpStream,
    tokens: &[String],
    first_token_delay: Duration,
    token_delay: Duration,
    end: StreamEnd,
    first_tokens: &FirstTokenLog,
) -> bool {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
                Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if socket.write_all(head.as_bytes()).await.is_err() {
        return false;
    }
    let role = chunk_event(json!({"role": "assistant", "content": ""}), Value::Null);
    if !write_chunk(socket, &role).await {
        return false;
    }
    for (position, token) in tokens.iter().enumerate() {
        let delay = if position == 0 {
            first_token_delay
        } else {
            token_delay
        };
        if !delay.is_zero() && !sleep_unless_closed(socket, delay).await {
            return false;
        }
        if !write_chunk(socket, &chunk_event(json!({"content": token}), Value::Null)).await {
            return false;
        }
        if position == 0 {
            first_tokens.record();
        }
    }
    match end {
        StreamEnd::Done => {
            let stop = chunk_event(json!({}), json!("stop"));
            write_chunk(socket, &stop).await
                && write_chunk(socket, "data: [DONE]\n\n").await
                && socket.write_all(b"0\r\n\r\n").await.is_ok()
        }
        StreamEnd::DropConnection => {
            let _ = socket.shutdown().await;
            true
        }
        StreamEnd::HoldOpen => {
            wait_for_close(socket).await;
            false
        }
    }
}

/// Sleeps `delay`, or less when the client closes first (then returns false).
async fn sleep_unless_closed(socket: &mut TcpStream, delay: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = wait_for_close(socket) => false,
    }
}

/// Returns once the client closes its side of the connection.
async fn wait_for_close(socket: &mut TcpStream) {
    let mut buffer = [0u8; 1024];
    loop {
        match socket.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
