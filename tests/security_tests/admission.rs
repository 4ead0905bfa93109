//! Admission: a full method class is refused at once with a pushback; an idle ingest
//! stream is closed and frees its slot.

use super::*;

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
                .get_document(GetDocumentRequest {
                    id: "held".into(),
                    ..GetDocumentRequest::default()
                })
                .await
                .is_ok()
                || call(&mut client, "Delete", None).await == Code::ResourceExhausted
        }
    })
    .await;

    let refused = client
        .delete(DeleteRequest {
            ids: vec!["held".into()],
            ..DeleteRequest::default()
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
            ..DeleteRequest::default()
        })
        .await;
    assert!(deleted.is_ok(), "{deleted:?}");
}
