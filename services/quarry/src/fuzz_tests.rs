//! Hostile input: every public rpc of `quarry.v1.Quarry` gets generated requests — any
//! strings (empty, huge, any Unicode), any numbers, unknown enum values, steps that depend
//! on nothing that exists, API keys that are almost right — through a whole cluster in this
//! process (front door, gateway, shards, analyzer, scheduler), with collections that may or
//! may not exist and filters of any shape. Every answer must be OK or
//! one of the codes documented for that rpc (never UNKNOWN or INTERNAL), no server may
//! panic, and the cluster must still serve afterwards. `QUARRY_FUZZ_CASES` sets the number
//! of calls (CI runs the default; longer runs set more).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use proptest::collection::{hash_map, vec};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use quarry_gateway::front::key_store::KeyLocation;
use quarry_gateway::front::keys::{generate, Scope};
use quarry_kit::config::{EncoderKind, QuarryConfig};
use quarry_proto::v1::quarry_client::QuarryClient;
use quarry_proto::v1::{
    field_condition, filter, filter_value, AskRequest, CancelWorkflowRequest, ClusterStatusRequest,
    CreateCollectionRequest, DeleteCollectionRequest, DeleteRequest, Document, FieldCondition,
    Filter, FilterList, FilterRange, FilterValue, FilterValues, GetCollectionRequest,
    GetDocumentRequest, GetWorkflowRequest, ListCollectionsRequest, ListWorkflowsRequest,
    SearchRequest, StepSpec, SubmitWorkflowRequest, WatchWorkflowRequest,
};
use tonic::transport::Channel;
use tonic::Code;

use crate::up::LocalCluster;

/// Calls made by default: about a minute of a debug build on two cores.
const DEFAULT_CASES: u32 = 5000;

/// One generated call.
#[derive(Debug, Clone)]
enum Call {
    Ask(AskRequest),
    AskStream(AskRequest),
    Search(SearchRequest),
    Ingest(Vec<Document>),
    Delete(DeleteRequest),
    GetDocument(GetDocumentRequest),
    ClusterStatus,
    SubmitWorkflow(SubmitWorkflowRequest),
    GetWorkflow(GetWorkflowRequest),
    WatchWorkflow(WatchWorkflowRequest),
    CancelWorkflow(CancelWorkflowRequest),
    ListWorkflows,
    CreateCollection(CreateCollectionRequest),
    DeleteCollection(DeleteCollectionRequest),
    ListCollections,
    GetCollection(GetCollectionRequest),
}

impl Call {
    fn rpc(&self) -> &'static str {
        match self {
            Call::Ask(_) => "Ask",
            Call::AskStream(_) => "AskStream",
            Call::Search(_) => "Search",
            Call::Ingest(_) => "Ingest",
            Call::Delete(_) => "Delete",
            Call::GetDocument(_) => "GetDocument",
            Call::ClusterStatus => "ClusterStatus",
            Call::SubmitWorkflow(_) => "SubmitWorkflow",
            Call::GetWorkflow(_) => "GetWorkflow",
            Call::WatchWorkflow(_) => "WatchWorkflow",
            Call::CancelWorkflow(_) => "CancelWorkflow",
            Call::ListWorkflows => "ListWorkflows",
            Call::CreateCollection(_) => "CreateCollection",
            Call::DeleteCollection(_) => "DeleteCollection",
            Call::ListCollections => "ListCollections",
            Call::GetCollection(_) => "GetCollection",
        }
    }

    /// The codes the README documents for the rpc, besides OK.
    fn documented(&self) -> &'static [Code] {
        match self {
            Call::Ask(_) | Call::AskStream(_) | Call::Search(_) => &[
                Code::InvalidArgument,
                Code::FailedPrecondition,
                Code::NotFound,
            ],
            Call::Ingest(_) | Call::SubmitWorkflow(_) => &[Code::InvalidArgument],
            Call::Delete(_)
            | Call::GetDocument(_)
            | Call::GetWorkflow(_)
            | Call::WatchWorkflow(_)
            | Call::CancelWorkflow(_)
            | Call::DeleteCollection(_)
            | Call::GetCollection(_) => &[Code::InvalidArgument, Code::NotFound],
            Call::CreateCollection(_) => &[Code::InvalidArgument, Code::AlreadyExists],
            Call::ClusterStatus | Call::ListWorkflows | Call::ListCollections => &[],
        }
    }
}

