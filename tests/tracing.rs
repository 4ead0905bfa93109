//! One question, one trace: a cluster of separate `quarry serve` processes (2 shards, an
//! analyzer, generator, evaluator and gateway, found through etcd) exports its spans to an
//! OTLP receiver started by the test. Every span of an `Ask` must share the gateway's trace
//! (or the client's, when it sends a `traceparent`), and the analyzer, both shards, the
//! generator and the evaluator must hang under it across process boundaries — dropping the
//! trace context on any hop makes that hop's spans a trace of their own, and the test fail.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quarry_proto::v1::quarry_client::QuarryClient;
use quarry_proto::v1::AskRequest;
use support::etcd::Etcd;
use support::otlp::{wait_for_spans, OtlpReceiver, ReceivedSpan, Trace};
use support::{corpus, Served};
use tonic::transport::Channel;

const CLUSTER: &str = "traced";
const QUESTION: &str = "Who discovered penicillin?";

/// The services an `Ask` reaches, as their `service.name`s.
const HOPS: [&str; 4] = [
    "quarry-analyzer",
    "quarry-retriever",
    "quarry-generator",
    "quarry-evaluator",
];

struct TracedCluster {
    _etcd: Etcd,
    _members: Vec<Served>,
    gateway: Served,
    _data: tempfile::TempDir,
}

