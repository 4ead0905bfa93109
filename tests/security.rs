//! The gateway's front door across processes: every public rpc refuses a missing, wrong,
//! expired or revoked API key; a read key cannot write; keys added and revoked with the CLI
//! take effect within 2 s without a restart or a dropped call; TLS serves the certificate on
//! disk (reloaded when it changes) to clients that trust its CA only; a gateway reachable
//! from other machines needs TLS, keys or `--insecure`; and a full method class is refused
//! at once with a retry pushback; between the roles, mutual TLS checks the cluster's CA
//! and the caller's role, required or permissive, with plaintext probes beside it.

mod support;

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
    }
}

const PUBLIC_RPCS: [&str; 12] = [
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
];

/// Calls one public rpc with `token` and returns its code (OK, or the error's).
async fn call(client: &mut QuarryClient<Channel>, rpc: &str, token: Option<&str>) -> Code {
    let ask = || AskRequest {
        question: "what is quarry".to_string(),
        k: 2,
        mode: SearchMode::Keyword as i32,
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
                },
                token,
            ))
            .await
            .map(|_| ()),
        "GetDocument" => client
            .get_document(with_key(
                GetDocumentRequest {
                    id: "probe".to_string(),
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

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_guard_every_public_rpc_and_rotate_without_a_restart() {
    let directory = tempfile::tempdir().unwrap();
    let keys = directory.path().join("keys.jsonl");
    let read = create_key(&keys, &["--scopes", "read"]);
    let admin = create_key(&keys, &["--scopes", "admin"]);
    let writer = create_key(&keys, &["--scopes", "write"]);
    let revoked = create_key(&keys, &["--scopes", "admin"]);
    quarry_command(&[
        "keys",
        "revoke",
        key_id(&revoked),
        "--file",
        keys.to_str().unwrap(),
    ]);
    let expiring = create_key(&keys, &["--scopes", "admin", "--expires", "1s"]);
    let listed = quarry_command(&["keys", "list", "--file", keys.to_str().unwrap()]);
    assert_eq!(listed.lines().count(), 5, "{listed}");
    assert!(
        !listed.contains(read.rsplit('_').next().unwrap()),
        "a secret was listed"
    );
    let stored = std::fs::read_to_string(&keys).unwrap();
    for token in [&read, &admin, &writer] {
        assert!(
            !stored.contains(token.rsplit('_').next().unwrap()),
            "a secret was stored"
        );
    }

    let data = directory.path().join("data");
    let options = UpOptions {
        args: vec!["--keys-file".into(), keys.to_str().unwrap().into()],
        env: vec![FAST_ENCODER],
        ..UpOptions::default()
    };
    let quarry = QuarryUp::start_with(&data, 2, options).await;
    let mut client = quarry.client().await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // the 1 s key expires

    let unknown = format!("qk_{}_{}", "0".repeat(16), "0".repeat(64));
    let mut wrong_secret = admin.clone();
    wrong_secret.replace_range(wrong_secret.len() - 8.., "00000000");
    for rpc in PUBLIC_RPCS {
        for (what, token) in [
            ("no key", None),
            ("a malformed key", Some("not-a-key")),
            ("an unknown key", Some(unknown.as_str())),
            ("a wrong secret", Some(wrong_secret.as_str())),
            ("an expired key", Some(expiring.as_str())),
            ("a revoked key", Some(revoked.as_str())),
        ] {
            assert_eq!(
                call(&mut client, rpc, token).await,
                Code::Unauthenticated,
                "{rpc} with {what}"
            );
        }
    }

    // A read key may read and not write: nothing it sends is stored.
    let summary = client
        .ingest(with_key(
            tokio_stream::iter(vec![document("a1", "Admin", "written by the admin key")]),
            Some(&admin),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.accepted, 1);
    for rpc in [
        "Ingest",
        "Delete",
        "SubmitWorkflow",
        "CancelWorkflow",
        "ClusterStatus",
    ] {
        assert_eq!(
            call(&mut client, rpc, Some(&read)).await,
            Code::PermissionDenied,
            "{rpc} with a read key"
        );
    }
    for rpc in [
        "Search",
        "Ask",
        "AskStream",
        "GetWorkflow",
        "ListWorkflows",
        "ClusterStatus",
    ] {
        let code = call(&mut client, rpc, Some(&writer)).await;
        assert_eq!(code, Code::PermissionDenied, "{rpc} with a write key");
    }
    let probe = client
        .get_document(with_key(
            GetDocumentRequest { id: "probe".into() },
            Some(&admin),
        ))
        .await
        .unwrap_err();
    assert_eq!(probe.code(), Code::NotFound, "a refused Ingest wrote");
    let hits = client
        .search(with_key(search_request("written admin"), Some(&read)))
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(hits[0].doc_id, "a1", "a refused Delete deleted");
    assert_eq!(
        call(&mut client, "ClusterStatus", Some(&admin)).await,
        Code::Ok
    );
    assert_eq!(call(&mut client, "Search", Some(&read)).await, Code::Ok);

    // Health answers Kubernetes probes without a key.
    let health = tonic_health::pb::health_client::HealthClient::new(quarry.channel().await)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "quarry.v1.Quarry".into(),
        })
        .await;
    assert!(health.is_ok(), "{health:?}");

    // Rotation: a stream opened with the old key outlives its revocation.
    let (sender, receiver) = tokio::sync::mpsc::channel::<Document>(4);
    let mut streaming = client.clone();
    let old = writer.clone();
    let in_flight = tokio::spawn(async move {
        streaming
            .ingest(with_key(ReceiverStream::new(receiver), Some(&old)))
            .await
    });
    sender
        .send(document("r1", "Rotation one", "sent before the revocation"))
        .await
        .unwrap();
    let fresh = create_key(&keys, &["--scopes", "read,write"]);
    let took = within(Duration::from_secs(2), || {
        let mut client = client.clone();
        let fresh = fresh.clone();
        async move { call(&mut client, "Search", Some(&fresh)).await == Code::Ok }
    })
    .await;
    eprintln!("a new key took effect in {took:?}");
    quarry_command(&[
        "keys",
        "revoke",
        key_id(&writer),
        "--file",
        keys.to_str().unwrap(),
    ]);
    let took = within(Duration::from_secs(2), || {
        let mut client = client.clone();
        let writer = writer.clone();
        async move { call(&mut client, "Delete", Some(&writer)).await == Code::Unauthenticated }
    })
    .await;
    eprintln!("a revocation took effect in {took:?}");
    sender
        .send(document("r2", "Rotation two", "sent after the revocation"))
        .await
        .unwrap();
    drop(sender);
    let summary = in_flight
        .await
        .unwrap()
        .expect("the in-flight stream was dropped")
        .into_inner();
    assert_eq!(summary.accepted, 2);
}

/// A CA and a server certificate for localhost and 127.0.0.1 it signed, as PEM files.
struct Pki {
    ca: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(directory: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca = directory.join(format!("{name}-ca.pem"));
        std::fs::write(&ca, issuer.pem()).unwrap();
        Self { ca, issuer }
    }

    /// Writes a server certificate and key over `cert` and `key` (each renamed into place).
    fn issue(&self, cert: &Path, key: &Path) {
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let key_pair = KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key_pair, &self.issuer).unwrap();
        for (path, text) in [(key, key_pair.serialize_pem()), (cert, certificate.pem())] {
            let partial = path.with_extension("partial");
            std::fs::write(&partial, text).unwrap();
            std::fs::rename(&partial, path).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_serves_trusting_clients_only_and_reloads_a_swapped_certificate() {
    let directory = tempfile::tempdir().unwrap();
    let (first, second) = (
        Pki::new(directory.path(), "first"),
        Pki::new(directory.path(), "second"),
    );
    let (cert, key) = (
        directory.path().join("cert.pem"),
        directory.path().join("key.pem"),
    );
    first.issue(&cert, &key);
    let health_port = free_port();
    let options = UpOptions {
        args: vec![
            "--tls-cert".into(),
            cert.to_str().unwrap().into(),
            "--tls-key".into(),
            key.to_str().unwrap().into(),
            "--health-listen".into(),
            format!("127.0.0.1:{health_port}"),
        ],
        env: vec![FAST_ENCODER],
        ca: Some(first.ca.clone()),
    };
    let quarry = QuarryUp::start_with(&directory.path().join("data"), 1, options).await;
    let port = quarry.address.rsplit(':').next().unwrap().to_string();

    // The CLI over https://, trusting the right CA.
    let output = quarry_command(&[
        "search",
        "anything",
        "--addr",
        &quarry.address,
        "--tls-ca",
        first.ca.to_str().unwrap(),
        "--json",
    ]);
    assert!(output.contains("hits"), "{output}");

    // Plaintext, and TLS trusting another CA, get nowhere.
    let plaintext = async {
        let channel = dial(&format!("http://127.0.0.1:{port}"), None).await?;
        Ok::<_, Box<dyn std::error::Error>>(
            QuarryClient::new(channel)
                .search(search_request("x"))
                .await?,
        )
    };
    assert!(plaintext.await.is_err(), "a plaintext client was served");
    assert!(
        dial(&quarry.address, Some(&second.ca)).await.is_err(),
        "a client trusting another CA was served"
    );

    // Kubernetes' probes (plaintext gRPC) get health, and only health, on their own port.
    support::wait_for_health(
        &format!("http://127.0.0.1:{health_port}"),
        "quarry.v1.Quarry",
        Duration::from_secs(5),
    )
    .await;
    let probe_channel = dial(&format!("http://127.0.0.1:{health_port}"), None)
        .await
        .unwrap();
    let unimplemented = QuarryClient::new(probe_channel)
        .search(search_request("x"))
        .await
        .unwrap_err();
    assert_eq!(
        unimplemented.code(),
        Code::Unimplemented,
        "the probe port serves the API"
    );

    // A certificate swapped on disk is served to new connections within 2 s.
    second.issue(&cert, &key);
    let took = within(Duration::from_secs(2), || async {
        match dial(&quarry.address, Some(&second.ca)).await {
            Ok(channel) => QuarryClient::new(channel)
                .search(search_request("x"))
                .await
                .is_ok(),
            Err(_) => false,
        }
    })
    .await;
    eprintln!("the new certificate was served after {took:?}");
    assert!(
        dial(&quarry.address, Some(&first.ca)).await.is_err(),
        "the old certificate is still served"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_on_every_interface_needs_tls_keys_or_insecure() {
    let directory = tempfile::tempdir().unwrap();
    let port = free_port();
    let up = |extra: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_quarry"));
        command
            .args([
                "up",
                "--listen",
                &format!("0.0.0.0:{port}"),
                "--shards",
                "1",
                "--data-dir",
            ])
            .arg(directory.path())
            .args(extra)
            .env("QUARRY_ANALYZER__ENCODER", "hash")
            .env("RUST_LOG", "error")
            .env_remove("QUARRY_CONFIG");
        command
    };
    let refused = up(&[]).output().unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("--insecure") && !said.contains("--advertise"),
        "{said}"
    );

    let mut open = up(&["--insecure"]).spawn().unwrap();
    support::wait_for_health(
        &format!("http://127.0.0.1:{port}"),
        "quarry.v1.Quarry",
        Duration::from_secs(60),
    )
    .await;
    let channel = dial(&format!("http://127.0.0.1:{port}"), None)
        .await
        .unwrap();
    let searched = QuarryClient::new(channel)
        .search(search_request("anything"))
        .await;
    let _ = open.kill();
    let _ = open.wait();
    assert!(searched.is_ok(), "{searched:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_class_is_refused_at_once_and_an_idle_ingest_stream_is_closed() {
    let directory = tempfile::tempdir().unwrap();
    let options = UpOptions {
        env: vec![
            FAST_ENCODER,
            ("QUARRY_ADMISSION__INGEST", "1"),
            ("QUARRY_GATEWAY__INGEST_IDLE_MS", "1500"),
        ],
        ..UpOptions::default()
    };
    let quarry = QuarryUp::start_with(&directory.path().join("data"), 1, options).await;
    let mut client = quarry.client().await;

    let (sender, receiver) = tokio::sync::mpsc::channel::<Document>(4);
    let mut streaming = client.clone();
    let held = tokio::spawn(async move { streaming.ingest(ReceiverStream::new(receiver)).await });
    sender
        .send(document("held", "Held", "holds the only ingest slot"))
        .await
        .unwrap();
    // The slot is taken once the stream's first document is through.
    within(Duration::from_secs(10), || {
        let mut client = client.clone();
        async move {
            client
                .get_document(GetDocumentRequest { id: "held".into() })
                .await
                .is_ok()
                || call(&mut client, "Delete", None).await == Code::ResourceExhausted
        }
    })
    .await;

    let refused = client
        .delete(DeleteRequest {
            ids: vec!["held".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let pushback: u64 = refused
        .metadata()
        .get("grpc-retry-pushback-ms")
        .expect("a pushback")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(pushback >= 10, "{pushback}");
    assert!(refused.get_details_retry_info().is_some(), "no RetryInfo");
    assert_eq!(
        call(&mut client, "Search", None).await,
        Code::Ok,
        "another class was refused"
    );

    // The held stream sends nothing more: it is closed after 1.5 s idle, freeing the slot.
    let closed = held.await.unwrap().unwrap_err();
    assert_eq!(closed.code(), Code::DeadlineExceeded, "{closed:?}");
    drop(sender);
    let deleted = client
        .delete(DeleteRequest {
            ids: vec!["held".into()],
        })
        .await;
    assert!(deleted.is_ok(), "{deleted:?}");
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

/// A channel to a role at `address` over mutual TLS, presenting `identity` (or none).
async fn dial_role(
    address: &str,
    role: &str,
    ca: &Path,
    identity: Option<&(PathBuf, PathBuf)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(ca).unwrap(),
        ))
        .domain_name(format!("{role}.quarry.quarry"));
    if let Some((cert, key)) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    Channel::from_shared(address.replace("http://", "https://"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

async fn shard_info(channel: Channel) -> Result<(), tonic::Status> {
    RetrieverClient::new(channel)
        .shard_info(ShardInfoRequest {})
        .await
        .map(drop)
}

async fn shard_delete(channel: Channel) -> Result<(), tonic::Status> {
    RetrieverClient::new(channel)
        .delete(ShardDeleteRequest {
            ids: vec!["a1".into()],
            version: 0,
        })
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_between_roles_checks_the_ca_and_the_callers_role() {
    let directory = tempfile::tempdir().unwrap();
    let certs = directory.path().join("certs");
    let ca = make_ca(directory.path(), "ca");
    let other_ca = make_ca(directory.path(), "other-ca");
    // `quarry up` runs every role in one process: one certificate naming them all.
    let node = issue(&ca, &certs, "node", "all");
    let gateway = issue(&ca, &certs, "gateway", "gateway");
    let evaluator = issue(&ca, &certs, "evaluator", "evaluator");
    let stranger = issue(&other_ca, &certs, "stranger", "gateway");
    let ca_pem = ca.join("ca.pem");

    for mode in ["required", "permissive"] {
        let env = vec![
            FAST_ENCODER,
            ("QUARRY_INTERNAL_TLS__MODE", mode),
            ("QUARRY_INTERNAL_TLS__CA", ca_pem.to_str().unwrap()),
            ("QUARRY_INTERNAL_TLS__CERT", node.0.to_str().unwrap()),
            ("QUARRY_INTERNAL_TLS__KEY", node.1.to_str().unwrap()),
        ];
        let options = UpOptions {
            env,
            ..UpOptions::default()
        };
        let quarry = QuarryUp::start_with(&directory.path().join(mode), 2, options).await;
        let mut client = quarry.client().await;

        // Every hop of an Ask goes over mutual TLS (or, permissive, may).
        let summary = client
            .ingest(tokio_stream::iter(vec![document(
                "a1",
                "Penicillin",
                "Fleming discovered penicillin",
            )]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(summary.accepted, 1, "{mode}");
        let answer = client
            .ask(AskRequest {
                question: "who discovered penicillin".into(),
                k: 2,
                mode: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.sources, ["a1"], "{mode}");

        let status = client
            .cluster_status(ClusterStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        let retriever = status
            .members
            .iter()
            .find(|member| member.role == "retriever")
            .unwrap()
            .address
            .clone();

        // A gateway's certificate reads and writes; an evaluator's may not touch a retriever.
        let as_gateway = dial_role(&retriever, "retriever", &ca_pem, Some(&gateway))
            .await
            .unwrap();
        assert!(shard_info(as_gateway).await.is_ok(), "{mode}");
        let as_evaluator = dial_role(&retriever, "retriever", &ca_pem, Some(&evaluator))
            .await
            .unwrap();
        let refused = shard_delete(as_evaluator.clone()).await.unwrap_err();
        assert_eq!(
            refused.code(),
            Code::PermissionDenied,
            "{mode}: {refused:?}"
        );
        assert_eq!(
            shard_info(as_evaluator).await.unwrap_err().code(),
            Code::PermissionDenied
        );
        // A certificate from another CA never gets through the handshake.
        let foreign = async {
            let channel = dial_role(&retriever, "retriever", &ca_pem, Some(&stranger)).await?;
            Ok::<_, Box<dyn std::error::Error>>(shard_info(channel).await?)
        };
        assert!(
            foreign.await.is_err(),
            "{mode}: a certificate from another CA was served"
        );

        let plaintext = async {
            let channel = dial(&retriever, None).await?;
            Ok::<_, Box<dyn std::error::Error>>(shard_info(channel).await?)
        };
        let anonymous = async {
            let channel = dial_role(&retriever, "retriever", &ca_pem, None).await?;
            Ok::<_, Box<dyn std::error::Error>>(shard_info(channel).await?)
        };
        match mode {
            "required" => {
                assert!(plaintext.await.is_err(), "a plaintext call was served");
                assert!(
                    anonymous.await.is_err(),
                    "a call without a certificate was served"
                );
            }
            _ => {
                // The rolling step: members not yet on TLS still get through.
                assert!(plaintext.await.is_ok(), "permissive refused plaintext");
                assert!(
                    anonymous.await.is_ok(),
                    "permissive refused TLS without a certificate"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_role_that_requires_mutual_tls_still_answers_plaintext_probes() {
    let directory = tempfile::tempdir().unwrap();
    let ca = make_ca(directory.path(), "ca");
    let node = issue(&ca, &directory.path().join("certs"), "analyzer", "analyzer");
    let (port, health_port) = (free_port(), free_port());
    let mut analyzer = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args([
            "serve",
            "analyzer",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("QUARRY_ANALYZER__ENCODER", "hash")
        .env("QUARRY_INTERNAL_TLS__MODE", "required")
        .env("QUARRY_INTERNAL_TLS__CA", ca.join("ca.pem"))
        .env("QUARRY_INTERNAL_TLS__CERT", &node.0)
        .env("QUARRY_INTERNAL_TLS__KEY", &node.1)
        .env(
            "QUARRY_INTERNAL_TLS__HEALTH_LISTEN",
            format!("127.0.0.1:{health_port}"),
        )
        .env("RUST_LOG", "error")
        .env_remove("QUARRY_CONFIG")
        .spawn()
        .unwrap();
    support::wait_for_health(
        &format!("http://127.0.0.1:{health_port}"),
        "quarry.v1.Analyzer",
        Duration::from_secs(30),
    )
    .await;
    let plaintext = async {
        let channel = dial(&format!("http://127.0.0.1:{port}"), None).await?;
        let request = tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        };
        Ok::<_, Box<dyn std::error::Error>>(
            tonic_health::pb::health_client::HealthClient::new(channel)
                .check(request)
                .await?,
        )
    };
    let served = plaintext.await;
    let _ = analyzer.kill();
    let _ = analyzer.wait();
    assert!(served.is_err(), "the mutual-TLS port answered plaintext");
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_kept_in_etcd_over_tls_take_effect_without_a_restart() {
    let directory = tempfile::tempdir().unwrap();
    let ca = make_ca(directory.path(), "ca");
    let certs = directory.path().join("certs");
    quarry_command(&[
        "certs",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--out",
        certs.to_str().unwrap(),
        "--name",
        "etcd",
        "--san",
        "127.0.0.1,localhost",
    ]);
    quarry_command(&[
        "certs",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--out",
        certs.to_str().unwrap(),
        "--name",
        "client",
        "--san",
        "quarry-client",
    ]);
    let etcd = support::etcd::Etcd::start_tls(
        ca.join("ca.pem"),
        certs.join("etcd.pem"),
        certs.join("etcd-key.pem"),
    );
    let ca_pem = ca.join("ca.pem");
    let (client_cert, client_key) = (certs.join("client.pem"), certs.join("client-key.pem"));
    let etcd_tls = [
        ("QUARRY_DISCOVERY__ETCD_CA", ca_pem.to_str().unwrap()),
        ("QUARRY_DISCOVERY__ETCD_CERT", client_cert.to_str().unwrap()),
        ("QUARRY_DISCOVERY__ETCD_KEY", client_key.to_str().unwrap()),
    ];
    let quarry = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_quarry"))
            .args(args)
            .envs(etcd_tls)
            .env_remove("QUARRY_CONFIG")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "quarry {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    // Without the client certificate etcd refuses; with it the cluster is created.
    let refused = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args([
            "cluster",
            "create",
            "--etcd",
            &etcd.endpoint,
            "--shards",
            "1",
        ])
        .env("QUARRY_DISCOVERY__ETCD_CA", &ca_pem)
        .env_remove("QUARRY_CONFIG")
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "etcd took a client without a certificate"
    );
    quarry(&[
        "cluster",
        "create",
        "--etcd",
        &etcd.endpoint,
        "--shards",
        "1",
    ]);
    let first = quarry(&[
        "keys",
        "create",
        "--etcd",
        &etcd.endpoint,
        "--scopes",
        "read",
    ]);

    let mut env: Vec<(&str, &str)> = etcd_tls.to_vec();
    env.extend([FAST_ENCODER, ("QUARRY_AUTH__ETCD_KEYS", "true")]);
    let etcd_args = vec!["--etcd".to_string(), etcd.endpoint.clone()];
    let data = directory.path().join("shard");
    let mut retriever_args = etcd_args.clone();
    retriever_args.extend([
        "--data-dir".to_string(),
        data.to_str().unwrap().to_string(),
        "--shard".into(),
        "0".into(),
    ]);
    let _analyzer = support::Served::start_with_env("analyzer", &etcd_args, &env).await;
    let _retriever = support::Served::start_with_env("retriever", &retriever_args, &env).await;
    let gateway = support::Served::start_with_env("gateway", &etcd_args, &env).await;
    let mut client = QuarryClient::new(dial(&gateway.address, None).await.unwrap());

    let searched = within(Duration::from_secs(10), || {
        let (mut client, first) = (client.clone(), first.clone());
        async move { call(&mut client, "Search", Some(&first)).await == Code::Ok }
    })
    .await;
    eprintln!("searched with a key from etcd after {searched:?}");
    assert_eq!(
        call(&mut client, "Search", None).await,
        Code::Unauthenticated
    );

    let second = quarry(&[
        "keys",
        "create",
        "--etcd",
        &etcd.endpoint,
        "--scopes",
        "read",
    ]);
    let took = within(Duration::from_secs(2), || {
        let (mut client, second) = (client.clone(), second.clone());
        async move { call(&mut client, "Search", Some(&second)).await == Code::Ok }
    })
    .await;
    eprintln!("a key added in etcd took effect in {took:?}");
    quarry(&["keys", "revoke", key_id(&first), "--etcd", &etcd.endpoint]);
    let took = within(Duration::from_secs(2), || {
        let (mut client, first) = (client.clone(), first.clone());
        async move { call(&mut client, "Search", Some(&first)).await == Code::Unauthenticated }
    })
    .await;
    eprintln!("a key revoked in etcd took effect in {took:?}");
    assert_eq!(call(&mut client, "Search", Some(&second)).await, Code::Ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn members_and_the_cli_reach_an_etcd_with_authentication_as_a_user() {
    let etcd = support::etcd::Etcd::start();
    let mut admin = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
        .await
        .unwrap();
    admin.user_add("root", "root-password", None).await.unwrap();
    let _ = admin.role_add("root").await;
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();

    let run = |args: &[&str], user: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_quarry"));
        command.args(args).env_remove("QUARRY_CONFIG");
        if user {
            command
                .env("QUARRY_DISCOVERY__ETCD_USER", "root")
                .env("QUARRY_DISCOVERY__ETCD_PASSWORD", "root-password");
        }
        command.output().unwrap()
    };
    let create = [
        "cluster",
        "create",
        "--etcd",
        etcd.endpoint.as_str(),
        "--shards",
        "1",
    ];
    assert!(
        !run(&create, false).status.success(),
        "etcd took a call without its user"
    );
    let created = run(&create, true);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let key = run(
        &[
            "keys",
            "create",
            "--etcd",
            &etcd.endpoint,
            "--scopes",
            "read",
        ],
        true,
    );
    assert!(
        key.status.success(),
        "{}",
        String::from_utf8_lossy(&key.stderr)
    );

    // A member registers itself (lease, keep-alive, watch) as that user.
    let env = [
        FAST_ENCODER,
        ("QUARRY_DISCOVERY__ETCD_USER", "root"),
        ("QUARRY_DISCOVERY__ETCD_PASSWORD", "root-password"),
    ];
    let args = vec!["--etcd".to_string(), etcd.endpoint.clone()];
    let analyzer = support::Served::start_with_env("analyzer", &args, &env).await;
    let gateway = support::Served::start_with_env("gateway", &args, &env).await;
    let status = QuarryClient::new(dial(&gateway.address, None).await.unwrap())
        .cluster_status(ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        status
            .members
            .iter()
            .any(|member| member.address == analyzer.address),
        "{status:?}"
    );
}
