//! Tests of `Shard`: upsert, delete, fetch, restart and crash recovery, cluster-wide BM25
//! statistics, vector search, tie handling at the cut, and write versions.

use super::*;

fn document(id: &str, title: &str, text: &str) -> StoredDocument {
    StoredDocument {
        id: id.to_string(),
        title: title.to_string(),
        text: text.to_string(),
        metadata: serde_json::json!({"source": "test"})
            .as_object()
            .cloned()
            .unwrap(),
        vector: Vec::new(),
        version: 0,
    }
}

fn versioned(mut document: StoredDocument, version: u64) -> StoredDocument {
    document.version = version;
    document
}

fn corpus() -> Vec<StoredDocument> {
    vec![
        document(
            "a",
            "Insulin",
            "Insulin lowers blood glucose by helping cells absorb it.",
        ),
        document(
            "b",
            "Photosynthesis",
            "Plants turn light, water and carbon dioxide into sugar.",
        ),
        document(
            "c",
            "Glucose",
            "Glucose is a simple sugar and the main energy source of cells.",
        ),
        document(
            "d",
            "Mitochondria",
            "Mitochondria produce most of the energy of a cell.",
        ),
    ]
}

#[test]
fn ranks_matching_documents_and_survives_reopening() {
    let directory = tempfile::tempdir().unwrap();
    {
        let shard = Shard::open(directory.path(), 0, 0, 20_000_000).unwrap();
        assert_eq!(shard.upsert(&corpus()).unwrap(), 4);
        let hits = shard
            .search_keyword("what lowers blood glucose", 3, None, None)
            .unwrap();
        assert_eq!(hits[0].doc_id, "a");
        assert!(hits.iter().all(|hit| hit.doc_id != "b"));
    }
    let reopened = Shard::open(directory.path(), 0, 0, 20_000_000).unwrap();
    assert_eq!(reopened.num_docs(), 4);
    let mut fetched = reopened
        .fetch(&["c".to_string(), "zz".to_string()])
        .unwrap();
    assert_eq!(fetched.len(), 1);
    assert!(
        fetched[0].version > 0,
        "the shard stamps unversioned writes"
    );
    fetched[0].version = 0;
    assert_eq!(
        fetched,
        vec![document("c", "Glucose", corpus()[2].text.as_str())]
    );
}

#[test]
fn upsert_replaces_and_delete_removes() {
    let directory = tempfile::tempdir().unwrap();
    let shard = Shard::open(directory.path(), 0, 0, 20_000_000).unwrap();
    shard.upsert(&corpus()).unwrap();
    shard
        .upsert(&[document(
            "b",
            "Photosynthesis",
            "Chlorophyll captures sunlight.",
        )])
        .unwrap();
    assert_eq!(shard.num_docs(), 4);
    assert!(shard
        .search_keyword("carbon dioxide", 5, None, None)
        .unwrap()
        .is_empty());
    assert_eq!(
        shard.search_keyword("chlorophyll", 5, None, None).unwrap()[0].doc_id,
        "b"
    );
    let deleted = shard
        .delete(&["a".to_string(), "missing".to_string()], 0)
        .unwrap();
    assert_eq!(deleted, 1);
    assert_eq!(shard.num_docs(), 3);
    assert!(shard.fetch(&["a".to_string()]).unwrap().is_empty());
}

#[test]
fn documents_without_id_or_text_are_refused_naming_the_field() {
    let directory = tempfile::tempdir().unwrap();
    let shard = Shard::open(directory.path(), 0, 0, 20_000_000).unwrap();
    let error = shard.upsert(&[document(" ", "t", "x")]).unwrap_err();
    assert!(error.to_string().starts_with("document.id"), "{error}");
    let error = shard.upsert(&[document("x", "t", "")]).unwrap_err();
    assert!(error.to_string().starts_with("document.text"), "{error}");
    assert_eq!(shard.num_docs(), 0);
}

#[test]
fn global_statistics_make_split_shards_score_like_one() {
    let whole_dir = tempfile::tempdir().unwrap();
    let whole = Shard::open(whole_dir.path(), 0, 0, 20_000_000).unwrap();
    whole.upsert(&corpus()).unwrap();
    let left_dir = tempfile::tempdir().unwrap();
    let right_dir = tempfile::tempdir().unwrap();
    let left = Shard::open(left_dir.path(), 0, 0, 20_000_000).unwrap();
    let right = Shard::open(right_dir.path(), 1, 0, 20_000_000).unwrap();
    left.upsert(&corpus()[..1]).unwrap();
    right.upsert(&corpus()[1..]).unwrap();

    let query = "energy of cells and glucose";
    let mut global = left.collect_statistics(query).unwrap();
    global.add(&right.collect_statistics(query).unwrap());
    assert_eq!(global, whole.collect_statistics(query).unwrap());

    let mut split: Vec<ShardCandidate> = left
        .search_keyword(query, 10, Some(&global), None)
        .unwrap()
        .into_iter()
        .chain(
            right
                .search_keyword(query, 10, Some(&global), None)
                .unwrap(),
        )
        .collect();
    split.sort_by(|a, b| b.score.total_cmp(&a.score));
    let single = whole.search_keyword(query, 10, None, None).unwrap();
    assert_eq!(split.len(), single.len());
    for (from_split, from_single) in split.iter().zip(&single) {
        assert_eq!(from_split.doc_id, from_single.doc_id);
        assert!((from_split.score - from_single.score).abs() < 1e-4);
    }
    let local_only = left.search_keyword(query, 10, None, None).unwrap();
    assert!(
        (local_only[0].score - split.iter().find(|c| c.doc_id == "a").unwrap().score).abs() > 1e-3,
        "without global statistics a small shard scores differently"
    );
}

