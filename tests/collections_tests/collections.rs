//! Two collections with the same ids stay independent (search, get, delete, counts), names
//! are checked, and a collection deleted while replicas are down leaves no trace on them
//! once they return — while what was written to another collection meanwhile reaches them.

use std::time::Duration;

use quarry_proto::v1::retriever_client::RetrieverClient;
use quarry_proto::v1::{
    CreateCollectionRequest, DeleteCollectionRequest, DeleteRequest, Document,
    GetCollectionRequest, GetDocumentRequest, ListCollectionsRequest, SearchMode, SearchRequest,
    ShardInfoRequest,
};
use tonic::Code;

use crate::{wait_until, ClusterShape, TestCluster};

fn in_collection(collection: &str, id: &str, text: &str) -> Document {
    Document {
        id: id.to_string(),
        title: String::new(),
        text: text.to_string(),
        collection: collection.to_string(),
        ..Document::default()
    }
}

fn keyword(collection: &str, query: &str) -> SearchRequest {
    SearchRequest {
        query: query.to_string(),
        k: 10,
        mode: SearchMode::Keyword as i32,
        collection: collection.to_string(),
        ..SearchRequest::default()
    }
}

async fn hit_texts(
    client: &mut quarry_proto::v1::quarry_client::QuarryClient<tonic::transport::Channel>,
    collection: &str,
    query: &str,
) -> Vec<(String, String)> {
    let mut hits: Vec<(String, String)> = client
        .search(keyword(collection, query))
        .await
        .unwrap()
        .into_inner()
        .hits
        .into_iter()
        .map(|hit| (hit.doc_id, hit.text))
        .collect();
    hits.sort();
    hits
}

