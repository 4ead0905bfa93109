//! The gateway's front door across processes: every public rpc refuses a missing, wrong,
//! expired or revoked API key; a read key cannot write; keys added and revoked with the CLI
//! take effect within 2 s without a restart or a dropped call; TLS serves the certificate on
//! disk (reloaded when it changes) to clients that trust its CA only; a gateway reachable
//! from other machines needs TLS, keys or `--insecure`; and a full method class is refused
//! at once with a retry pushback.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use quarry_proto::v1::quarry_client::QuarryClient;
use quarry_proto::v1::{
    AskRequest, CancelWorkflowRequest, ClusterStatusRequest, DeleteRequest, Document,
    GetDocumentRequest, GetWorkflowRequest, ListWorkflowsRequest, SearchMode, SearchRequest,
    SubmitWorkflowRequest, WatchWorkflowRequest,
};
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