fn with_vector(mut document: StoredDocument, vector: &[f32]) -> StoredDocument {
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    document.vector = vector.iter().map(|v| v / norm).collect();
    document
}

fn corpus_with_vectors() -> Vec<StoredDocument> {
    let axes = [
        [1.0, 0.1, 0.0],
        [0.0, 1.0, 0.2],
        [0.9, 0.0, 0.4],
        [0.1, 0.2, 1.0],
    ];
    corpus()
        .into_iter()
        .zip(axes)
        .map(|(document, axis)| with_vector(document, &axis))
        .collect()
}

#[test]
fn vectors_are_searched_and_survive_a_crash_and_a_clean_stop() {
    let directory = tempfile::tempdir().unwrap();
    {
        let shard = Shard::open(directory.path(), 0, 0, 20_000_000).unwrap();
        shard.upsert(&corpus_with_vectors()).unwrap();
        let hits = shard.search_vector(&[1.0, 0.0, 0.0], 2, None).unwrap();
        assert_eq!(hits[0].doc_id, "a");
        assert_eq!(hits[1].doc_id, "c");
        assert!(hits[0].score > hits[1].score && hits[0].score <= 1.0001);
        shard.delete(&["c".to_string()], 0).unwrap();
        assert_eq!(shard.num_vectors(), 3);
        // Dropped without persist_vectors: as after kill -9, the saved file is stale.
    }
    {
        let reopened = Shard::open(directory.path(), 0, 0, 20_000_000).unwrap();
        assert_eq!(reopened.num_vectors(), reopened.num_docs());
        assert_eq!(
            reopened.search_vector(&[1.0, 0.0, 0.0], 2, None).unwrap()[1].doc_id,
            "d"
        );
        reopened.persist_vectors().unwrap();
    }
    let clean = Shard::open(directory.path(), 0, 0, 20_000_000).unwrap();
    assert_eq!(clean.num_vectors(), 3);
}

#[test]
fn a_vector_of_the_wrong_dimensions_is_refused_and_nothing_is_written() {
    let directory = tempfile::tempdir().unwrap();
    let shard = Shard::open(directory.path(), 0, 0, 20_000_000).unwrap();
    shard.upsert(&corpus_with_vectors()).unwrap();
    let wrong = with_vector(document("e", "E", "text"), &[1.0, 2.0]);
    let error = shard.upsert(&[wrong]).unwrap_err();
    assert!(
        error.to_string().starts_with("vector: has 2 dimensions"),
        "{error}"
    );
    assert_eq!(shard.num_docs(), 4);
    let error = shard.search_vector(&[1.0, 0.0], 2, None).unwrap_err();
    assert!(error.to_string().starts_with("vector:"));
}

#[test]
fn ties_at_the_cut_are_broken_by_the_tie_key_not_by_index_order() {
    let directory = tempfile::tempdir().unwrap();
    let shard = Shard::open(directory.path(), 0, 0, 20_000_000).unwrap();
    let ids = ["e", "d", "c", "b", "a", "f", "g", "h"];
    // Two commits, so the twins live in two segments and the collector merges them.
    for half in ids.chunks(4) {
        let twins: Vec<StoredDocument> = half
            .iter()
            .map(|id| {
                with_vector(
                    document(id, "Same", "identical text about comets"),
                    &[1.0, 0.0, 0.0],
                )
            })
            .collect();
        shard.upsert(&twins).unwrap();
    }
    let mut expected: Vec<&str> = ids.to_vec();
    expected.sort_by_key(|id| quarry_kit::ranking::tie_key(id));
    expected.truncate(3);
    let keyword: Vec<String> = shard
        .search_keyword("comets", 3, None, None)
        .unwrap()
        .into_iter()
        .map(|hit| hit.doc_id)
        .collect();
    assert_eq!(keyword, expected);
    let vector: Vec<String> = shard
        .search_vector(&[1.0, 0.0, 0.0], 3, None)
        .unwrap()
        .into_iter()
        .map(|hit| hit.doc_id)
        .collect();
    assert_eq!(vector, expected);
}