async fn docs_on_replica(address: &str, collection: &str) -> u64 {
    let mut retriever = RetrieverClient::connect(address.to_string()).await.unwrap();
    retriever
        .shard_info(ShardInfoRequest {
            collection: collection.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .num_docs
}

#[tokio::test(flavor = "multi_thread")]
async fn collections_with_the_same_ids_are_independent_and_a_deletion_reaches_replicas_that_were_down(
) {
    let mut cluster = TestCluster::start(ClusterShape {
        shards: 2,
        replicas: 2,
        ..ClusterShape::default()
    })
    .await;
    let mut client = cluster.client(0).await;
    for name in ["hr", "legal"] {
        let created = client
            .create_collection(CreateCollectionRequest {
                name: name.to_string(),
                description: format!("{name} documents"),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(created.name, name);
        assert_eq!(created.shards, 2);
    }
    let again = client
        .create_collection(CreateCollectionRequest {
            name: "hr".to_string(),
            ..CreateCollectionRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
    for bad in ["HR", "a/b", "", "-x"] {
        let refused = client
            .create_collection(CreateCollectionRequest {
                name: bad.to_string(),
                ..CreateCollectionRequest::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{bad:?}");
        assert!(
            refused.message().starts_with("name:"),
            "{}",
            refused.message()
        );
    }

    // One stream mixing collections, Elasticsearch-bulk style; the same ids in both, on
    // both shards (so every replica holds both collections).
    let ids = ["a", "b", "c", "d", "e", "f"];
    let shards: std::collections::BTreeSet<u32> = ids
        .iter()
        .map(|id| {
            let partitioning = quarry_kit::placement::Partitioning::new(2, None).unwrap();
            partitioning.initial_owner(partitioning.partition_of(id))
        })
        .collect();
    assert_eq!(shards.len(), 2, "the ids cover both shards");
    let mut documents = Vec::new();
    for id in ids {
        documents.push(in_collection(
            "hr",
            id,
            &format!("vacation policy for staff {id}"),
        ));
        documents.push(in_collection(
            "legal",
            id,
            &format!("contract clause number {id}"),
        ));
    }
    documents.push(in_collection("nowhere", "z", "lost"));
    documents.push(Document {
        metadata_json: "[1, 2]".to_string(),
        ..in_collection("hr", "y", "metadata that is not an object")
    });
    let summary = client
        .ingest(tokio_stream::iter(documents))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.accepted, 12);
    assert_eq!(summary.rejected, 2);
    assert_eq!(summary.errors[0].code, "NOT_FOUND");
    assert_eq!(summary.errors[0].field, "collection");
    assert_eq!(summary.errors[1].code, "INVALID_ARGUMENT");
    assert_eq!(summary.errors[1].field, "metadata_json");

    let hr = hit_texts(&mut client, "hr", "policy").await;
    assert_eq!(
        hr.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
        ids
    );
    assert!(hr.iter().all(|(_, text)| text.starts_with("vacation")));
    assert!(hit_texts(&mut client, "legal", "policy").await.is_empty());
    assert!(hit_texts(&mut client, "", "policy").await.is_empty());
    let legal_a = client
        .get_document(GetDocumentRequest {
            id: "a".to_string(),
            collection: "legal".to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(legal_a.text, "contract clause number a");
    assert_eq!(legal_a.collection, "legal");

    let deleted = client
        .delete(DeleteRequest {
            ids: vec!["a".to_string()],
            collection: "hr".to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 1);
    let gone = client
        .get_document(GetDocumentRequest {
            id: "a".to_string(),
            collection: "hr".to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert_eq!(hit_texts(&mut client, "legal", "clause").await.len(), 6);

    let count = |name: &str| GetCollectionRequest {
        name: name.to_string(),
    };
    let hr_info = client
        .get_collection(count("hr"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((hr_info.num_docs, hr_info.num_vectors), (5, 5));
    assert_eq!(hr_info.description, "hr documents");
    let legal_info = client
        .get_collection(count("legal"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(legal_info.num_docs, 6);
    let default_info = client
        .get_collection(count("default"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(default_info.num_docs, 0);
    let names: Vec<String> = client
        .list_collections(ListCollectionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .collections
        .into_iter()
        .map(|collection| collection.name)
        .collect();
    assert_eq!(names, ["default", "hr", "legal"]);

    let unknown = client
        .search(keyword("payroll", "policy"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(
        unknown.message().starts_with("collection:"),
        "{}",
        unknown.message()
    );
    let invalid = client
        .search(keyword("Pay/Roll", "policy"))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert!(
        invalid.message().starts_with("collection:"),
        "{}",
        invalid.message()
    );

    // Replica 1 of every shard goes down; meanwhile `legal` is deleted and `hr` written.
    for shard in 0..2 {
        cluster.retrievers[shard][1].kill();
    }
    // Their leases lapse: the gateway stops writing to them.
    cluster.wait_for_ready(4).await;
    let legal_dirs: Vec<std::path::PathBuf> = (0..2)
        .flat_map(|shard| (0..2).map(move |replica| (shard, replica)))
        .map(|(shard, replica)| {
            cluster
                .replica_dir(shard, replica)
                .join("collections/legal")
        })
        .collect();
    assert!(legal_dirs.iter().all(|dir| dir.exists()), "{legal_dirs:?}");
    let summary = client
        .ingest(tokio_stream::iter(vec![in_collection(
            "hr",
            "g",
            "vacation policy while a replica is away",
        )]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.accepted, 1);
    let dropped = client
        .delete_collection(DeleteCollectionRequest {
            name: "legal".to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dropped.deleted_docs, 6);
    let missing = client.search(keyword("legal", "clause")).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let up_dirs = [&legal_dirs[0], &legal_dirs[2]];
    wait_until(
        Duration::from_secs(10),
        "the running replicas drop legal",
        || async { up_dirs.iter().all(|dir| !dir.exists()) },
    )
    .await;
    assert!(
        legal_dirs[1].exists() && legal_dirs[3].exists(),
        "the replicas that were down still hold it"
    );

    for shard in 0..2 {
        cluster.retrievers[shard][1].restart().await;
    }
    cluster.wait_for_ready(6).await;
    wait_until(
        Duration::from_secs(10),
        "the returning replicas drop legal",
        || async { legal_dirs.iter().all(|dir| !dir.exists()) },
    )
    .await;
    let mut on_returned = 0;
    for shard in 0..2 {
        on_returned += docs_on_replica(&cluster.retrievers[shard][1].address, "hr").await;
    }
    assert_eq!(
        on_returned, 6,
        "b to g: the returning replicas caught up on hr"
    );

    // The same name again is a new, empty collection.
    client
        .create_collection(CreateCollectionRequest {
            name: "legal".to_string(),
            ..CreateCollectionRequest::default()
        })
        .await
        .unwrap();
    assert!(hit_texts(&mut client, "legal", "clause").await.is_empty());
    let legal_info = client
        .get_collection(count("legal"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(legal_info.num_docs, 0);
}
