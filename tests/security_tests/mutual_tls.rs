//! Mutual TLS between the roles: the cluster's CA and the caller's role are checked,
//! required or permissive, with plaintext probes beside it.

use super::*;

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
        .shard_info(ShardInfoRequest {
            ..ShardInfoRequest::default()
        })
        .await
        .map(drop)
}

async fn shard_delete(channel: Channel) -> Result<(), tonic::Status> {
    RetrieverClient::new(channel)
        .delete(ShardDeleteRequest {
            ids: vec!["a1".into()],
            version: 0,
            ..ShardDeleteRequest::default()
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
                ..AskRequest::default()
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