impl TracedCluster {
    async fn start(receiver: &OtlpReceiver) -> Self {
        let etcd = Etcd::with_cluster(CLUSTER, 2);
        let data = tempfile::tempdir().unwrap();
        let endpoint = receiver.endpoint();
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ];
        let member = |extra: &[&str]| {
            let mut args = vec![
                "--etcd".to_string(),
                etcd.endpoint.clone(),
                "--cluster".to_string(),
                CLUSTER.to_string(),
            ];
            args.extend(extra.iter().map(|arg| arg.to_string()));
            args
        };
        let mut members = Vec::new();
        for shard in 0..2 {
            let directory = data.path().join(format!("shard-{shard}"));
            let args = member(&[
                "--data-dir",
                directory.to_str().unwrap(),
                "--shard",
                &shard.to_string(),
            ]);
            members.push(Served::start_with_env("retriever", &args, &env).await);
        }
        for role in ["analyzer", "generator", "evaluator"] {
            members.push(Served::start_with_env(role, &member(&[]), &env).await);
        }
        let gateway = Served::start_with_env("gateway", &member(&[]), &env).await;
        Self {
            _etcd: etcd,
            _members: members,
            gateway,
            _data: data,
        }
    }

    async fn client(&self) -> QuarryClient<Channel> {
        let channel = Channel::from_shared(self.gateway.address.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        QuarryClient::new(channel)
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// The gateway's `Ask` server span that started after `since`.
fn ask_root(spans: &[ReceivedSpan], since: u64) -> Option<ReceivedSpan> {
    spans
        .iter()
        .find(|span| {
            span.service_name == "quarry-gateway"
                && span.kind == "server"
                && span.attribute("rpc.method") == Some("Ask")
                && span.start_unix_nanos >= since
        })
        .cloned()
}

/// Whether the trace of the `Ask` after `since` has arrived from every hop.
fn ask_trace_complete(spans: &[ReceivedSpan], since: u64) -> bool {
    let Some(root) = ask_root(spans, since) else {
        return false;
    };
    let in_trace = |service: &str, method: &str| {
        spans.iter().any(|span| {
            span.trace_id == root.trace_id
                && span.service_name == service
                && span.attribute("rpc.method") == Some(method)
        })
    };
    let shards_searched = spans
        .iter()
        .filter(|span| {
            span.trace_id == root.trace_id
                && span.service_name == "quarry-retriever"
                && span.attribute("rpc.method") == Some("Search")
        })
        .count();
    in_trace("quarry-analyzer", "Analyze")
        && in_trace("quarry-generator", "Generate")
        && in_trace("quarry-evaluator", "Evaluate")
        && shards_searched >= 2
}

/// Asserts that the Ask's trace reaches every hop as children across processes, and that no
/// other trace began during the question (a hop that lost the context would start one).
fn assert_one_connected_trace(receiver: &OtlpReceiver, root: &ReceivedSpan, since: u64) {
    let trace = Trace::of(receiver, &root.trace_id);
    let spans_by_id = trace.by_id();
    // Every span's parent is in the trace, up to the root.
    for span in &trace.spans {
        if span.span_id == root.span_id {
            continue;
        }
        assert!(
            spans_by_id.contains_key(span.parent_span_id.as_str()),
            "{} {:?} of {} has a parent outside the trace",
            span.name,
            span.attribute("rpc.method"),
            span.service_name
        );
    }
    for service in HOPS {
        let servers: Vec<&ReceivedSpan> = trace
            .spans
            .iter()
            .filter(|span| span.service_name == service && span.kind == "server")
            .collect();
        assert!(!servers.is_empty(), "no {service} span in the trace");
        for server in servers {
            let parent_service = trace.parent_service(server).unwrap_or_default();
            assert_ne!(
                parent_service, service,
                "a {service} server span must be a child of the process that called it"
            );
            assert_eq!(server.attribute("role"), Some(&service["quarry-".len()..]));
            assert_eq!(server.attribute("rpc.system"), Some("grpc"));
            assert_eq!(server.attribute("rpc.grpc.status_code"), Some("0"));
        }
    }
    let mut shards: Vec<&str> = trace
        .server_spans("quarry-retriever", "Search")
        .iter()
        .filter_map(|span| span.attribute("shard"))
        .collect();
    shards.sort_unstable();
    shards.dedup();
    assert_eq!(shards, ["0", "1"], "both shards searched in the trace");
    for search in trace.server_spans("quarry-retriever", "Search") {
        assert_eq!(trace.parent_service(search), Some("quarry-gateway"));
    }
    // Spans say what was asked and found.
    assert_eq!(root.attribute("k"), Some("5"), "the default ask k");
    assert!(root.attribute("strategy").is_some() && root.attribute("confidence").is_some());
    for analyze in trace.server_spans("quarry-analyzer", "Analyze") {
        assert!(analyze.attribute("cache_hit").is_some(), "{analyze:?}");
    }
    for search in trace.server_spans("quarry-retriever", "Search") {
        assert!(search.attribute("keyword_hits").is_some(), "{search:?}");
    }
    // Client spans of shard calls are only for hedges and retries (none here: hedging
    // waits for 50 latencies of a shard); the gateway records what the fan-out asked.
    assert!(trace
        .spans
        .iter()
        .filter(|span| span.name == "retriever.call")
        .all(|span| span.attribute("hedged") == Some("true")
            || span.attribute("retry") == Some("true")));
    assert_eq!(root.attribute("shards_asked"), Some("2"));
    assert_eq!(root.attribute("shards_answered"), Some("2"));
    // No hop started a trace of its own during the question.
    let stray_roots: Vec<String> = receiver
        .spans()
        .into_iter()
        .filter(|span| {
            span.start_unix_nanos >= since
                && span.parent_span_id.is_empty()
                && span.trace_id != root.trace_id
                && span.attribute("rpc.service") != Some("grpc.health.v1.Health")
        })
        .map(|span| {
            format!(
                "{} {} {:?}",
                span.service_name,
                span.name,
                span.attribute("rpc.method")
            )
        })
        .collect();
    assert!(
        stray_roots.is_empty(),
        "spans outside the question's trace: {stray_roots:?}"
    );
    // No document text in any attribute.
    for span in &trace.spans {
        for value in span.attributes.values() {
            assert!(!value.contains("Fleming"), "document text in {span:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_question_is_one_trace_across_every_process() {
    let receiver = OtlpReceiver::start(true).await.unwrap();
    let cluster = TracedCluster::start(&receiver).await;
    let mut client = cluster.client().await;
    let summary = client
        .ingest(tokio_stream::iter(corpus()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.accepted, corpus().len() as u64);

    // The gateway starts the trace.
    let since = now_nanos();
    let answer = client
        .ask(AskRequest {
            question: QUESTION.to_string(),
            // The whole path, not the answer cache.
            skip_cache: true,
            ..AskRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        answer.sources.contains(&"penicillin".to_string()),
        "{answer:?}"
    );
    wait_for_spans(&receiver, Duration::from_secs(15), |spans| {
        ask_trace_complete(spans, since)
    })
    .await;
    let root = ask_root(&receiver.spans(), since).unwrap();
    assert!(
        root.parent_span_id.is_empty(),
        "the gateway's span is the root"
    );
    assert_one_connected_trace(&receiver, &root, since);

    // A client's own traceparent continues inside Quarry.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let since = now_nanos();
    let mut request = tonic::Request::new(AskRequest {
        question: QUESTION.to_string(),
        skip_cache: true,
        ..AskRequest::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{client_trace}-{client_span}-01")
            .parse()
            .unwrap(),
    );
    client.ask(request).await.unwrap();
    wait_for_spans(&receiver, Duration::from_secs(15), |spans| {
        ask_trace_complete(spans, since)
    })
    .await;
    let root = ask_root(&receiver.spans(), since).unwrap();
    assert_eq!(root.trace_id, client_trace, "the client's trace continues");
    assert_eq!(root.parent_span_id, client_span, "under the client's span");
    let trace = Trace::of(&receiver, client_trace);
    for service in HOPS {
        assert!(
            trace.spans.iter().any(|span| span.service_name == service),
            "no {service} span in the client's trace"
        );
    }
}
