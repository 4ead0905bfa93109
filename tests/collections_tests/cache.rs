//! The answer cache in Redis, shared by two gateways: the second identical Ask is served
//! from the cache (flagged, and faster), on either gateway; a write to the collection makes
//! the next Ask miss; Redis killed mid-run fails no Ask (counted on /metrics), and once it
//! is back the cache works again.

use std::time::{Duration, Instant};

use quarry_proto::v1::quarry_client::QuarryClient;
use quarry_proto::v1::{AskRequest, AskResponse};
use tonic::transport::Channel;

use crate::support::prometheus::{scrape, Exposition};
use crate::support::redis::Redis;
use crate::support::{corpus, free_port};
use crate::{wait_until, ClusterShape, TestCluster};

async fn ask(client: &mut QuarryClient<Channel>, question: &str) -> (AskResponse, Duration) {
    let started = Instant::now();
    let answer = client
        .ask(AskRequest {
            question: question.to_string(),
            k: 3,
            ..AskRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    (answer, started.elapsed())
}

fn passages_of(answer: &AskResponse) -> Vec<String> {
    answer
        .retrieval
        .as_ref()
        .map(|retrieval| {
            retrieval
                .passages
                .iter()
                .map(|p| p.doc_id.clone())
                .collect()
        })
        .unwrap_or_default()
}

async fn counter(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    Exposition::parse(&scrape(metrics).await).sum(name, labels)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_share_answers_through_redis_and_survive_it_going_away() {
    let mut redis = Redis::start();
    let metrics = [
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    ];
    let cluster = TestCluster::start(ClusterShape {
        shards: 2,
        gateways: 2,
        answers: true,
        gateway_env: vec![("QUARRY_CACHE__REDIS_URL", redis.url.clone())],
        gateway_flags: metrics
            .iter()
            .map(|address| vec!["--metrics-addr".to_string(), address.clone()])
            .collect(),
        ..ClusterShape::default()
    })
    .await;
    let (mut first, mut second) = (cluster.client(0).await, cluster.client(1).await);
    first.ingest(tokio_stream::iter(corpus())).await.unwrap();

    let question = "Who discovered penicillin?";
    let (fresh, fresh_time) = ask(&mut first, question).await;
    assert!(!fresh.cached);
    assert!(
        fresh.sources.contains(&"penicillin".to_string()),
        "{fresh:?}"
    );
    let (cached, cached_time) = ask(&mut first, "  who DISCOVERED penicillin? ").await;
    assert!(
        cached.cached,
        "the same question, normalised, is answered from the cache"
    );
    assert_eq!(cached.answer, fresh.answer);
    assert!(
        cached_time < fresh_time,
        "cached {cached_time:?}, fresh {fresh_time:?}"
    );
    let (shared, _) = ask(&mut second, question).await;
    assert!(shared.cached, "the other gateway finds the answer in Redis");
    assert_eq!(shared.answer, fresh.answer);
    let hits = counter(
        &metrics[1],
        "quarry_gateway_cache_total",
        &[("kind", "answer"), ("outcome", "hit")],
    )
    .await;
    assert!(hits >= 1.0, "hits on the second gateway: {hits}");

    // A write to the collection retires the answer.
    first
        .ingest(tokio_stream::iter(vec![crate::support::document(
            "fleming",
            "Fleming",
            "Alexander Fleming discovered penicillin in 1928 at St Mary's Hospital.",
        )]))
        .await
        .unwrap();
    let (after_write, _) = ask(&mut first, question).await;
    assert!(
        !after_write.cached,
        "an answer does not outlive a write to its collection"
    );
    assert!(passages_of(&after_write).contains(&"fleming".to_string()));
    // The other gateway learns the write through etcd's watch, a moment later.
    wait_until(
        Duration::from_secs(5),
        "the other gateway sees the write",
        || {
            let mut second = second.clone();
            async move {
                let (answer, _) = ask(&mut second, question).await;
                passages_of(&answer).contains(&"fleming".to_string())
            }
        },
    )
    .await;

    // Redis goes away: every Ask still answers, fresh, and the failures are counted.
    redis.kill();
    for round in 0..3 {
        for client in [&mut first, &mut second] {
            let (answer, _) = ask(client, &format!("What is the largest planet? ({round})")).await;
            assert!(!answer.cached);
            assert!(!answer.answer.is_empty());
        }
    }
    let errors = counter(&metrics[0], "quarry_gateway_cache_errors_total", &[]).await;
    assert!(errors >= 1.0, "cache errors counted: {errors}");

    // Back again: the cache serves once more.
    redis.restart();
    wait_until(
        Duration::from_secs(15),
        "the cache works again after Redis returns",
        || {
            let mut first = first.clone();
            async move {
                ask(&mut first, "What is Jupiter?").await;
                ask(&mut first, "What is Jupiter?").await.0.cached
            }
        },
    )
    .await;
}
