//! 200 random filters over 200 documents with random metadata, on 1 and on 3 shards, in
//! keyword, semantic and hybrid modes: each filtered top-k must equal a reference computed
//! here — the filter evaluated by this file's own reading of the metadata, over the whole
//! ranking (keyword: the unfiltered BM25 ranking of every document, whose scores a filter
//! does not change; semantic: cosine similarity of the analyzer's embeddings, brute force;
//! hybrid: reciprocal rank fusion of the two filtered lists). Ids and order must match and
//! scores agree within float rounding, so a filtered search returns k hits whenever k
//! documents match (never "top k, then filter").

use std::collections::HashMap;

use quarry_proto::v1::analyzer_client::AnalyzerClient;
use quarry_proto::v1::quarry_client::QuarryClient;
use quarry_proto::v1::{
    field_condition::Test, filter::Kind, filter_value::Value as Typed, Document, EmbedRequest,
    FieldCondition, Filter, FilterList, FilterRange, FilterValue, FilterValues, Fusion, SearchMode,
    SearchRequest,
};
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::{ClusterShape, TestCluster};

const DOCUMENTS: usize = 200;
const FILTERS: usize = 200;
const K: usize = 10;
const WORDS: [&str; 16] = [
    "policy", "holiday", "contract", "salary", "review", "travel", "expense", "laptop", "security",
    "training", "bonus", "office", "remote", "hiring", "audit", "budget",
];
const TEAMS: [&str; 4] = ["hr", "legal", "it", "ops"];
const QUERIES: [&str; 6] = [
    "policy review",
    "travel expense",
    "security training laptop",
    "bonus salary",
    "remote office",
    "audit budget hiring",
];

struct Corpus {
    documents: Vec<Document>,
    metadata: HashMap<String, Value>,
}

fn corpus(rng: &mut fastrand::Rng) -> Corpus {
    let mut documents = Vec::new();
    let mut metadata = HashMap::new();
    for index in 0..DOCUMENTS {
        let id = format!("doc-{index:03}");
        let words: Vec<&str> = (0..rng.usize(6..14))
            .map(|_| WORDS[rng.usize(..WORDS.len())])
            .collect();
        let mut fields = json!({
            "team": TEAMS[rng.usize(..TEAMS.len())],
            "year": rng.i64(2015..=2024),
            "score": (rng.u32(0..1000) as f64) / 100.0,
            "published": format!("{}-{:02}-{:02}", rng.u32(2015..=2024), rng.u32(1..=12), rng.u32(1..=28)),
        });
        let object = fields.as_object_mut().unwrap();
        if rng.bool() {
            let tags: Vec<&str> = ["x", "y", "z"].into_iter().filter(|_| rng.bool()).collect();
            if !tags.is_empty() {
                object.insert("tags".into(), json!(tags));
            }
        }
        if rng.u8(0..3) == 0 {
            object.insert("draft".into(), json!(rng.bool()));
        }
        if rng.u8(0..4) == 0 {
            object.insert("author".into(), {
                let name = ["ann", "bob"][rng.usize(..2)];
                json!({ "name": name })
            });
        }
        documents.push(Document {
            id: id.clone(),
            text: words.join(" "),
            metadata_json: fields.to_string(),
            ..Document::default()
        });
        metadata.insert(id, fields);
    }
    Corpus {
        documents,
        metadata,
    }
}

fn value(typed: Typed) -> FilterValue {
    FilterValue { value: Some(typed) }
}

fn condition(field: &str, test: Test) -> Filter {
    Filter {
        kind: Some(Kind::Field(FieldCondition {
            field: field.to_string(),
            test: Some(test),
        })),
    }
}

/// A range with one or two bounds from `make`.
fn range(rng: &mut fastrand::Rng, mut make: impl FnMut(&mut fastrand::Rng) -> FilterValue) -> Test {
    let mut range = FilterRange::default();
    match rng.u8(0..3) {
        0 => range.gte = Some(make(rng)),
        1 => range.lt = Some(make(rng)),
        _ => {
            let (low, high) = (make(rng), make(rng));
            range.gt = Some(low);
            range.lte = Some(high);
        }
    }
    Test::Range(range)
}

