//! The shard client and the query path over fake shards, in virtual time (tokio's paused
//! clock): hedging, retry, partial results, deadline shares, replica probing, statistics
//! reuse and fetching. Each test fails when the behaviour it names is broken.

use std::collections::HashMap;
use std::sync::Mutex;

use quarry_kit::discovery::Role;
use quarry_proto::v1::{Candidate, Document, FetchResponse, TermStats};
use tonic::Code;

use super::*;
use crate::deadline::Budget;
use crate::fan_out::{
    fetch_stored, search_shards, FanOutRequest, ShardedCandidate, StatisticsCache, StatisticsSource,
};

/// What a fake replica does with the n-th call the fake shards receive overall.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    Answer(Duration),
    Fail(Code),
    Hang,
}

/// Decides what the n-th call (to this replica, of this rpc) does.
type Rule = Box<dyn FnMut(usize, &Member, Rpc) -> Behaviour + Send>;

/// Shards of replicas named `s{shard}r{replica}`; every call is logged; behaviour is chosen
/// per call by a rule, so tests need not know which replica the balancer picks.
struct FakeShards {
    shard_count: u32,
    replicas_per_shard: u32,
    rule: Mutex<Rule>,
    log: Mutex<Vec<(String, Rpc)>>,
    /// Each shard's statistics (one term, "cell"), as its CollectStats would answer.
    statistics: Mutex<Vec<CorpusStats>>,
    /// Most documents one fetch reply carries.
    fetch_batch: usize,
}

impl FakeShards {
    fn new(shard_count: u32, replicas_per_shard: u32) -> Arc<Self> {
        Arc::new(Self {
            shard_count,
            replicas_per_shard,
            rule: Mutex::new(Box::new(|_, _, _| {
                Behaviour::Answer(Duration::from_millis(1))
            })),
            log: Mutex::new(Vec::new()),
            statistics: Mutex::new(
                (0..shard_count)
                    .map(|shard| statistics(10 + u64::from(shard)))
                    .collect(),
            ),
            fetch_batch: usize::MAX,
        })
    }

    fn with_rule(
        self: Arc<Self>,
        rule: impl FnMut(usize, &Member, Rpc) -> Behaviour + Send + 'static,
    ) -> Arc<Self> {
        *self.rule.lock().unwrap() = Box::new(rule);
        self
    }

    fn log(&self) -> Vec<(String, Rpc)> {
        self.log.lock().unwrap().clone()
    }

    fn calls_of(&self, rpc: Rpc) -> usize {
        self.log()
            .iter()
            .filter(|(_, logged)| *logged == rpc)
            .count()
    }
}

fn statistics(num_docs: u64) -> CorpusStats {
    CorpusStats {
        num_docs,
        total_num_tokens: num_docs * 10,
        terms: vec![TermStats {
            term: "cell".to_string(),
            doc_freq: 2,
        }],
    }
}

fn member(shard: u32, replica: u32) -> Member {
    Member {
        node_id: format!("s{shard}r{replica}"),
        role: Role::Retriever,
        address: format!("s{shard}r{replica}"),
        shard,
        replica,
        version: "test".to_string(),
        ready: true,
        recovering: false,
        internal_tls: Default::default(),
    }
}

#[tonic::async_trait]
impl Shards for FakeShards {
    fn shard_count(&self) -> u32 {
        self.shard_count
    }

    fn replicas(&self, shard: u32) -> Vec<Member> {
        (0..self.replicas_per_shard)
            .map(|replica| member(shard, replica))
            .collect()
    }

