//! Elastic shards, across processes with a real etcd: a cluster created with 2 retriever
//! shards (16 partitions) grows to 3, then 5, and shrinks to 2 with `quarry cluster scale`,
//! while searches and writes (updates and deletes) run on two gateways. A gateway (the
//! coordinator among them) and a target replica are killed during the scales, the writing
//! gateway is paused (SIGSTOP) across a shrink's cut-overs, and a scale is aborted.
//!
//! Checked: no search fails, none is partial, none repeats an id; every acknowledged write is
//! there at its final version and every acknowledged delete is gone; with writes paused,
//! the top 10 of keyword, semantic and hybrid searches and the document count equal a
//! one-shard reference (`quarry up --shards 1`) fed the same documents; a second scale to
//! another count is refused while one runs, and repeating a finished one does nothing.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quarry_proto::v1::quarry_client::QuarryClient;
use quarry_proto::v1::{
    ClusterStatusRequest, DeleteRequest, Document, GetCollectionRequest, GetDocumentRequest,
    SearchMode, SearchRequest,
};
use support::etcd::Etcd;
use support::{document, QuarryUp, Served};
use tonic::transport::Channel;

const CLUSTER: &str = "elastic";
/// Ids the live writer updates and deletes.
const LIVE_IDS: u64 = 60;

fn member_args(etcd: &Etcd) -> Vec<String> {
    vec![
        "--etcd".into(),
        etcd.endpoint.clone(),
        "--cluster".into(),
        CLUSTER.into(),
    ]
}

/// The flags of retriever `shard`/`replica`, its data under `data`.
fn retriever_args(etcd: &Etcd, data: &std::path::Path, shard: u32, replica: u32) -> Vec<String> {
    let mut args = member_args(etcd);
    args.extend([
        "--data-dir".to_string(),
        data.join(format!("r{shard}-{replica}"))
            .display()
            .to_string(),
        "--shard".to_string(),
        shard.to_string(),
        "--replica".to_string(),
        replica.to_string(),
    ]);
    args
}

