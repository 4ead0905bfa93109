//! API keys: every public rpc refuses a bad key; a read key cannot write; keys added and
//! revoked with the CLI take effect within 2 s, with no restart and no dropped call.

use super::*;

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
        "CreateCollection",
        "DeleteCollection",
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
        "ListCollections",
        "GetCollection",
    ] {
        let code = call(&mut client, rpc, Some(&writer)).await;
        assert_eq!(code, Code::PermissionDenied, "{rpc} with a write key");
    }
    let probe = client
        .get_document(with_key(
            GetDocumentRequest {
                id: "probe".into(),
                ..GetDocumentRequest::default()
            },
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

#[tokio::test(flavor = "multi_thread")]
async fn a_key_limited_to_collections_reaches_only_those() {
    let directory = tempfile::tempdir().unwrap();
    let keys = directory.path().join("keys.jsonl");
    let admin = create_key(&keys, &["--scopes", "admin"]);
    let hr_only = create_key(&keys, &["--scopes", "read,write", "--collections", "hr"]);
    let options = UpOptions {
        args: vec!["--keys-file".into(), keys.to_str().unwrap().into()],
        env: vec![FAST_ENCODER],
        ..UpOptions::default()
    };
    let quarry = QuarryUp::start_with(&directory.path().join("data"), 2, options).await;
    let mut client = quarry.client().await;
    for name in ["hr", "legal"] {
        let request = CreateCollectionRequest {
            name: name.to_string(),
            ..CreateCollectionRequest::default()
        };
        client
            .create_collection(with_key(request, Some(&admin)))
            .await
            .unwrap();
    }
    let in_collection = |collection: &str| Document {
        collection: collection.to_string(),
        ..document("h1", "Handbook", "the staff handbook")
    };
    let summary = client
        .ingest(with_key(
            tokio_stream::iter(vec![
                in_collection("hr"),
                in_collection("legal"),
                in_collection(""),
            ]),
            Some(&hr_only),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.accepted, 1, "{:?}", summary.errors);
    assert!(summary
        .errors
        .iter()
        .all(|error| error.code == "PERMISSION_DENIED" && error.field == "collection"));
    let search = |collection: &str| SearchRequest {
        collection: collection.to_string(),
        ..search_request("handbook")
    };
    let hits = client
        .search(with_key(search("hr"), Some(&hr_only)))
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(hits[0].doc_id, "h1");
    for collection in ["legal", "", "default"] {
        let refused = client
            .search(with_key(search(collection), Some(&hr_only)))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{collection:?}");
    }
    let listed: Vec<String> = client
        .list_collections(with_key(ListCollectionsRequest {}, Some(&hr_only)))
        .await
        .unwrap()
        .into_inner()
        .collections
        .into_iter()
        .map(|collection| collection.name)
        .collect();
    assert_eq!(listed, ["hr"]);
}