    async fn call(
        &self,
        replica: &Member,
        call: ShardCall,
        _timeout: Duration,
    ) -> Result<ShardReply, Status> {
        let behaviour = {
            let mut log = self.log.lock().unwrap();
            let index = log.len();
            log.push((replica.address.clone(), call.rpc()));
            (self.rule.lock().unwrap())(index, replica, call.rpc())
        };
        match behaviour {
            Behaviour::Answer(delay) => tokio::time::sleep(delay).await,
            Behaviour::Fail(code) => return Err(Status::new(code, "injected")),
            Behaviour::Hang => std::future::pending::<()>().await,
        }
        let local = self.statistics.lock().unwrap()[replica.shard as usize].clone();
        Ok(match call {
            ShardCall::CollectStats(_) => ShardReply::CollectStats(local),
            ShardCall::Search(request) => {
                if request
                    .expected_local_stats
                    .as_ref()
                    .is_some_and(|expected| *expected != local)
                {
                    return Ok(ShardReply::Search(ShardSearchResponse {
                        shard: replica.shard,
                        stale: true,
                        local_stats: Some(local),
                        ..ShardSearchResponse::default()
                    }));
                }
                // The answering replica's name is the hit, so tests see who answered.
                let score = request
                    .global_stats
                    .map_or(0.0, |global| global.num_docs as f64);
                ShardReply::Search(ShardSearchResponse {
                    shard: replica.shard,
                    keyword: vec![Candidate {
                        doc_id: replica.address.clone(),
                        score,
                    }],
                    ..ShardSearchResponse::default()
                })
            }
            ShardCall::Fetch(request) => {
                let sent = request.ids.len().min(self.fetch_batch);
                ShardReply::Fetch(FetchResponse {
                    documents: request.ids[..sent]
                        .iter()
                        .map(|id| Document {
                            id: id.clone(),
                            title: format!("title of {id}"),
                            text: format!("text of {id}"),
                            ..Document::default()
                        })
                        .collect(),
                    ids_left: (request.ids.len() - sent) as u32,
                })
            }
            ShardCall::ShardInfo(_) => ShardReply::ShardInfo(ShardInfoResponse::default()),
        })
    }
}

fn client(shards: &Arc<FakeShards>) -> ShardClient {
    ShardClient::new(
        Arc::clone(shards) as Arc<dyn Shards>,
        ReplicaSelection::default(),
        true,
    )
}

fn search_call() -> ShardCall {
    ShardCall::Search(Box::new(ShardSearchRequest {
        query: "cell".to_string(),
        keyword_k: 10,
        ..ShardSearchRequest::default()
    }))
}

fn answered_by(answer: &ShardAnswer) -> String {
    match &answer.reply {
        ShardReply::Search(response) => response.keyword[0].doc_id.clone(),
        other => panic!("not a search reply: {other:?}"),
    }
}