/// Creates `stable` and ingests the fixed corpus into it.
async fn load_stable(client: &mut QuarryClient<Channel>) {
    client
        .create_collection(quarry_proto::v1::CreateCollectionRequest {
            name: "stable".to_string(),
            description: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(ingest(client, stable_corpus()).await, 240);
}

async fn client(address: &str) -> QuarryClient<Channel> {
    let channel = Channel::from_shared(address.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    QuarryClient::new(channel)
}

/// A fixed corpus: sentences from a small vocabulary, so queries have many matches.
fn stable_corpus() -> Vec<Document> {
    let words = [
        "comet", "planet", "gene", "protein", "river", "bread", "engine", "orbit", "cell", "yeast",
        "storm", "glacier", "copper", "signal", "vaccine", "forest",
    ];
    (0..240u64)
        .map(|number| {
            let pick = |offset: u64| words[((number * 7 + offset * 3 + number / 5) % 16) as usize];
            let text = format!(
                "{} {} and the {} near the {} {} record {number}",
                pick(0),
                pick(1),
                pick(2),
                pick(3),
                pick(number % 4)
            );
            let mut document = document(&format!("s{number}"), &format!("note {number}"), &text);
            document.collection = "stable".to_string();
            document
        })
        .collect()
}

async fn ingest(client: &mut QuarryClient<Channel>, documents: Vec<Document>) -> u64 {
    let summary = client
        .ingest(tokio_stream::iter(documents))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.rejected, 0, "{:?}", summary.errors);
    summary.accepted
}

fn search(query: &str, mode: SearchMode, collection: &str) -> SearchRequest {
    SearchRequest {
        query: query.to_string(),
        k: 10,
        mode: mode as i32,
        collection: collection.to_string(),
        ..SearchRequest::default()
    }
}

const QUERIES: [&str; 5] = [
    "comet orbit",
    "gene protein cell",
    "river glacier forest",
    "bread yeast",
    "copper signal engine vaccine",
];

/// Top-10 ids of every query in every mode, on `stable`.
async fn rankings(client: &mut QuarryClient<Channel>) -> Vec<Vec<String>> {
    let mut all = Vec::new();
    for query in QUERIES {
        for mode in [
            SearchMode::Keyword,
            SearchMode::Semantic,
            SearchMode::Hybrid,
        ] {
            let response = client
                .search(search(query, mode, "stable"))
                .await
                .unwrap()
                .into_inner();
            assert!(!response.partial, "{query} {mode:?} partial");
            all.push(response.hits.into_iter().map(|hit| hit.doc_id).collect());
        }
    }
    all
}

async fn count(client: &mut QuarryClient<Channel>, collection: &str) -> (u64, u64) {
    let info = client
        .get_collection(GetCollectionRequest {
            name: collection.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    (info.num_docs, info.num_vectors)
}

/// What the load saw: failures, and the final state of every id it acknowledged.
#[derive(Default)]
struct Load {
    searches: AtomicU64,
    failed_searches: Mutex<Vec<String>>,
    writes: AtomicU64,
    failed_writes: Mutex<Vec<String>>,
    /// id → the text acknowledged last (None: deleted).
    expected: Mutex<BTreeMap<String, Option<String>>>,
    /// Ids whose last write failed: their state is not known.
    uncertain: Mutex<HashSet<String>>,
    paused: AtomicBool,
    stop: AtomicBool,
}

async fn search_load(load: Arc<Load>, address: String) {
    let mut client = client(&address).await;
    let mut turn = 0usize;
    while !load.stop.load(Ordering::Relaxed) {
        let query = QUERIES[turn % QUERIES.len()];
        let mode = [
            SearchMode::Keyword,
            SearchMode::Semantic,
            SearchMode::Hybrid,
        ][turn % 3];
        let collection = if turn.is_multiple_of(2) {
            "stable"
        } else {
            "default"
        };
        turn += 1;
        match client.search(search(query, mode, collection)).await {
            Ok(response) => {
                let response = response.into_inner();
                let ids: HashSet<&str> = response
                    .hits
                    .iter()
                    .map(|hit| hit.doc_id.as_str())
                    .collect();
                if response.partial {
                    load.failed_searches
                        .lock()
                        .unwrap()
                        .push(format!("partial: {query}"));
                }
                if ids.len() != response.hits.len() {
                    load.failed_searches
                        .lock()
                        .unwrap()
                        .push(format!("duplicate id: {query}"));
                }
            }
            Err(status) => load
                .failed_searches
                .lock()
                .unwrap()
                .push(format!("{query}: {status:?}")),
        }
        load.searches.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Updates and deletes ids `live-*` on the cluster and the reference alike.
async fn write_load(load: Arc<Load>, address: String, reference: String) {
    let mut client = client(&address).await;
    let mut reference = support::dial(&reference, None)
        .await
        .map(QuarryClient::new)
        .unwrap();
    let mut step = 0u64;
    while !load.stop.load(Ordering::Relaxed) {
        if load.paused.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let id = format!("live-{}", (step * 13) % LIVE_IDS);
        let deleting = step % 5 == 4;
        let text = format!("live document {id} at step {step} about comet and gene");
        let outcome = if deleting {
            let request = DeleteRequest {
                ids: vec![id.clone()],
                ..DeleteRequest::default()
            };
            reference.delete(request.clone()).await.unwrap();
            client.delete(request).await.map(|_| None)
        } else {
            let written = document(&id, "live", &text);
            reference
                .ingest(tokio_stream::iter(vec![written.clone()]))
                .await
                .unwrap();
            match client.ingest(tokio_stream::iter(vec![written])).await {
                Ok(summary) if summary.get_ref().rejected == 0 => Ok(Some(text.clone())),
                Ok(summary) => Err(tonic::Status::unavailable(format!(
                    "{:?}",
                    summary.into_inner().errors
                ))),
                Err(status) => Err(status),
            }
        };
        match outcome {
            Ok(state) => {
                load.expected.lock().unwrap().insert(id.clone(), state);
                load.uncertain.lock().unwrap().remove(&id);
            }
            Err(status) => {
                load.failed_writes
                    .lock()
                    .unwrap()
                    .push(format!("{id}: {status:?}"));
                load.uncertain.lock().unwrap().insert(id);
            }
        }
        load.writes.fetch_add(1, Ordering::Relaxed);
        step += 1;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

fn scale(etcd: &Etcd, shards: u32, wait: bool) -> std::process::Output {
    let mut args = vec![
        "cluster".to_string(),
        "scale".to_string(),
        "--etcd".to_string(),
        etcd.endpoint.clone(),
        "--cluster".to_string(),
        CLUSTER.to_string(),
        "--shards".to_string(),
        shards.to_string(),
    ];
    if wait {
        args.push("--wait".to_string());
    }
    std::process::Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(&args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run quarry cluster scale")
}

/// Waits until the placement is settled at `shards` serving shards.
async fn wait_settled(client: &mut QuarryClient<Channel>, shards: u32, patience: Duration) {
    let started = Instant::now();
    loop {
        if let Ok(status) = client.cluster_status(ClusterStatusRequest {}).await {
            let placement = status.into_inner().placement.unwrap_or_default();
            let serving: HashSet<u32> = placement.owners.iter().copied().collect();
            if placement.moves.is_empty() && serving.len() as u32 == shards {
                return;
            }
        }
        assert!(
            started.elapsed() < patience,
            "not settled at {shards} shards after {patience:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shards_grow_and_shrink_under_load_without_failed_queries_lost_writes_or_moved_rankings() {
    let etcd = Etcd::with_cluster(CLUSTER, 2);
    let data = tempfile::tempdir().unwrap();
    let mut retrievers = Vec::new();
    for shard in 0..5 {
        let args = retriever_args(&etcd, data.path(), shard, 0);
        retrievers.push(Served::start("retriever", &args).await);
    }
    let _analyzer = Served::start("analyzer", &member_args(&etcd)).await;
    let mut gateways = Vec::new();
    for _ in 0..2 {
        gateways.push(Served::start("gateway", &member_args(&etcd)).await);
    }
    let reference_dir = tempfile::tempdir().unwrap();
    let reference = QuarryUp::start(reference_dir.path(), 1).await;

    let mut first = client(&gateways[0].address).await;
    let mut reference_client = reference.client().await;
    load_stable(&mut first).await;
    load_stable(&mut reference_client).await;
    let expected_rankings = rankings(&mut reference_client).await;
    assert_eq!(
        rankings(&mut first).await,
        expected_rankings,
        "2 shards vs 1"
    );

    let load = Arc::new(Load::default());
    let loads = vec![
        tokio::spawn(search_load(Arc::clone(&load), gateways[0].address.clone())),
        tokio::spawn(write_load(
            Arc::clone(&load),
            gateways[1].address.clone(),
            reference.address.clone(),
        )),
    ];
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 2 → 3; a gateway (which may be the coordinator) is killed during it and comes back.
    let started = scale(&etcd, 3, false);
    assert!(started.status.success(), "{started:?}");
    let refused = scale(&etcd, 4, false);
    assert!(
        !refused.status.success(),
        "a second scale to another count is refused"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("under way"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    gateways[1].kill();
    gateways[1].restart().await;
    wait_settled(&mut first, 3, Duration::from_secs(120)).await;
    let again = scale(&etcd, 3, true);
    assert!(again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("already"),
        "repeating a finished scale does nothing: {}",
        String::from_utf8_lossy(&again.stdout)
    );

    // 3 → 5; a target replica is killed during the copy.
    let started = scale(&etcd, 5, false);
    assert!(started.status.success(), "{started:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    retrievers[4].kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    retrievers[4].restart().await;
    wait_settled(&mut first, 5, Duration::from_secs(180)).await;

    // Rankings with writes paused: the same as one shard's.
    load.paused.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rankings(&mut first).await,
        expected_rankings,
        "5 shards vs 1"
    );
    load.paused.store(false, Ordering::Relaxed);

    // 5 → 2: the highest shards drain, while the writing gateway is paused (SIGSTOP) across
    // the cut-overs and drops; if it was the coordinator, the other takes over.
    let started = scale(&etcd, 2, false);
    assert!(started.status.success(), "{started:?}");
    gateways[1].signal("STOP");
    wait_settled(&mut first, 2, Duration::from_secs(180)).await;
    gateways[1].signal("CONT");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // An aborted scale settles where its moves stood: cut over or rolled back, none half.
    let started = scale(&etcd, 4, false);
    assert!(started.status.success(), "{started:?}");
    let aborted = std::process::Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args([
            "cluster",
            "scale",
            "--etcd",
            &etcd.endpoint,
            "--cluster",
            CLUSTER,
        ])
        .args(["--abort", "--wait"])
        .output()
        .unwrap();
    assert!(aborted.status.success(), "{aborted:?}");
    let status = first
        .cluster_status(ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .placement
        .unwrap();
    let serving: HashSet<u32> = status.owners.iter().copied().collect();
    assert!(status.moves.is_empty() && status.target_shards == serving.len() as u32);
    let back = scale(&etcd, 2, true);
    assert!(back.status.success(), "{back:?}");
    wait_settled(&mut first, 2, Duration::from_secs(180)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    load.stop.store(true, Ordering::Relaxed);
    for task in loads {
        task.await.unwrap();
    }
    let searches = load.searches.load(Ordering::Relaxed);
    let writes = load.writes.load(Ordering::Relaxed);
    eprintln!("{searches} searches and {writes} writes during the scales");
    assert!(
        searches > 100 && writes > 50,
        "{searches} searches, {writes} writes"
    );
    assert!(
        load.failed_searches.lock().unwrap().is_empty(),
        "{:?}",
        load.failed_searches.lock().unwrap()
    );
    // Writes answered by the gateway that was killed may fail; every other one succeeds.
    let failed_writes = load.failed_writes.lock().unwrap().clone();
    assert!(failed_writes.len() <= 3, "{failed_writes:?}");

    // Every acknowledged write at its final version, every acknowledged delete gone.
    let expected = load.expected.lock().unwrap().clone();
    let uncertain = load.uncertain.lock().unwrap().clone();
    let mut live = 0;
    for (id, state) in &expected {
        if uncertain.contains(id) {
            continue;
        }
        let found = first
            .get_document(GetDocumentRequest {
                id: id.clone(),
                ..GetDocumentRequest::default()
            })
            .await;
        match state {
            Some(text) => {
                live += 1;
                assert_eq!(&found.unwrap().into_inner().text, text, "{id}");
            }
            None => assert_eq!(found.unwrap_err().code(), tonic::Code::NotFound, "{id}"),
        }
    }
    if uncertain.is_empty() {
        let (docs, vectors) = count(&mut first, "default").await;
        assert_eq!(
            (docs, vectors),
            (live, live),
            "documents and vectors of default"
        );
    }
    // Only shards 0 and 1 hold anything; rankings and counts equal the reference's.
    assert_eq!(
        count(&mut first, "stable").await,
        count(&mut reference_client, "stable").await
    );
    assert_eq!(
        rankings(&mut first).await,
        expected_rankings,
        "2 shards again vs 1"
    );
    for shard in 2..5 {
        let directory = data.path().join(format!("r{shard}-0"));
        let held: Vec<_> = walk_partitions(&directory);
        assert!(held.is_empty(), "shard {shard} still holds {held:?}");
    }
}

/// Partition directories under a replica's data directory.
fn walk_partitions(directory: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![directory.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.file_name().is_some_and(|name| name == "partitions") {
                found.extend(
                    std::fs::read_dir(&path)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|e| e.path()),
                );
            } else if path.is_dir() {
                pending.push(path);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scale_finishes_when_etcd_restarts_during_it() {
    let mut etcd = Etcd::with_cluster(CLUSTER, 2);
    let data = tempfile::tempdir().unwrap();
    let mut retrievers = Vec::new();
    for shard in 0..3 {
        let args = retriever_args(&etcd, data.path(), shard, 0);
        retrievers.push(Served::start("retriever", &args).await);
    }
    let _analyzer = Served::start("analyzer", &member_args(&etcd)).await;
    let gateway = Served::start("gateway", &member_args(&etcd)).await;
    let mut first = client(&gateway.address).await;
    load_stable(&mut first).await;
    let before = rankings(&mut first).await;
    let started = scale(&etcd, 3, false);
    assert!(started.status.success(), "{started:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    etcd.restart_after(Duration::from_millis(500));
    wait_settled(&mut first, 3, Duration::from_secs(60)).await;
    assert_eq!(rankings(&mut first).await, before);
    assert_eq!(count(&mut first, "stable").await, (240, 240));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scale_finishes_when_a_source_replica_is_killed_during_the_copy() {
    let etcd = Etcd::with_cluster(CLUSTER, 2);
    let data = tempfile::tempdir().unwrap();
    let retriever = |shard, replica| retriever_args(&etcd, data.path(), shard, replica);
    // Shards 0 and 1 with two replicas each (the sources), shard 2 with one (the target).
    let mut sources = Vec::new();
    for shard in 0..2 {
        for replica in 0..2 {
            sources.push(Served::start("retriever", &retriever(shard, replica)).await);
        }
    }
    let _target = Served::start("retriever", &retriever(2, 0)).await;
    let _analyzer = Served::start("analyzer", &member_args(&etcd)).await;
    let gateway = Served::start("gateway", &member_args(&etcd)).await;
    let mut first = client(&gateway.address).await;
    load_stable(&mut first).await;
    let before = rankings(&mut first).await;
    let started = scale(&etcd, 3, false);
    assert!(started.status.success(), "{started:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    // kill -9 of one replica of each source shard: the copy goes on from the other.
    sources[0].kill();
    sources[2].kill();
    wait_settled(&mut first, 3, Duration::from_secs(60)).await;
    assert_eq!(rankings(&mut first).await, before);
    assert_eq!(count(&mut first, "stable").await, (240, 240));
    // Back, they drop what moved away and catch up on the rest from their peers.
    sources[0].restart().await;
    sources[2].restart().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rankings(&mut first).await, before);
    assert_eq!(count(&mut first, "stable").await, (240, 240));
}
