//! The gateway's front door across processes: every public rpc refuses a missing, wrong,
//! expired or revoked API key; a read key cannot write; keys added and revoked with the CLI
//! take effect within 2 s without a restart or a dropped call; TLS serves the certificate on
//! disk (reloaded when it changes) to clients that trust its CA only; a gateway reachable
//! from other machines needs TLS, keys or `--insecure`; and a full method class is refused
//! at once with a retry pushback; between the roles, mutual TLS checks the cluster's CA
//! and the caller's role, required or permissive, with plaintext probes beside it.
//!
//! One test binary, a module per concern: `api_keys`, `tls`, `admission`, `mutual_tls`,
//! `etcd`; the helpers they share are here.

#[path = "../support/mod.rs"]
mod support;

mod admission;
mod api_keys;
mod etcd;
mod mutual_tls;
mod tls;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use quarry_proto::v1::quarry_client::QuarryClient;
use quarry_proto::v1::retriever_client::RetrieverClient;
use quarry_proto::v1::{
    AskRequest, CancelWorkflowRequest, ClusterStatusRequest, DeleteRequest, Document,
    GetDocumentRequest, GetWorkflowRequest, ListWorkflowsRequest, SearchMode, SearchRequest,
    SubmitWorkflowRequest, WatchWorkflowRequest,
};
use quarry_proto::v1::{
    CreateCollectionRequest, DeleteCollectionRequest, GetCollectionRequest, ListCollectionsRequest,
};
use quarry_proto::v1::{ShardDeleteRequest, ShardInfoRequest};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use support::{dial, document, free_port, quarry_command, QuarryUp, UpOptions};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_types::StatusExt;

const FAST_ENCODER: (&str, &str) = ("QUARRY_ANALYZER__ENCODER", "hash");

fn with_key<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

fn search_request(query: &str) -> SearchRequest {
    SearchRequest {
        query: query.to_string(),
        k: 5,
        mode: SearchMode::Keyword as i32,
        fusion: 0,
        ..SearchRequest::default()
    }
}

const PUBLIC_RPCS: [&str; 16] = [
    "Ask",
    "AskStream",
    "Search",
    "Ingest",
    "Delete",
    "GetDocument",
    "ClusterStatus",
    "SubmitWorkflow",
    "GetWorkflow",
    "WatchWorkflow",
    "CancelWorkflow",
    "ListWorkflows",
    "CreateCollection",
    "DeleteCollection",
    "ListCollections",
    "GetCollection",
];

/// Calls one public rpc with `token` and returns its code (OK, or the error's).
async fn call(client: &mut QuarryClient<Channel>, rpc: &str, token: Option<&str>) -> Code {
    let ask = || AskRequest {
        question: "what is quarry".to_string(),
        k: 2,
        mode: SearchMode::Keyword as i32,
        ..AskRequest::default()
    };
    let outcome = match rpc {
        "Ask" => client.ask(with_key(ask(), token)).await.map(|_| ()),
        "AskStream" => client.ask_stream(with_key(ask(), token)).await.map(|_| ()),
        "Search" => client
            .search(with_key(search_request("quarry"), token))
            .await
            .map(|_| ()),
        "Ingest" => {
            let documents = tokio_stream::iter(vec![document("probe", "Probe", "a probe")]);
            client.ingest(with_key(documents, token)).await.map(|_| ())
        }
        "Delete" => client
            .delete(with_key(
                DeleteRequest {
                    ids: vec!["probe".to_string()],
                    ..DeleteRequest::default()
                },
                token,
            ))
            .await
            .map(|_| ()),
        "GetDocument" => client
            .get_document(with_key(
                GetDocumentRequest {
                    id: "probe".to_string(),
                    ..GetDocumentRequest::default()
                },
                token,
            ))
            .await
            .map(|_| ()),
        "ClusterStatus" => client
            .cluster_status(with_key(ClusterStatusRequest {}, token))
            .await
            .map(|_| ()),
        "SubmitWorkflow" => client
            .submit_workflow(with_key(SubmitWorkflowRequest::default(), token))
            .await
            .map(|_| ()),
        "GetWorkflow" => client
            .get_workflow(with_key(
                GetWorkflowRequest {
                    id: "none".to_string(),
                },
                token,
            ))
            .await
            .map(|_| ()),
        "WatchWorkflow" => client
            .watch_workflow(with_key(
                WatchWorkflowRequest {
                    id: "none".to_string(),
                },
                token,
            ))
            .await
            .map(|_| ()),
        "CancelWorkflow" => client
            .cancel_workflow(with_key(
                CancelWorkflowRequest {
                    id: "none".to_string(),
                },
                token,
            ))
            .await
            .map(|_| ()),
        "ListWorkflows" => client
            .list_workflows(with_key(ListWorkflowsRequest::default(), token))
            .await
            .map(|_| ()),
        "CreateCollection" => client
            .create_collection(with_key(
                CreateCollectionRequest {
                    name: "probe".to_string(),
                    ..CreateCollectionRequest::default()
                },
                token,
            ))
            .await
            .map(|_| ()),
        "DeleteCollection" => client
            .delete_collection(with_key(
                DeleteCollectionRequest {
                    name: "probe".to_string(),
                },
                token,
            ))
            .await
            .map(|_| ()),
        "ListCollections" => client
            .list_collections(with_key(ListCollectionsRequest {}, token))
            .await
            .map(|_| ()),
        "GetCollection" => client
            .get_collection(with_key(
                GetCollectionRequest {
                    name: "default".to_string(),
                },
                token,
            ))
            .await
            .map(|_| ()),
        other => panic!("no rpc {other}"),
    };
    match outcome {
        Ok(()) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// `quarry keys create --file <keys> <extra>`: the printed token.
fn create_key(keys: &Path, extra: &[&str]) -> String {
    let mut args = vec!["keys", "create", "--file", keys.to_str().unwrap()];
    args.extend_from_slice(extra);
    let token = quarry_command(&args).trim().to_string();
    assert!(token.starts_with("qk_"), "{token}");
    token
}

fn key_id(token: &str) -> &str {
    token.split('_').nth(1).unwrap()
}

/// Polls `check` until it holds; returns how long that took, failing after `patience`.
async fn within<F, Fut>(patience: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < patience, "not within {patience:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `quarry certs ca` into `directory/name`.
fn make_ca(directory: &Path, name: &str) -> PathBuf {
    let out = directory.join(name);
    quarry_command(&["certs", "ca", "--out", out.to_str().unwrap()]);
    out
}

/// `quarry certs issue`: `(cert, key)` naming `roles` of cluster `quarry`.
fn issue(ca: &Path, out: &Path, name: &str, roles: &str) -> (PathBuf, PathBuf) {
    quarry_command(&[
        "certs",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--name",
        name,
        "--roles",
        roles,
    ]);
    (
        out.join(format!("{name}.pem")),
        out.join(format!("{name}-key.pem")),
    )
}