/// Codes any rpc may answer: no or a bad key, busy, out of time, a role down.
const ANY_RPC: [Code; 5] = [
    Code::Unauthenticated,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::DeadlineExceeded,
    Code::Unavailable,
];

fn text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[a-z ]{0,40}",
        2 => any::<String>(),
        1 => Just(String::new()),
        1 => "[ \t\n]{1,8}",
        1 => "\\PC{0,400}",
        1 => (0usize..20_000).prop_map(|length| "x".repeat(length)),
        1 => Just("penicillin \u{0}\u{feff}\u{202e} 🦀 \\\"'".to_string()),
    ]
    .boxed()
}

/// A collection name: mostly none (`default`), a few that may exist, or anything.
fn collection() -> BoxedStrategy<String> {
    prop_oneof![
        6 => Just(String::new()),
        2 => "[a-c]",
        1 => Just("default".to_string()),
        1 => text(),
    ]
    .boxed()
}

fn metadata_json() -> BoxedStrategy<String> {
    prop_oneof![
        3 => Just(String::new()),
        3 => ("[a-c]{1,3}", any::<i32>(), "[a-z]{0,5}").prop_map(|(field, number, word)| {
            format!(r#"{{"{field}": {number}, "w": "{word}", "day": "2024-0{}-01", "n": {{"x": [1, "a", true]}}}}"#, number.unsigned_abs() % 9 + 1)
        }),
        1 => Just("[1, 2]".to_string()),
        1 => text(),
    ]
    .boxed()
}

fn filter_value() -> BoxedStrategy<FilterValue> {
    prop_oneof![
        text().prop_map(filter_value::Value::Text),
        any::<f64>().prop_map(filter_value::Value::Number),
        any::<bool>().prop_map(filter_value::Value::Boolean),
        prop_oneof![Just("2024-05-01".to_string()), text()].prop_map(filter_value::Value::Date),
    ]
    .prop_map(|value| FilterValue { value: Some(value) })
    .boxed()
}

fn condition() -> BoxedStrategy<Filter> {
    let field = || prop_oneof![3 => "[a-c]{1,2}", 1 => text()];
    let bound = || proptest::option::of(filter_value());
    let test = prop_oneof![
        filter_value().prop_map(field_condition::Test::Equals),
        vec(filter_value(), 0..4)
            .prop_map(|values| field_condition::Test::OneOf(FilterValues { values })),
        (bound(), bound(), bound(), bound()).prop_map(|(gt, gte, lt, lte)| {
            field_condition::Test::Range(FilterRange { gt, gte, lt, lte })
        }),
        any::<bool>().prop_map(field_condition::Test::Exists),
    ];
    (field(), proptest::option::of(test))
        .prop_map(|(field, test)| Filter {
            kind: Some(filter::Kind::Field(FieldCondition { field, test })),
        })
        .boxed()
}

/// Any filter tree, sometimes without a kind, sometimes deep.
fn filter_tree() -> BoxedStrategy<Option<Filter>> {
    let tree = condition().prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(|filters| Filter {
                kind: Some(filter::Kind::All(FilterList { filters })),
            }),
            vec(inner.clone(), 0..4).prop_map(|filters| Filter {
                kind: Some(filter::Kind::Any(FilterList { filters })),
            }),
            inner.prop_map(|filter| Filter {
                kind: Some(filter::Kind::Not(Box::new(filter))),
            }),
            Just(Filter { kind: None }),
        ]
    });
    prop_oneof![3 => Just(None), 2 => tree.prop_map(Some)].boxed()
}

fn document() -> impl Strategy<Value = Document> {
    (
        text(),
        text(),
        text(),
        hash_map(text(), text(), 0..4),
        collection(),
        metadata_json(),
    )
        .prop_map(
            |(id, title, text, metadata, collection, metadata_json)| Document {
                id,
                title,
                text,
                metadata,
                collection,
                metadata_json,
            },
        )
}

fn step() -> impl Strategy<Value = StepSpec> {
    let id = || prop_oneof![3 => "[a-c]{1,2}", 1 => text()];
    (
        id(),
        prop_oneof![3 => Just(7i32), 1 => -2i32..10],
        text(),
        text(),
        vec(id(), 0..3),
        any::<i32>(),
        prop_oneof![Just(0u32), 1u32..5_000, any::<u32>()],
        prop_oneof![Just(0u32), any::<u32>()],
    )
        .prop_map(
            |(id, role, description, input, depends_on, priority, timeout_ms, max_retries)| {
                StepSpec {
                    id,
                    role,
                    description,
                    input,
                    depends_on,
                    priority,
                    timeout_ms,
                    max_retries,
                }
            },
        )
}

