//! The same corpus on 1 shard and on 4 shards ranks the same: identical top-10 ids in the
//! same order and scores equal to 1e-4, in keyword, semantic and hybrid modes — because
//! BM25 is scored with cluster-wide statistics, small shards search vectors exactly, and
//! fusion runs on the merged global lists.

mod support;

use quarry_proto::v1::quarry_client::QuarryClient;
use quarry_proto::v1::{Document, Fusion, SearchMode, SearchRequest};
use serde_json::Value;
use support::QuarryUp;
use tonic::transport::Channel;

const QUERIES: [&str; 8] = [
    "How are BM25 scores made independent of the number of shards?",
    "what happens when a shard does not answer",
    "write-ahead log fsync durability",
    "calling the API from Python with grpcio",
    "jump consistent hash of the document id",
    "which evaluator judges the answer",
    "Kubernetes Helm chart retriever replicas",
    "configuration layers environment variables flags",
];

fn demo_corpus() -> Vec<Document> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../demo/corpus.jsonl");
    let content = std::fs::read_to_string(path).expect("demo/corpus.jsonl");
    content
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap();
            Document {
                id: value["_id"].as_str().unwrap().to_string(),
                title: value["title"].as_str().unwrap().to_string(),
                text: value["text"].as_str().unwrap().to_string(),
                metadata: Default::default(),
                ..Document::default()
            }
        })
        .collect()
}

async fn top_tens(
    client: &mut QuarryClient<Channel>,
    mode: SearchMode,
    fusion: Fusion,
) -> Vec<Vec<(String, f64)>> {
    let mut tops = Vec::new();
    for query in QUERIES {
        let response = client
            .search(SearchRequest {
                query: query.to_string(),
                k: 10,
                mode: mode as i32,
                fusion: fusion as i32,
                ..SearchRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!response.partial);
        tops.push(
            response
                .hits
                .into_iter()
                .map(|hit| (hit.doc_id, hit.score))
                .collect(),
        );
    }
    tops
}

#[tokio::test(flavor = "multi_thread")]
async fn one_shard_and_four_shards_rank_the_same_in_every_mode() {
    let corpus = demo_corpus();
    let settings = [
        (SearchMode::Keyword, Fusion::Unspecified),
        (SearchMode::Semantic, Fusion::Unspecified),
        (SearchMode::Hybrid, Fusion::Rrf),
        (SearchMode::Hybrid, Fusion::Weighted),
    ];
    let mut rankings = Vec::new();
    for shards in [1, 4] {
        let data_dir = tempfile::tempdir().unwrap();
        let quarry = QuarryUp::start(data_dir.path(), shards).await;
        let mut client = quarry.client().await;
        let summary = client
            .ingest(tokio_stream::iter(corpus.clone()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(summary.accepted, corpus.len() as u64);
        let mut per_setting = Vec::new();
        for (mode, fusion) in settings {
            per_setting.push(top_tens(&mut client, mode, fusion).await);
        }
        rankings.push(per_setting);
    }
    let (one, four) = (&rankings[0], &rankings[1]);
    for (setting_index, (mode, fusion)) in settings.iter().enumerate() {
        for (query_index, query) in QUERIES.iter().enumerate() {
            let left = &one[setting_index][query_index];
            let right = &four[setting_index][query_index];
            assert!(!left.is_empty(), "{mode:?} {query}: no hits");
            let left_ids: Vec<&str> = left.iter().map(|(id, _)| id.as_str()).collect();
            let right_ids: Vec<&str> = right.iter().map(|(id, _)| id.as_str()).collect();
            assert_eq!(left_ids, right_ids, "{mode:?}/{fusion:?}: {query}");
            for ((_, left_score), (_, right_score)) in left.iter().zip(right) {
                assert!(
                    (left_score - right_score).abs() < 1e-4,
                    "{mode:?}/{fusion:?}: {query}: {left_score} vs {right_score}"
                );
            }
        }
    }
}
