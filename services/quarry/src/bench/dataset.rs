//! A BEIR-format dataset folder: `corpus.jsonl`, `queries.jsonl` and `qrels-test.tsv`
//! (or `qrels/test.tsv`), read and checked — a corpus line without text, a query without
//! text, or a qrels line naming a query that is not in the queries file is an error that
//! names the file and line.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context};
use quarry_proto::v1::Document;
use serde::Deserialize;

use super::metrics::Judgements;
use crate::jsonl::parse_documents;

/// One test query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub id: String,
    pub text: String,
}

pub struct Dataset {
    pub name: String,
    pub corpus: Vec<Document>,
    /// The queries that have judgements, in file order.
    pub queries: Vec<Query>,
    pub qrels: HashMap<String, Judgements>,
}

#[derive(Deserialize)]
struct QueryLine {
    #[serde(rename = "_id")]
    id: String,
    text: String,
}

impl Dataset {
    pub fn load(directory: &Path) -> anyhow::Result<Self> {
        let name = directory
            .file_name()
            .map(|name| name.to_string_lossy().to_string())
            .unwrap_or_else(|| "dataset".to_string());
        let corpus = load_corpus(&directory.join("corpus.jsonl"))?;
        let all_queries = load_queries(&directory.join("queries.jsonl"))?;
        let qrels_path = [
            directory.join("qrels-test.tsv"),
            directory.join("qrels/test.tsv"),
        ]
        .into_iter()
        .find(|path| path.exists())
        .with_context(|| {
            format!(
                "no qrels-test.tsv or qrels/test.tsv in {}",
                directory.display()
            )
        })?;
        let qrels = load_qrels(&qrels_path, &all_queries)?;
        let queries = all_queries
            .into_iter()
            .filter(|query| qrels.contains_key(&query.id))
            .collect();
        Ok(Self {
            name,
            corpus,
            queries,
            qrels,
        })
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn load_corpus(path: &Path) -> anyhow::Result<Vec<Document>> {
    let (documents, malformed) = parse_documents(&read(path)?);
    if let Some(line) = malformed.first() {
        bail!("{}:{}: {}", path.display(), line.line_number, line.reason);
    }
    let mut corpus = Vec::with_capacity(documents.len());
    for line in documents {
        if line.document.text.trim().is_empty() && line.document.title.trim().is_empty() {
            bail!(
                "{}:{}: document {:?} has no text",
                path.display(),
                line.line_number,
                line.document.id
            );
        }
        if line.document.text.trim().is_empty() {
            // BEIR corpora have a few title-only documents; the title is their text.
            let mut document = line.document;
            document.text = std::mem::take(&mut document.title);
            corpus.push(document);
            continue;
        }
        corpus.push(line.document);
    }
    Ok(corpus)
}

fn load_queries(path: &Path) -> anyhow::Result<Vec<Query>> {
    let mut queries = Vec::new();
    for (index, line) in read(path)?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed: QueryLine = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a query line", path.display(), index + 1))?;
        if parsed.text.trim().is_empty() {
            bail!(
                "{}:{}: query {:?} has no text",
                path.display(),
                index + 1,
                parsed.id
            );
        }
        queries.push(Query {
            id: parsed.id,
            text: parsed.text,
        });
    }
    Ok(queries)
}

fn load_qrels(path: &Path, queries: &[Query]) -> anyhow::Result<HashMap<String, Judgements>> {
    let known: HashMap<&str, ()> = queries
        .iter()
        .map(|query| (query.id.as_str(), ()))
        .collect();
    let mut qrels: HashMap<String, Judgements> = HashMap::new();
    for (index, raw_line) in read(path)?.lines().enumerate() {
        let line = raw_line.trim_end_matches('\r');
        if index == 0 && line.starts_with("query-id") {
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let [query_id, doc_id, grade] = fields[..] else {
            bail!(
                "{}:{}: expected 3 tab-separated fields, found {}",
                path.display(),
                index + 1,
                fields.len()
            );
        };
        if !known.contains_key(query_id) {
            bail!(
                "{}:{}: query id {query_id:?} is not in queries.jsonl",
                path.display(),
                index + 1
            );
        }
        let grade: i64 = grade.trim().parse().with_context(|| {
            format!(
                "{}:{}: grade {grade:?} is not an integer",
                path.display(),
                index + 1
            )
        })?;
        qrels
            .entry(query_id.to_string())
            .or_default()
            .insert(doc_id.to_string(), grade);
    }
    Ok(qrels)
}

/// Runs as TREC lines: `qid Q0 docid rank score tag`.
pub fn trec_lines(run: &BTreeMap<String, Vec<(String, f64)>>, tag: &str) -> String {
    let mut out = String::new();
    for (query_id, hits) in run {
        for (rank, (doc_id, score)) in hits.iter().enumerate() {
            out.push_str(&format!(
                "{query_id} Q0 {doc_id} {} {score:.6} {tag}\n",
                rank + 1
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(directory: &Path, name: &str, content: &str) {
        std::fs::write(directory.join(name), content).unwrap();
    }

    #[test]
    fn loads_a_beir_folder_with_crlf_qrels() {
        let directory = tempfile::tempdir().unwrap();
        write(directory.path(), "corpus.jsonl", "{\"_id\":\"d1\",\"title\":\"T\",\"text\":\"x\"}\n{\"_id\":\"d2\",\"title\":\"Only title\",\"text\":\"\"}\n");
        write(
            directory.path(),
            "queries.jsonl",
            "{\"_id\":\"q1\",\"text\":\"what\"}\n{\"_id\":\"q2\",\"text\":\"unjudged\"}\n",
        );
        write(
            directory.path(),
            "qrels-test.tsv",
            "query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\n",
        );
        let dataset = Dataset::load(directory.path()).unwrap();
        assert_eq!(dataset.corpus.len(), 2);
        assert_eq!(dataset.corpus[1].text, "Only title");
        assert_eq!(
            dataset.queries,
            vec![Query {
                id: "q1".into(),
                text: "what".into()
            }]
        );
        assert_eq!(dataset.qrels["q1"]["d1"], 1);
    }

    #[test]
    fn bad_lines_are_named() {
        let directory = tempfile::tempdir().unwrap();
        write(
            directory.path(),
            "corpus.jsonl",
            "{\"_id\":\"d1\",\"text\":\"x\"}\n{\"_id\":\"d2\",\"title\":\"\",\"text\":\" \"}\n",
        );
        write(
            directory.path(),
            "queries.jsonl",
            "{\"_id\":\"q1\",\"text\":\"what\"}\n",
        );
        write(
            directory.path(),
            "qrels-test.tsv",
            "query-id\tcorpus-id\tscore\nq9\td1\t1\n",
        );
        let error = Dataset::load(directory.path()).err().unwrap().to_string();
        assert!(
            error.contains("corpus.jsonl:2") && error.contains("no text"),
            "{error}"
        );
        write(
            directory.path(),
            "corpus.jsonl",
            "{\"_id\":\"d1\",\"text\":\"x\"}\n",
        );
        let error = Dataset::load(directory.path()).err().unwrap().to_string();
        assert!(
            error.contains("qrels-test.tsv:2") && error.contains("\"q9\""),
            "{error}"
        );
    }
}
