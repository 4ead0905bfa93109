//! `quarry up` as a separate process: documents ingested over gRPC are found, cited, kept
//! across a restart, and bad input is refused with INVALID_ARGUMENT naming the field.

mod support;

use quarry_proto::v1::quarry_client::QuarryClient;
use quarry_proto::v1::{
    ask_chunk, AskRequest, ClusterStatusRequest, DeleteRequest, Document, GetDocumentRequest,
    SearchMode, SearchRequest,
};
use support::{corpus, document, QuarryUp};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

fn search(query: &str, k: u32) -> SearchRequest {
    SearchRequest {
        query: query.to_string(),
        k,
        mode: SearchMode::Keyword as i32,
        fusion: 0,
        ..SearchRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_search_ask_delete_and_restart() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut quarry = QuarryUp::start(data_dir.path(), 3).await;
    let mut client = quarry.client().await;

    // Ingest: the good documents are accepted, the bad one is named with its field.
    let mut documents = corpus();
    documents.insert(3, document("no-text", "Empty", "   "));
    let summary = client
        .ingest(tokio_stream::iter(documents))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.accepted, corpus().len() as u64);
    assert_eq!(summary.rejected, 1);
    assert_eq!(summary.errors[0].index, 3);
    assert_eq!(summary.errors[0].id, "no-text");
    assert_eq!(summary.errors[0].code, "INVALID_ARGUMENT");
    assert_eq!(summary.errors[0].field, "text");

    // Search ranks the right document first, with every shard answering.
    let response = client
        .search(search("who discovered penicillin", 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.hits[0].doc_id, "penicillin");
    assert_eq!(
        (
            response.shards_total,
            response.shards_answered,
            response.partial
        ),
        (3, 3, false)
    );
    let response = client
        .search(search("gravitational pull of the moon", 5))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.hits[0].doc_id, "tides");
    let hybrid = client
        .search(SearchRequest {
            mode: SearchMode::Hybrid as i32,
            ..search("gas giant with many moons", 5)
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        hybrid
            .strategy
            .starts_with("hybrid: normalised weighted sum"),
        "{}",
        hybrid.strategy
    );
    assert_eq!(hybrid.hits[0].doc_id, "jupiter");
    let semantic = client
        .search(SearchRequest {
            mode: SearchMode::Semantic as i32,
            ..search("gas giant with many moons", 3)
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        semantic.strategy.starts_with("semantic"),
        "{}",
        semantic.strategy
    );
    assert_eq!(semantic.hits[0].doc_id, "jupiter");
    assert!(semantic.hits[0].score > 0.0 && semantic.hits[0].score <= 1.0001);
    let error = client
        .search(SearchRequest {
            fusion: 9,
            ..search("moons", 3)
        })
        .await
        .unwrap_err();
    assert!(error.message().starts_with("fusion"), "{}", error.message());

    // Ask answers from the right document and cites it.
    let answer = client
        .ask(AskRequest {
            question: "How does insulin affect blood glucose?".to_string(),
            k: 3,
            mode: 0,
            ..AskRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.sources.first().map(String::as_str),
        Some("insulin"),
        "{answer:?}"
    );
    assert!(answer.answer.contains("[1]"), "{}", answer.answer);
    let retrieval = answer.retrieval.clone().unwrap();
    assert_eq!(retrieval.passages[0].doc_id, "insulin");
    assert_eq!(retrieval.shards_answered, 3);
    assert!(
        retrieval.strategy.starts_with("analytical") || retrieval.strategy.starts_with("factual"),
        "{}",
        retrieval.strategy
    );
    let evaluation = answer.evaluation.clone().unwrap();
    // `quarry up` runs MiniLM, so the heuristic compares sentence embeddings too.
    assert_eq!(evaluation.evaluator, "heuristic (embeddings)");
    assert!(evaluation.groundedness > 0.9, "{evaluation:?}");
    assert!(!answer.low_confidence);
    assert!(answer.analysis.is_some());

    // A question the corpus cannot answer carries the low-confidence notice.
    let unanswerable = client
        .ask(AskRequest {
            question: "What is the capital of Mongolia?".to_string(),
            k: 3,
            mode: 0,
            ..AskRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(unanswerable.low_confidence, "{unanswerable:?}");
    assert!(
        unanswerable.answer.contains("Low confidence"),
        "{}",
        unanswerable.answer
    );

    // The stream's pieces add up to the answer.
    let mut stream = client
        .ask_stream(AskRequest {
            question: "Who discovered penicillin?".to_string(),
            k: 3,
            mode: 0,
            ..AskRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut streamed = String::new();
    let mut done = None;
    while let Some(chunk) = stream.next().await {
        match chunk.unwrap().chunk.unwrap() {
            ask_chunk::Chunk::Token(token) => streamed.push_str(&token),
            ask_chunk::Chunk::Done(response) => done = Some(response),
        }
    }
    let done = done.expect("a final message");
    assert!(
        done.answer.starts_with(&streamed) && !streamed.is_empty(),
        "{streamed:?} vs {:?}",
        done.answer
    );
    assert_eq!(done.sources[0], "penicillin");

    // Re-ingesting an id replaces it; delete removes; GetDocument says NOT_FOUND after.
    client
        .ingest(tokio_stream::iter(vec![document(
            "volcano",
            "Volcanoes",
            "Stratovolcanoes are tall cones built by many layers of hardened lava and tephra.",
        )]))
        .await
        .unwrap();
    let fetched = client
        .get_document(GetDocumentRequest {
            id: "volcano".into(),
            ..GetDocumentRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(fetched.text.starts_with("Stratovolcanoes"));
    let deleted = client
        .delete(DeleteRequest {
            ids: vec!["sourdough".into(), "nope".into()],
            ..DeleteRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 1);
    let missing = client
        .get_document(GetDocumentRequest {
            id: "sourdough".into(),
            ..GetDocumentRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let status = client
        .cluster_status(ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.num_docs, corpus().len() as u64 - 1);
    assert_eq!(
        status
            .members
            .iter()
            .filter(|m| m.role == "retriever")
            .count(),
        3
    );
    assert!(status.members.iter().all(|member| member.ready));

    // A graceful stop, then a restart on the same data: everything acknowledged is there.
    drop(client);
    let exit = quarry.stop();
    assert!(exit.success(), "quarry exited with {exit:?}");
    let restarted = QuarryUp::start(data_dir.path(), 3).await;
    let mut client = restarted.client().await;
    let response = client
        .search(search("who discovered penicillin", 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.hits[0].doc_id, "penicillin");
    let status = client
        .cluster_status(ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.num_docs, corpus().len() as u64 - 1);
    let fetched = client
        .get_document(GetDocumentRequest {
            id: "volcano".into(),
            ..GetDocumentRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(fetched.text.starts_with("Stratovolcanoes"));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let data_dir = tempfile::tempdir().unwrap();
    let quarry = QuarryUp::start(data_dir.path(), 2).await;
    let mut client = quarry.client().await;
    client.ingest(tokio_stream::iter(corpus())).await.unwrap();

    let cases: Vec<(&str, SearchRequest)> = vec![
        ("query", search("", 10)),
        ("query", search(" \n\t ", 10)),
        ("query", search(&"long ".repeat(2000), 10)),
        ("k", search("moon", 1001)),
        (
            "mode",
            SearchRequest {
                mode: 42,
                ..search("moon", 10)
            },
        ),
    ];
    for (field, request) in cases {
        let error = client.search(request).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
        assert!(
            error.message().starts_with(field),
            "{field}: {}",
            error.message()
        );
    }
    let error = client
        .ask(AskRequest {
            question: "  ".into(),
            k: 0,
            mode: 0,
            ..AskRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().starts_with("question"),
        "{}",
        error.message()
    );
    let error = client
        .ask(AskRequest {
            question: "moon".into(),
            k: 5000,
            mode: 0,
            ..AskRequest::default()
        })
        .await
        .unwrap_err();
    assert!(error.message().starts_with("k"), "{}", error.message());
    let error = client
        .get_document(GetDocumentRequest {
            id: "".into(),
            ..GetDocumentRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().starts_with("id"));
    let error = client
        .delete(DeleteRequest {
            ids: vec![],
            ..DeleteRequest::default()
        })
        .await
        .unwrap_err();
    assert!(error.message().starts_with("ids"));

    let oversized = Document {
        id: "big".into(),
        text: "word ".repeat(300_000),
        ..Document::default()
    };
    let no_id = document("", "No id", "Some text");
    let summary = client
        .ingest(tokio_stream::iter(vec![no_id, oversized]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.accepted, 0);
    let fields: Vec<&str> = summary
        .errors
        .iter()
        .map(|error| error.field.as_str())
        .collect();
    assert_eq!(fields, ["id", "text"]);
    assert!(summary
        .errors
        .iter()
        .all(|error| error.code == "INVALID_ARGUMENT"));

    // Over the transport's message limit: refused, and the server keeps serving.
    let huge = Document {
        id: "huge".into(),
        text: "x".repeat(20 * 1024 * 1024),
        ..Document::default()
    };
    let error = client
        .ingest(tokio_stream::iter(vec![huge]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error.code(),
            Code::ResourceExhausted | Code::OutOfRange | Code::InvalidArgument
        ),
        "{error:?}"
    );
    let response = client
        .search(search("penicillin", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.hits[0].doc_id, "penicillin");

    // Workflows go through the gateway to the in-process scheduler (file store).
    let error = client
        .get_workflow(quarry_proto::v1::GetWorkflowRequest { id: "w".into() })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    let submitted = client
        .submit_workflow(quarry_proto::v1::SubmitWorkflowRequest {
            name: "noops".into(),
            description: String::new(),
            steps: vec![
                quarry_proto::v1::StepSpec {
                    id: "a".into(),
                    role: quarry_proto::v1::AgentRole::Noop as i32,
                    ..Default::default()
                },
                quarry_proto::v1::StepSpec {
                    id: "b".into(),
                    role: quarry_proto::v1::AgentRole::Noop as i32,
                    depends_on: vec!["a".into()],
                    ..Default::default()
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = client
        .watch_workflow(quarry_proto::v1::WatchWorkflowRequest {
            id: submitted.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(event) = events.message().await.unwrap() {
        last = event.workflow;
    }
    assert_eq!(
        last.unwrap().state(),
        quarry_proto::v1::WorkflowState::Completed
    );
    let listed = client
        .list_workflows(quarry_proto::v1::ListWorkflowsRequest {})
        .await
        .unwrap()
        .into_inner()
        .workflows;
    assert!(
        listed.iter().any(|workflow| workflow.id == submitted.id
            && workflow.state() == quarry_proto::v1::WorkflowState::Completed),
        "{listed:?}"
    );
    let error = client
        .submit_workflow(quarry_proto::v1::SubmitWorkflowRequest {
            name: "bad".into(),
            description: String::new(),
            steps: vec![quarry_proto::v1::StepSpec {
                id: "a".into(),
                role: quarry_proto::v1::AgentRole::Noop as i32,
                depends_on: vec!["nope".into()],
                ..Default::default()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("step \"a\""), "{error:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_reflection_are_served() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let data_dir = tempfile::tempdir().unwrap();
    let quarry = QuarryUp::start(data_dir.path(), 1).await;
    let mut reflection = ServerReflectionClient::new(quarry.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    assert!(names.contains(&"quarry.v1.Quarry".to_string()), "{names:?}");
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_dash_nine_keeps_every_acknowledged_document_in_both_indexes() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut quarry = QuarryUp::start(data_dir.path(), 2).await;
    let mut client = quarry.client().await;
    let summary = client
        .ingest(tokio_stream::iter(corpus()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.accepted, corpus().len() as u64);
    client
        .delete(DeleteRequest {
            ids: vec!["tides".into()],
            ..DeleteRequest::default()
        })
        .await
        .unwrap();
    drop(client);
    quarry.kill();

    let restarted = QuarryUp::start(data_dir.path(), 2).await;
    let mut client = restarted.client().await;
    let status = client
        .cluster_status(ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let expected = corpus().len() as u64 - 1;
    assert_eq!((status.num_docs, status.num_vectors), (expected, expected));
    let semantic = client
        .search(SearchRequest {
            mode: SearchMode::Semantic as i32,
            ..search("who found the first antibiotic", 3)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(semantic.hits[0].doc_id, "penicillin");
    let tides = client
        .search(search("gravitational pull of the moon", 5))
        .await
        .unwrap()
        .into_inner();
    assert!(tides.hits.iter().all(|hit| hit.doc_id != "tides"));
}

/// Searches `times` times after a warm-up; returns the hedge count and whether every
/// answer's ids equal the first one's.
async fn hedges_over(client: &mut QuarryClient<Channel>, times: usize) -> (u32, bool) {
    let mut first: Option<Vec<String>> = None;
    let mut hedges = 0;
    let mut stable = true;
    for _ in 0..times {
        let response = client
            .search(search("who discovered penicillin", 3))
            .await
            .unwrap()
            .into_inner();
        assert!(!response.partial);
        hedges += response.hedges;
        let ids: Vec<String> = response.hits.into_iter().map(|hit| hit.doc_id).collect();
        match &first {
            None => first = Some(ids),
            Some(expected) => stable &= *expected == ids,
        }
    }
    (hedges, stable)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_replica_is_hedged_on_its_peer_and_not_without_hedging() {
    let fault = [
        ("QUARRY_ANALYZER__ENCODER", "none"),
        ("QUARRY_REPLICAS", "2"),
        ("QUARRY_GATEWAY__REPLICA_SELECTION", "round_robin"),
        ("QUARRY_RETRIEVER__FAULT__SHARD", "0"),
        ("QUARRY_RETRIEVER__FAULT__REPLICA", "0"),
        ("QUARRY_RETRIEVER__FAULT__DELAY_MS", "250"),
        ("QUARRY_RETRIEVER__FAULT__RATE", "0.04"),
    ];
    for hedging in ["true", "false"] {
        let data_dir = tempfile::tempdir().unwrap();
        let mut env = fault.to_vec();
        env.push(("QUARRY_GATEWAY__HEDGING", hedging));
        let quarry = QuarryUp::start_with_env(data_dir.path(), 2, &env).await;
        let mut client = quarry.client().await;
        let summary = client
            .ingest(tokio_stream::iter(corpus()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(summary.accepted, corpus().len() as u64);
        // Enough calls for the shard's p95 to be known (50 samples), then measure. The slow
        // share of shard 0's calls (4% of one replica's, about 2%) stays under 5%, so its
        // p95 is a fast call's latency and the slow calls outlive it.
        hedges_over(&mut client, 60).await;
        let (hedges, stable) = hedges_over(&mut client, 150).await;
        assert!(stable, "hedged answers must equal unhedged ones");
        if hedging == "true" {
            assert!(hedges > 0, "no call was hedged");
        } else {
            assert_eq!(hedges, 0);
        }
    }
}

/// The top-5 ids of a few queries in every mode.
async fn top_ids_of_every_mode(client: &mut QuarryClient<Channel>) -> Vec<Vec<String>> {
    let mut all = Vec::new();
    for query in ["largest planet", "bread yeast", "bacteria mould"] {
        for mode in [
            SearchMode::Keyword,
            SearchMode::Semantic,
            SearchMode::Hybrid,
        ] {
            let response = client
                .search(SearchRequest {
                    mode: mode as i32,
                    ..search(query, 5)
                })
                .await
                .unwrap()
                .into_inner();
            assert!(!response.partial);
            all.push(response.hits.into_iter().map(|hit| hit.doc_id).collect());
        }
    }
    all
}

/// Waits until the placement has no move left and `shards` shards own partitions.
async fn wait_for_shards(client: &mut QuarryClient<Channel>, shards: usize) {
    let started = std::time::Instant::now();
    loop {
        let status = client
            .cluster_status(ClusterStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        let placement = status.placement.unwrap_or_default();
        let serving: std::collections::BTreeSet<u32> = placement.owners.iter().copied().collect();
        if placement.moves.is_empty() && serving.len() == shards {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "not at {shards} shards: {placement:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn quarry_up_with_another_shard_count_resizes_the_data_directory() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut quarry = QuarryUp::start(data_dir.path(), 2).await;
    let mut client = quarry.client().await;
    let accepted = client
        .ingest(tokio_stream::iter(corpus()))
        .await
        .unwrap()
        .into_inner()
        .accepted;
    assert_eq!(accepted, corpus().len() as u64);
    let before = top_ids_of_every_mode(&mut client).await;
    assert!(quarry.stop().success());

    for shards in [3, 1] {
        let mut resized = QuarryUp::start(data_dir.path(), shards).await;
        let mut client = resized.client().await;
        wait_for_shards(&mut client, shards as usize).await;
        assert_eq!(
            top_ids_of_every_mode(&mut client).await,
            before,
            "{shards} shards"
        );
        let status = client
            .cluster_status(ClusterStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.num_docs, corpus().len() as u64);
        assert_eq!(status.num_vectors, corpus().len() as u64);
        for document in corpus() {
            let found = client
                .get_document(GetDocumentRequest {
                    id: document.id.clone(),
                    ..GetDocumentRequest::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(found.text, document.text);
        }
        assert!(resized.stop().success());
    }
}