/// Gives (shard 0, search) a p95 of 10 ms.
fn learn_p95_of_10ms(client: &ShardClient) {
    for _ in 0..60 {
        client
            .balancer()
            .record_success(0, Rpc::Search, "elsewhere", Duration::from_millis(10));
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_slower_than_the_p95_is_hedged_and_the_first_success_wins() {
    // The first call is slow, whichever replica gets it; any later call is fast.
    let shards = FakeShards::new(1, 2).with_rule(|index, _, _| match index {
        0 => Behaviour::Answer(Duration::from_millis(500)),
        _ => Behaviour::Answer(Duration::from_millis(1)),
    });
    let client = client(&shards);
    learn_p95_of_10ms(&client);
    let started = Instant::now();
    let answer = client
        .call(0, search_call(), Duration::from_secs(5))
        .await
        .unwrap();
    let log = shards.log();
    assert_eq!(answer.hedges, 1);
    assert_eq!(log.len(), 2);
    assert_ne!(log[0].0, log[1].0, "the hedge goes to the other replica");
    assert_eq!(answered_by(&answer), log[1].0, "the hedge answered first");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(10) && took < Duration::from_millis(20),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_within_the_p95_is_not_hedged() {
    let shards =
        FakeShards::new(1, 2).with_rule(|_, _, _| Behaviour::Answer(Duration::from_millis(5)));
    let client = client(&shards);
    learn_p95_of_10ms(&client);
    let answer = client
        .call(0, search_call(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(answer.hedges, 0);
    assert_eq!(shards.log().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failure_is_retried_once_on_a_replica_not_tried_yet() {
    let shards = FakeShards::new(1, 3).with_rule(|index, _, _| match index {
        0 => Behaviour::Fail(Code::Unavailable),
        _ => Behaviour::Answer(Duration::from_millis(1)),
    });
    let answer = client(&shards)
        .call(0, search_call(), Duration::from_secs(5))
        .await
        .unwrap();
    let log = shards.log();
    assert_eq!(log.len(), 2);
    assert_ne!(log[0].0, log[1].0);
    assert_eq!(answered_by(&answer), log[1].0);

    // Every replica failing: one retry, not one per replica.
    let failing = FakeShards::new(1, 3).with_rule(|_, _, _| Behaviour::Fail(Code::Unavailable));
    let error = client(&failing)
        .call(0, search_call(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable);
    assert_eq!(failing.log().len(), 2);

    // A failure every replica would have is not retried.
    let invalid = FakeShards::new(1, 3).with_rule(|_, _, _| Behaviour::Fail(Code::InvalidArgument));
    let error = client(&invalid)
        .call(0, search_call(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(invalid.log().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_a_timeout_gets_only_what_the_first_try_left() {
    let shards = FakeShards::new(1, 2).with_rule(|_, _, _| Behaviour::Hang);
    let started = Instant::now();
    let error = client(&shards)
        .call(0, search_call(), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::DeadlineExceeded);
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_shard_with_no_answering_replica_is_reported_not_fatal() {
    let shards = FakeShards::new(3, 2).with_rule(|_, replica, _| match replica.shard {
        1 => Behaviour::Fail(Code::Unavailable),
        _ => Behaviour::Answer(Duration::from_millis(1)),
    });
    let calls = (0..3).map(|shard| (shard, search_call())).collect();
    let phase = client(&shards)
        .call_each(calls, Duration::from_secs(1))
        .await;
    assert_eq!(phase.failed, [1]);
    let answered: Vec<u32> = phase.answered.iter().map(|(shard, _)| *shard).collect();
    assert_eq!(answered, [0, 2]);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_statistics_phase_leaves_time_to_search_the_other_shards() {
    let shards = FakeShards::new(2, 1).with_rule(|_, replica, rpc| match (replica.shard, rpc) {
        (1, Rpc::CollectStats) => Behaviour::Hang,
        _ => Behaviour::Answer(Duration::from_millis(1)),
    });
    let client = client(&shards);
    let request = FanOutRequest {
        query: "cell".to_string(),
        keyword_k: 10,
        ..FanOutRequest::default()
    };
    let started = Instant::now();
    let result = search_shards(
        &client,
        &StatisticsCache::default(),
        &request,
        &placement_of(&client),
        Budget::new(Duration::from_secs(1)),
    )
    .await;
    assert_eq!(result.shards_failed, [1]);
    assert_eq!(result.keyword.len(), 1, "shard 0 was searched");
    assert_eq!(result.keyword[0].shard, 0);
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_replica_that_fails_fast_loses_its_traffic_and_is_probed_again_later() {
    let healthy_again = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&healthy_again);
    let shards = FakeShards::new(1, 2).with_rule(move |_, replica, _| {
        if replica.replica == 0 && !flag.load(std::sync::atomic::Ordering::Relaxed) {
            Behaviour::Fail(Code::Unavailable)
        } else {
            Behaviour::Answer(Duration::from_millis(5))
        }
    });
    let client = ShardClient::new(
        Arc::clone(&shards) as Arc<dyn Shards>,
        ReplicaSelection::default(),
        false,
    );
    let first_tries_of_replica_0 = |from: usize| {
        let log = shards.log();
        // A call's first try is the entry after the previous call's last one; with retries
        // logged, count the calls whose first entry went to replica 0.
        log[from..]
            .iter()
            .filter(|(address, _)| address == "s0r0")
            .count()
    };
    for _ in 0..20 {
        client
            .call(0, search_call(), Duration::from_secs(1))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    assert!(
        first_tries_of_replica_0(0) <= 2,
        "a failing replica kept getting traffic: {:?}",
        shards.log()
    );
    healthy_again.store(true, std::sync::atomic::Ordering::Relaxed);
    let before = shards.log().len();
    for _ in 0..60 {
        client
            .call(0, search_call(), Duration::from_secs(1))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert!(
        first_tries_of_replica_0(before) >= 1,
        "the replica was never probed again"
    );
}

#[tokio::test(start_paused = true)]
async fn statistics_are_collected_once_then_reused_and_a_changed_shard_answers_stale() {
    let shards = FakeShards::new(2, 1);
    let client = client(&shards);
    let cache = StatisticsCache::default();
    let request = FanOutRequest {
        query: "cell".to_string(),
        keyword_k: 10,
        ..FanOutRequest::default()
    };
    let budget = || Budget::new(Duration::from_secs(5));
    let first = search_shards(&client, &cache, &request, &placement_of(&client), budget()).await;
    assert_eq!(first.statistics, StatisticsSource::Collected);
    assert_eq!(shards.calls_of(Rpc::CollectStats), 2);
    // The fake scores every hit with the summed document count: 10 + 11.
    assert_eq!(first.keyword[0].candidate.score, 21.0);

    let second = search_shards(&client, &cache, &request, &placement_of(&client), budget()).await;
    assert_eq!(second.statistics, StatisticsSource::Cached);
    assert_eq!(
        shards.calls_of(Rpc::CollectStats),
        2,
        "no second round trip"
    );
    assert_eq!(shards.calls_of(Rpc::Search), 4);

    shards.statistics.lock().unwrap()[1] = statistics(30);
    let third = search_shards(&client, &cache, &request, &placement_of(&client), budget()).await;
    assert_eq!(third.statistics, StatisticsSource::Refreshed);
    assert_eq!(shards.calls_of(Rpc::CollectStats), 2);
    assert_eq!(third.keyword.len(), 2);
    assert!(third.keyword.iter().all(|hit| hit.candidate.score == 40.0));

    let fourth = search_shards(&client, &cache, &request, &placement_of(&client), budget()).await;
    assert_eq!(fourth.statistics, StatisticsSource::Cached);
}

#[tokio::test(start_paused = true)]
async fn one_shard_needs_no_statistics() {
    let shards = FakeShards::new(1, 1);
    let request = FanOutRequest {
        query: "cell".to_string(),
        keyword_k: 10,
        ..FanOutRequest::default()
    };
    let client = client(&shards);
    let result = search_shards(
        &client,
        &StatisticsCache::default(),
        &request,
        &placement_of(&client),
        Budget::new(Duration::from_secs(5)),
    )
    .await;
    assert_eq!(result.statistics, StatisticsSource::NotNeeded);
    assert_eq!(shards.calls_of(Rpc::CollectStats), 0);
    assert_eq!(result.keyword.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn fetching_asks_each_shard_once_and_again_for_what_did_not_fit() {
    let mut fake = Arc::into_inner(FakeShards::new(2, 1)).unwrap();
    fake.fetch_batch = 2;
    let shards = Arc::new(fake);
    let hit = |shard, id: &str| ShardedCandidate {
        shard,
        candidate: crate::fan_out::Candidate {
            doc_id: id.to_string(),
            score: 1.0,
            ..Default::default()
        },
    };
    let hits = vec![hit(0, "a"), hit(1, "b"), hit(0, "c"), hit(0, "d")];
    let fetched = fetch_stored(
        &client(&shards),
        "default",
        hits,
        0,
        Budget::new(Duration::from_secs(5)),
    )
    .await;
    let ids: Vec<&str> = fetched
        .hits
        .iter()
        .map(|hit| hit.candidate.doc_id.as_str())
        .collect();
    assert_eq!(ids, ["a", "b", "c", "d"]);
    assert!(fetched
        .hits
        .iter()
        .all(|hit| hit.candidate.text == format!("text of {}", hit.candidate.doc_id)));
    // Shard 0: a, c (then d, which did not fit); shard 1: b.
    assert_eq!(shards.calls_of(Rpc::Fetch), 3);
    assert!(fetched.shards_failed.is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_balancer_forgets_replicas_unused_for_long() {
    let balancer = ReplicaBalancer::new(ReplicaSelection::default());
    drop(balancer.begin("gone"));
    assert_eq!(balancer.known_replicas(), 1);
    tokio::time::advance(Duration::from_secs(601)).await;
    balancer.forget_unused();
    assert_eq!(balancer.known_replicas(), 0);
}

#[test]
fn shard_calls_name_their_rpc() {
    let names: HashMap<&str, Rpc> = [Rpc::CollectStats, Rpc::Search, Rpc::Fetch, Rpc::ShardInfo]
        .into_iter()
        .map(|rpc| (rpc.as_str(), rpc))
        .collect();
    assert_eq!(names.len(), 4);
    assert_eq!(search_call().rpc(), Rpc::Search);
}

/// Every partition at its block's shard, for a client's shard count.
fn placement_of(client: &ShardClient) -> quarry_kit::placement::Placement {
    let partitioning =
        quarry_kit::placement::Partitioning::new(client.shard_count(), None).unwrap();
    quarry_kit::placement::Placement::initial(partitioning)
}
