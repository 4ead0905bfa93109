//! `quarry bench first-token`: how long the first answer token takes from a model server to
//! a gRPC client. `quarry up` runs in-process with the `openai` generator pointed at a local
//! server that speaks chat-completions exactly (the same fake server the tests use); for
//! each `AskStream`, the time the client receives its first token minus the time the server
//! flushed its first SSE token chunk (one process, one clock).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use quarry_kit::config::{EncoderKind, QuarryConfig};
use quarry_kit::openai::fake_server::{FakeChatServer, FakeReply};
use quarry_proto::v1::quarry_client::QuarryClient;
use quarry_proto::v1::{ask_chunk, AskRequest, Document};
use serde_json::{json, Value};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::metrics::percentile;
use crate::up::LocalCluster;

const WARM_UP_ASKS: usize = 3;

pub async fn run_first_token(asks: usize, base: QuarryConfig) -> anyhow::Result<Value> {
    let server = FakeChatServer::start(|_, _| {
        FakeReply::stream(&["Penicillin", " was found", " by Fleming", " [1]."])
    })
    .await
    .context("starting the local chat-completions server")?;
    let data_dir = tempfile::tempdir()?;
    let mut config = base;
    config.data_dir = data_dir.path().to_path_buf();
    config.listen = "127.0.0.1:0".to_string();
    config.shards = 1;
    config.analyzer.encoder = EncoderKind::None;
    config.generator.backend = "openai".to_string();
    config.generator.openai.base_urls = vec![server.base_url.clone()];
    let cluster = LocalCluster::start(&config, CancellationToken::new()).await?;
    let channel = Channel::from_shared(cluster.gateway_address.clone())?
        .connect()
        .await?;
    let mut client = QuarryClient::new(channel);
    let document = Document {
        id: "penicillin".to_string(),
        title: "Penicillin".to_string(),
        text: "Penicillin was discovered by Alexander Fleming in 1928.".to_string(),
        ..Document::default()
    };
    client.ingest(tokio_stream::iter(vec![document])).await?;

    let mut client_first_tokens = Vec::new();
    for _ in 0..WARM_UP_ASKS + asks {
        client_first_tokens.push(first_token_instant(&mut client).await?);
    }
    let server_first_tokens = server.first_token_instants();
    if server_first_tokens.len() != client_first_tokens.len() {
        bail!(
            "{} streams served, {} asked",
            server_first_tokens.len(),
            client_first_tokens.len()
        );
    }
    let delays: Vec<f64> = client_first_tokens
        .iter()
        .zip(&server_first_tokens)
        .skip(WARM_UP_ASKS)
        .map(|(client, server)| client.saturating_duration_since(*server).as_secs_f64() * 1000.0)
        .collect();
    drop(client);
    cluster.stop().await?;
    Ok(json!({
        "asks": asks,
        "first_token_delay_ms": {
            "p50": round3(percentile(&delays, 50.0)),
            "p90": round3(percentile(&delays, 90.0)),
            "max": round3(percentile(&delays, 100.0)),
        },
        "measured": "gRPC client's first AskStream token minus the model server's first SSE token chunk",
    }))
}

async fn first_token_instant(client: &mut QuarryClient<Channel>) -> anyhow::Result<Instant> {
    let request = AskRequest {
        question: "Who discovered penicillin?".to_string(),
        k: 1,
        mode: 0,
        // First-token time of a fresh answer, not of the cache.
        skip_cache: true,
        ..AskRequest::default()
    };
    let mut stream = tokio::time::timeout(Duration::from_secs(30), client.ask_stream(request))
        .await??
        .into_inner();
    let mut first = None;
    while let Some(chunk) = stream.next().await {
        if let Some(ask_chunk::Chunk::Token(_)) = chunk?.chunk {
            first.get_or_insert_with(Instant::now);
        }
    }
    first.context("the answer stream carried no token")
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}