fn enum_value() -> impl Strategy<Value = i32> {
    prop_oneof![4 => 0i32..4, 1 => any::<i32>()]
}

fn k() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 0u32..20, 1 => any::<u32>()]
}

fn call() -> impl Strategy<Value = Call> {
    let ask = || {
        (
            text(),
            k(),
            enum_value(),
            collection(),
            filter_tree(),
            any::<bool>(),
        )
            .prop_map(
                |(question, k, mode, collection, filter, skip_cache)| AskRequest {
                    question,
                    k,
                    mode,
                    collection,
                    filter,
                    skip_cache,
                },
            )
    };
    prop_oneof![
        ask().prop_map(Call::Ask),
        ask().prop_map(Call::AskStream),
        (
            text(),
            k(),
            enum_value(),
            enum_value(),
            collection(),
            filter_tree()
        )
            .prop_map(|(query, k, mode, fusion, collection, filter)| {
                Call::Search(SearchRequest {
                    query,
                    k,
                    mode,
                    fusion,
                    collection,
                    filter,
                })
            }),
        vec(document(), 0..6).prop_map(Call::Ingest),
        (vec(text(), 0..6), collection())
            .prop_map(|(ids, collection)| Call::Delete(DeleteRequest { ids, collection })),
        (text(), collection())
            .prop_map(|(id, collection)| Call::GetDocument(GetDocumentRequest { id, collection })),
        (collection(), text()).prop_map(|(name, description)| {
            Call::CreateCollection(CreateCollectionRequest { name, description })
        }),
        collection().prop_map(|name| Call::DeleteCollection(DeleteCollectionRequest { name })),
        Just(Call::ListCollections),
        collection().prop_map(|name| Call::GetCollection(GetCollectionRequest { name })),
        Just(Call::ClusterStatus),
        (text(), text(), vec(step(), 0..4)).prop_map(|(name, description, steps)| {
            Call::SubmitWorkflow(SubmitWorkflowRequest {
                name,
                description,
                steps,
            })
        }),
        text().prop_map(|id| Call::GetWorkflow(GetWorkflowRequest { id })),
        text().prop_map(|id| Call::WatchWorkflow(WatchWorkflowRequest { id })),
        text().prop_map(|id| Call::CancelWorkflow(CancelWorkflowRequest { id })),
        Just(Call::ListWorkflows),
    ]
}

/// The `authorization` a call carries: the right key mostly, else something close to it.
fn authorization(token: String) -> impl Strategy<Value = Option<String>> {
    let almost = token.clone();
    prop_oneof![
        6 => Just(Some(format!("Bearer {token}"))),
        1 => Just(None),
        1 => "[ -~]{0,80}".prop_map(Some),
        1 => (0usize..90).prop_map(move |cut| Some(format!("Bearer {}", &almost[..cut.min(almost.len())]))),
    ]
}

fn request<T>(message: T, authorization: &Option<String>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(std::time::Duration::from_secs(20));
    if let Some(value) = authorization {
        if let Ok(value) = value.parse() {
            request.metadata_mut().insert("authorization", value);
        }
    }
    request
}