fn leaf(rng: &mut fastrand::Rng) -> Filter {
    let team = |rng: &mut fastrand::Rng| {
        value(Typed::Text(
            ["hr", "legal", "it", "ops", "finance"][rng.usize(..5)].to_string(),
        ))
    };
    match rng.u8(0..10) {
        0 => condition("team", Test::Equals(team(rng))),
        1 => condition(
            "team",
            Test::OneOf(FilterValues {
                values: vec![team(rng), team(rng)],
            }),
        ),
        2 => condition(
            "year",
            range(rng, |rng| value(Typed::Number(rng.i64(2014..=2025) as f64))),
        ),
        3 => condition(
            "score",
            range(rng, |rng| {
                value(Typed::Number(rng.u32(0..1000) as f64 / 100.0))
            }),
        ),
        4 => condition(
            "published",
            range(rng, |rng| {
                value(Typed::Date(format!(
                    "{}-{:02}-01",
                    rng.u32(2015..=2024),
                    rng.u32(1..=12)
                )))
            }),
        ),
        5 => condition(
            "tags",
            Test::Equals(value(Typed::Text(
                ["x", "y", "z"][rng.usize(..3)].to_string(),
            ))),
        ),
        6 => condition("draft", Test::Exists(rng.bool())),
        7 => condition("draft", Test::Equals(value(Typed::Boolean(rng.bool())))),
        8 => condition(
            "year",
            Test::Equals(value(Typed::Number(rng.i64(2015..=2024) as f64))),
        ),
        _ => match rng.bool() {
            true => condition("author", Test::Exists(true)),
            false => condition(
                "author.name",
                Test::Equals(value(Typed::Text(
                    ["ann", "bob"][rng.usize(..2)].to_string(),
                ))),
            ),
        },
    }
}

fn random_filter(rng: &mut fastrand::Rng, depth: u8) -> Filter {
    if depth == 0 || rng.u8(0..3) == 0 {
        return leaf(rng);
    }
    let children = |rng: &mut fastrand::Rng| FilterList {
        filters: (0..rng.usize(1..=3))
            .map(|_| random_filter(rng, depth - 1))
            .collect(),
    };
    match rng.u8(0..3) {
        0 => Filter {
            kind: Some(Kind::All(children(rng))),
        },
        1 => Filter {
            kind: Some(Kind::Any(children(rng))),
        },
        _ => Filter {
            kind: Some(Kind::Not(Box::new(random_filter(rng, depth - 1)))),
        },
    }
}

/// The field's values: an array's elements, or the one value; none when absent or null.
fn values_at<'a>(metadata: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut current = metadata;
    for part in path.split('.') {
        match current.get(part) {
            Some(next) => current = next,
            None => return Vec::new(),
        }
    }
    match current {
        Value::Null => Vec::new(),
        Value::Array(items) => items.iter().collect(),
        one => vec![one],
    }
}

fn equals(found: &Value, wanted: &FilterValue) -> bool {
    match (&wanted.value, found) {
        (Some(Typed::Text(text)), Value::String(value)) => value == text,
        (Some(Typed::Number(number)), Value::Number(value)) => value.as_f64() == Some(*number),
        (Some(Typed::Boolean(boolean)), Value::Bool(value)) => value == boolean,
        _ => false,
    }
}

/// A number or a date (µs) to compare with range bounds of the same kind.
fn comparable(found: &Value, bound: &FilterValue) -> Option<(f64, f64)> {
    match (&bound.value, found) {
        (Some(Typed::Number(bound)), Value::Number(value)) => Some((value.as_f64()?, *bound)),
        (Some(Typed::Date(bound)), Value::String(value)) => Some((
            quarry_kit::filter::parse_date(value)? as f64,
            quarry_kit::filter::parse_date(bound)? as f64,
        )),
        _ => None,
    }
}

fn in_range(found: &Value, range: &FilterRange) -> bool {
    let check = |bound: &Option<FilterValue>, holds: fn(f64, f64) -> bool| match bound {
        None => true,
        Some(bound) => comparable(found, bound).is_some_and(|(value, bound)| holds(value, bound)),
    };
    check(&range.gt, |value, bound| value > bound)
        && check(&range.gte, |value, bound| value >= bound)
        && check(&range.lt, |value, bound| value < bound)
        && check(&range.lte, |value, bound| value <= bound)
}