#[test]
fn an_index_of_the_older_schema_is_converted_without_losing_anything() {
    use tantivy::schema::{Schema, INDEXED, STORED, STRING, TEXT};
    let directory = tempfile::tempdir().unwrap();
    {
        let mut builder = Schema::builder();
        let id = builder.add_text_field("id", STRING | STORED);
        let title = builder.add_text_field("title", STORED);
        let text = builder.add_text_field("text", STORED);
        let metadata = builder.add_text_field("metadata", STORED);
        let body = builder.add_text_field("body", TEXT);
        let vector = builder.add_bytes_field("vector", STORED);
        let key = builder.add_u64_field("vector_key", INDEXED);
        let version = builder.add_u64_field("version", STORED);
        let index_dir = directory.path().join("tantivy");
        std::fs::create_dir_all(&index_dir).unwrap();
        let index = tantivy::Index::create_in_dir(&index_dir, builder.build()).unwrap();
        let mut writer: tantivy::IndexWriter = index.writer(20_000_000).unwrap();
        let mut old = tantivy::TantivyDocument::default();
        old.add_text(id, "a");
        old.add_text(title, "Comets");
        old.add_text(text, "comets are icy bodies");
        old.add_text(metadata, r#"{"year":"2020"}"#);
        old.add_text(body, "Comets comets are icy bodies");
        old.add_bytes(vector, &[0u8, 0, 128, 63, 0, 0, 0, 0]);
        old.add_u64(key, crate::vectors::vector_key("a"));
        old.add_u64(version, 7);
        writer.add_document(old).unwrap();
        writer.commit().unwrap();
    }
    let shard = Shard::open(directory.path(), 0, 0, 20_000_000).unwrap();
    assert_eq!(
        shard.search_keyword("icy", 5, None, None).unwrap()[0].doc_id,
        "a"
    );
    assert_eq!(
        shard.search_vector(&[1.0, 0.0], 1, None).unwrap()[0].doc_id,
        "a"
    );
    let fetched = shard.fetch(&["a".to_string()]).unwrap();
    assert_eq!(fetched[0].version, 7);
    assert_eq!(fetched[0].metadata["year"], "2020");
    assert!(!directory.path().join("tantivy.previous").exists());
    drop(shard);
    let reopened = Shard::open(directory.path(), 0, 0, 20_000_000).unwrap();
    assert_eq!(reopened.num_docs(), 1);
}

#[test]
fn hostile_global_statistics_do_not_panic() {
    let directory = tempfile::tempdir().unwrap();
    let shard = Shard::open(directory.path(), 0, 0, 20_000_000).unwrap();
    shard.upsert(&corpus()).unwrap();
    let hostile = CorpusStatistics {
        num_docs: 0,
        total_num_tokens: 0,
        doc_freqs: [("glucos".to_string(), u64::MAX)].into_iter().collect(),
    };
    let hits = shard
        .search_keyword("glucose", 5, Some(&hostile), None)
        .unwrap();
    assert!(!hits.is_empty());
}

#[test]
fn the_newest_version_of_an_id_wins_whatever_order_writes_arrive_in() {
    let directory = tempfile::tempdir().unwrap();
    let shard = Shard::open(directory.path(), 0, 0, 20_000_000).unwrap();
    shard
        .upsert(&[versioned(document("a", "New", "the newer text"), 20)])
        .unwrap();
    shard
        .upsert(&[versioned(document("a", "Old", "the older text"), 10)])
        .unwrap();
    let fetched = shard.fetch(&["a".to_string()]).unwrap();
    assert_eq!((fetched[0].title.as_str(), fetched[0].version), ("New", 20));

    // A delete older than the document does not remove it; a newer one does, and then
    // refuses an older write of the id that arrives late (a replayed copy, say).
    assert_eq!(shard.delete(&["a".to_string()], 15).unwrap(), 0);
    assert_eq!(shard.num_docs(), 1);
    assert_eq!(shard.delete(&["a".to_string()], 30).unwrap(), 1);
    shard
        .upsert(&[versioned(document("a", "Late", "a late copy"), 25)])
        .unwrap();
    assert_eq!(shard.num_docs(), 0);
    shard
        .upsert(&[versioned(document("a", "Again", "written again"), 40)])
        .unwrap();
    assert_eq!(shard.fetch(&["a".to_string()]).unwrap()[0].title, "Again");
}

#[test]
fn versions_list_documents_and_deletes_and_survive_reopening() {
    let directory = tempfile::tempdir().unwrap();
    {
        let shard = Shard::open(directory.path(), 0, 0, 20_000_000).unwrap();
        shard
            .upsert(&[
                versioned(document("a", "A", "alpha"), 5),
                versioned(document("b", "B", "beta"), 6),
            ])
            .unwrap();
        shard
            .delete(&["b".to_string(), "c".to_string()], 8)
            .unwrap();
    }
    let shard = Shard::open(directory.path(), 0, 0, 20_000_000).unwrap();
    let listed: Vec<(String, u64, bool)> = shard
        .versions()
        .unwrap()
        .into_iter()
        .map(|entry| (entry.id, entry.version, entry.deleted))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("a".to_string(), 5, false),
            ("b".to_string(), 8, true),
            ("c".to_string(), 8, true),
        ]
    );
    shard
        .upsert(&[versioned(document("b", "B", "beta"), 7)])
        .unwrap();
    assert_eq!(shard.num_docs(), 1, "the delete survived the reopen");
}