async fn send(client: &mut QuarryClient<Channel>, call: Call, key: &Option<String>) -> Code {
    let outcome = match call {
        Call::Ask(message) => client.ask(request(message, key)).await.map(drop),
        Call::AskStream(message) => match client.ask_stream(request(message, key)).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                let mut outcome = Ok(());
                while let Some(chunk) = stream.message().await.transpose() {
                    if let Err(status) = chunk {
                        outcome = Err(status);
                        break;
                    }
                }
                outcome
            }
            Err(status) => Err(status),
        },
        Call::Search(message) => client.search(request(message, key)).await.map(drop),
        Call::Ingest(documents) => client
            .ingest(request(tokio_stream::iter(documents), key))
            .await
            .map(drop),
        Call::Delete(message) => client.delete(request(message, key)).await.map(drop),
        Call::GetDocument(message) => client.get_document(request(message, key)).await.map(drop),
        Call::ClusterStatus => client
            .cluster_status(request(ClusterStatusRequest {}, key))
            .await
            .map(drop),
        Call::SubmitWorkflow(message) => client
            .submit_workflow(request(message, key))
            .await
            .map(drop),
        Call::GetWorkflow(message) => client.get_workflow(request(message, key)).await.map(drop),
        // The first event (or the refusal) is enough; a watch lasts as long as its workflow.
        Call::WatchWorkflow(message) => match client.watch_workflow(request(message, key)).await {
            Ok(stream) => stream.into_inner().message().await.map(drop),
            Err(status) => Err(status),
        },
        Call::CancelWorkflow(message) => client
            .cancel_workflow(request(message, key))
            .await
            .map(drop),
        Call::ListWorkflows => client
            .list_workflows(request(ListWorkflowsRequest {}, key))
            .await
            .map(drop),
        Call::CreateCollection(message) => client
            .create_collection(request(message, key))
            .await
            .map(drop),
        Call::DeleteCollection(message) => client
            .delete_collection(request(message, key))
            .await
            .map(drop),
        Call::ListCollections => client
            .list_collections(request(ListCollectionsRequest {}, key))
            .await
            .map(drop),
        Call::GetCollection(message) => {
            client.get_collection(request(message, key)).await.map(drop)
        }
    };
    match outcome {
        Ok(()) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[test]
fn every_public_rpc_answers_generated_requests_with_a_documented_code() {
    let panics = Arc::new(AtomicUsize::new(0));
    let previous_hook = std::panic::take_hook();
    {
        let panics = Arc::clone(&panics);
        std::panic::set_hook(Box::new(move |info| {
            panics.fetch_add(1, Ordering::SeqCst);
            eprintln!("panic: {info}");
        }));
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let directory = tempfile::tempdir().unwrap();
    let keys = directory.path().join("keys.jsonl");
    let admin = generate(vec![Scope::Admin], Vec::new(), None, String::new()).unwrap();
    runtime
        .block_on(KeyLocation::File(keys.clone()).put(&admin.key))
        .unwrap();
    let mut config = QuarryConfig {
        data_dir: directory.path().join("data"),
        listen: "127.0.0.1:0".to_string(),
        shards: 2,
        ..QuarryConfig::default()
    };
    config.analyzer.encoder = EncoderKind::Hash;
    config.auth.keys_file = Some(keys);
    config.scheduler.gateway_api_key = Some(admin.token.clone());
    let cluster = runtime
        .block_on(LocalCluster::start(
            &config,
            tokio_util::sync::CancellationToken::new(),
        ))
        .unwrap();
    let channel = runtime
        .block_on(
            Channel::from_shared(cluster.gateway_address.clone())
                .unwrap()
                .connect(),
        )
        .unwrap();
    let mut client = QuarryClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);

    let cases = std::env::var("QUARRY_FUZZ_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let tally = std::sync::Mutex::new(std::collections::BTreeMap::<String, usize>::new());
    let outcome = runner.run(
        &(call(), authorization(admin.token.clone())),
        |(call, key)| {
            let rpc = call.rpc();
            let allowed: Vec<Code> = call.documented().iter().chain(&ANY_RPC).copied().collect();
            let code = runtime.block_on(send(&mut client.clone(), call, &key));
            *tally
                .lock()
                .unwrap()
                .entry(format!("{rpc} {code:?}"))
                .or_default() += 1;
            if code != Code::Ok && !allowed.contains(&code) {
                return Err(TestCaseError::fail(format!("{rpc} answered {code:?}")));
            }
            if key.as_deref() != Some(&format!("Bearer {}", admin.token)) && code == Code::Ok {
                return Err(TestCaseError::fail(format!(
                    "{rpc} served a call without the key"
                )));
            }
            Ok(())
        },
    );
    eprintln!("{} calls: {:?}", cases, tally.lock().unwrap());
    // Still serving: a plain search and a health-checked cluster.
    let still = runtime.block_on(send(
        &mut client,
        Call::Search(SearchRequest {
            query: "anything".into(),
            k: 3,
            mode: 1,
            ..SearchRequest::default()
        }),
        &Some(format!("Bearer {}", admin.token)),
    ));
    runtime.block_on(cluster.stop()).unwrap();
    std::panic::set_hook(previous_hook);
    if let Err(error) = outcome {
        panic!("{error}");
    }
    assert_eq!(still, Code::Ok, "the cluster stopped serving");
    assert_eq!(panics.load(Ordering::SeqCst), 0, "a server panicked");
}