/// This test's own reading of a filter.
fn admits(filter: &Filter, metadata: &Value) -> bool {
    match &filter.kind {
        Some(Kind::All(list)) => list.filters.iter().all(|inner| admits(inner, metadata)),
        Some(Kind::Any(list)) => list.filters.iter().any(|inner| admits(inner, metadata)),
        Some(Kind::Not(inner)) => !admits(inner, metadata),
        Some(Kind::Field(condition)) => {
            let found = values_at(metadata, &condition.field);
            match &condition.test {
                Some(Test::Equals(wanted)) => found.iter().any(|value| equals(value, wanted)),
                Some(Test::OneOf(set)) => found
                    .iter()
                    .any(|value| set.values.iter().any(|wanted| equals(value, wanted))),
                Some(Test::Range(range)) => found.iter().any(|value| in_range(value, range)),
                Some(Test::Exists(present)) => found.is_empty() != *present,
                None => false,
            }
        }
        None => false,
    }
}

async fn search(
    client: &mut QuarryClient<Channel>,
    query: &str,
    k: usize,
    mode: SearchMode,
    filter: Option<&Filter>,
) -> Vec<(String, f64)> {
    client
        .search(SearchRequest {
            query: query.to_string(),
            k: k as u32,
            mode: mode as i32,
            fusion: Fusion::Rrf as i32,
            filter: filter.cloned(),
            ..SearchRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .hits
        .into_iter()
        .map(|hit| (hit.doc_id, hit.score))
        .collect()
}

fn sort_best_first(list: &mut [(String, f64)]) {
    list.sort_by(|left, right| {
        quarry_kit::ranking::compare_best_first(left.1, &left.0, right.1, &right.0)
    });
}

/// The cosine similarity the shards compute (f64 sums, rounded to f32).
fn cosine(left: &[f32], right: &[f32]) -> f64 {
    let dot: f64 = left
        .iter()
        .zip(right)
        .map(|(a, b)| f64::from(*a) * f64::from(*b))
        .sum();
    let norm = |vector: &[f32]| {
        vector
            .iter()
            .map(|v| f64::from(*v) * f64::from(*v))
            .sum::<f64>()
            .sqrt()
    };
    f64::from((dot / (norm(left) * norm(right))) as f32)
}

/// Reciprocal rank fusion, 0.5 and 0.5, k = 60, as a hybrid `Search` plans it.
fn fuse(keyword: &[(String, f64)], vector: &[(String, f64)]) -> Vec<(String, f64)> {
    let mut fused: HashMap<&str, f64> = HashMap::new();
    for list in [keyword, vector] {
        for (rank, (id, _)) in list.iter().enumerate() {
            *fused.entry(id).or_default() += 0.5 / (60.0 + (rank + 1) as f64);
        }
    }
    let mut fused: Vec<(String, f64)> = fused
        .into_iter()
        .map(|(id, score)| (id.to_string(), score))
        .collect();
    sort_best_first(&mut fused);
    fused
}

/// `got` is the top `K` of the whole reference ranking `expected`: the same ids in the same
/// order, scores within rounding — except that where the reference has scores within
/// rounding of each other (a tie, perhaps across the cut at K), those may come in any order
/// and the cut may fall anywhere among them.
fn assert_same_ranking(got: &[(String, f64)], expected: &[(String, f64)], what: &str) {
    let ids = |list: &[(String, f64)]| list.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>();
    let shown = || {
        format!(
            "{:?} vs {:?}",
            ids(got),
            ids(&expected[..expected.len().min(K + 3)])
        )
    };
    assert_eq!(got.len(), expected.len().min(K), "{what}: {}", shown());
    let close = |left: f64, right: f64| (left - right).abs() <= 1e-5 * left.abs().max(1.0);
    let mut start = 0;
    while start < got.len() {
        let mut end = start + 1;
        while end < expected.len() && close(expected[end].1, expected[start].1) {
            end += 1;
        }
        let tied: std::collections::HashSet<String> =
            ids(&expected[start..end]).into_iter().collect();
        for position in start..end.min(got.len()) {
            assert!(
                tied.contains(&got[position].0),
                "{what}: position {position}: {}",
                shown()
            );
            assert!(
                close(got[position].1, expected[position].1),
                "{what}: score at {position}: {} vs {}",
                got[position].1,
                expected[position].1
            );
        }
        start = end;
    }
}

async fn check_filters_on(shards: u32) {
    let mut rng = fastrand::Rng::with_seed(14);
    let corpus = corpus(&mut rng);
    let filters: Vec<Filter> = (0..FILTERS).map(|_| random_filter(&mut rng, 2)).collect();
    let cluster = TestCluster::start(ClusterShape {
        shards,
        ..ClusterShape::default()
    })
    .await;
    let mut client = cluster.client(0).await;
    let summary = client
        .ingest(tokio_stream::iter(corpus.documents.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        summary.accepted,
        DOCUMENTS as u64,
        "{:?}",
        summary.errors.first()
    );

    // The analyzer's embeddings, as the gateway asked for them at ingest and asks at search.
    let mut analyzer = AnalyzerClient::connect(cluster.others[0].address.clone())
        .await
        .unwrap();
    let embed = |texts: Vec<String>, documents: bool| EmbedRequest { texts, documents };
    let texts: Vec<String> = corpus
        .documents
        .iter()
        .map(|d| format!("{} {}", d.title, d.text))
        .collect();
    let vectors = analyzer
        .embed(embed(texts, true))
        .await
        .unwrap()
        .into_inner()
        .vectors;
    let document_vectors: HashMap<&str, &[f32]> = corpus
        .documents
        .iter()
        .zip(&vectors)
        .map(|(document, vector)| (document.id.as_str(), vector.values.as_slice()))
        .collect();

    let mut matched_counts = Vec::new();
    for (index, filter) in filters.iter().enumerate() {
        let query = QUERIES[index % QUERIES.len()];
        let admitted = |id: &str| admits(filter, &corpus.metadata[id]);
        let what = |mode: &str| format!("{shards} shard(s), filter {index} ({mode}) {filter:?}");

        let every_match = search(&mut client, query, DOCUMENTS, SearchMode::Keyword, None).await;
        let keyword_reference: Vec<(String, f64)> = every_match
            .into_iter()
            .filter(|(id, _)| admitted(id))
            .collect();
        let keyword = search(&mut client, query, K, SearchMode::Keyword, Some(filter)).await;
        assert_same_ranking(&keyword, &keyword_reference, &what("keyword"));

        let query_vector = analyzer
            .embed(embed(vec![query.to_string()], false))
            .await
            .unwrap()
            .into_inner()
            .vectors
            .remove(0)
            .values;
        let mut vector_reference: Vec<(String, f64)> = corpus
            .documents
            .iter()
            .filter(|document| admitted(&document.id))
            .map(|document| {
                (
                    document.id.clone(),
                    cosine(&query_vector, document_vectors[document.id.as_str()]),
                )
            })
            .collect();
        sort_best_first(&mut vector_reference);
        matched_counts.push(vector_reference.len());
        let semantic = search(&mut client, query, K, SearchMode::Semantic, Some(filter)).await;
        assert_same_ranking(&semantic, &vector_reference, &what("semantic"));

        let hybrid_reference = fuse(&keyword, &semantic);
        let hybrid = search(&mut client, query, K, SearchMode::Hybrid, Some(filter)).await;
        assert_same_ranking(&hybrid, &hybrid_reference, &what("hybrid"));
    }
    // A value of a kind the field never held is refused, naming the field.
    for (text, field) in [
        ("year=\"2020\"", "year"),
        ("team>=3", "team"),
        ("score>=2020-01-01", "score"),
    ] {
        let filter = quarry_kit::filter::parse(text).unwrap();
        let refused = client
            .search(SearchRequest {
                query: "policy".to_string(),
                filter: Some(filter),
                ..SearchRequest::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{text}");
        assert!(
            refused
                .message()
                .starts_with(&format!("filter: {field}: compared with")),
            "{text}: {}",
            refused.message()
        );
    }
    // The filters were neither all trivial nor all empty.
    let some = matched_counts
        .iter()
        .filter(|count| (1..DOCUMENTS).contains(*count))
        .count();
    let few = matched_counts
        .iter()
        .filter(|count| (1..K).contains(*count))
        .count();
    assert!(
        some > FILTERS / 2 && few > 5,
        "admitted counts: {matched_counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn random_filters_match_a_brute_force_reference_on_one_shard() {
    check_filters_on(1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn random_filters_match_a_brute_force_reference_on_three_shards() {
    check_filters_on(3).await;
}
