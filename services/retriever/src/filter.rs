//! Metadata filters as tantivy queries over the `meta` JSON field, applied inside the shard
//! before ranking: a keyword search intersects its BM25 query with the filter (scored 0, so
//! BM25 scores and statistics are untouched, as in Elasticsearch's filter context), and a
//! vector search ranks only the filter's documents (`Shard::search_vector`).
//!
//! Text is matched exactly (raw tokens); numbers, dates and their equality go through the
//! columns (range queries), so a number written as `3` or `3.0` matches either way;
//! booleans through the inverted index; `exists` through the columns of the path and the
//! paths below it.

use std::ops::Bound;

use quarry_proto::v1::{
    field_condition::Test, filter::Kind, filter_value::Value, FieldCondition, Filter, FilterValue,
};
use tantivy::query::{
    AllQuery, BooleanQuery, EmptyQuery, ExistsQuery, Occur, Query, RangeQuery, TermQuery,
};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{DateTime, Term};

use crate::error::RetrieverError;
use crate::schema::META_FIELD;

/// The documents a filter admits, as a tantivy query (scores meaningless).
pub(crate) fn compile(filter: &Filter, meta: Field) -> Result<Box<dyn Query>, RetrieverError> {
    quarry_kit::filter::validate(filter).map_err(|error| RetrieverError::Refused(error.message))?;
    Ok(node(filter, meta))
}

fn node(filter: &Filter, meta: Field) -> Box<dyn Query> {
    match &filter.kind {
        Some(Kind::All(list)) if list.filters.is_empty() => Box::new(AllQuery),
        Some(Kind::All(list)) => Box::new(BooleanQuery::new(
            list.filters
                .iter()
                .map(|inner| (Occur::Must, node(inner, meta)))
                .collect(),
        )),
        Some(Kind::Any(list)) if list.filters.is_empty() => Box::new(EmptyQuery),
        Some(Kind::Any(list)) => any(list.filters.iter().map(|inner| node(inner, meta))),
        Some(Kind::Not(inner)) => negate(node(inner, meta)),
        Some(Kind::Field(condition)) => field(condition, meta),
        // `validate` refuses a filter without a kind.
        None => Box::new(EmptyQuery),
    }
}

fn any(queries: impl Iterator<Item = Box<dyn Query>>) -> Box<dyn Query> {
    Box::new(BooleanQuery::new(
        queries.map(|query| (Occur::Should, query)).collect(),
    ))
}

fn negate(query: Box<dyn Query>) -> Box<dyn Query> {
    Box::new(BooleanQuery::new(vec![
        (Occur::Must, Box::new(AllQuery) as Box<dyn Query>),
        (Occur::MustNot, query),
    ]))
}

fn field(condition: &FieldCondition, meta: Field) -> Box<dyn Query> {
    let path = condition.field.as_str();
    match &condition.test {
        Some(Test::Equals(value)) => equals(path, value, meta),
        Some(Test::OneOf(values)) => {
            any(values.values.iter().map(|value| equals(path, value, meta)))
        }
        Some(Test::Range(range)) => {
            let lower = bound(path, meta, range.gt.as_ref(), range.gte.as_ref());
            let upper = bound(path, meta, range.lt.as_ref(), range.lte.as_ref());
            Box::new(RangeQuery::new(lower, upper))
        }
        Some(Test::Exists(true)) => exists(path),
        Some(Test::Exists(false)) => negate(exists(path)),
        None => Box::new(EmptyQuery),
    }
}

fn exists(path: &str) -> Box<dyn Query> {
    Box::new(ExistsQuery::new(format!("{META_FIELD}.{path}"), true))
}

fn equals(path: &str, value: &FilterValue, meta: Field) -> Box<dyn Query> {
    match &value.value {
        Some(Value::Text(text)) => {
            let mut term = Term::from_field_json_path(meta, path, true);
            term.append_type_and_str(text);
            Box::new(TermQuery::new(term, IndexRecordOption::Basic))
        }
        Some(Value::Boolean(boolean)) => {
            let mut term = Term::from_field_json_path(meta, path, true);
            term.append_type_and_fast_value(*boolean);
            Box::new(TermQuery::new(term, IndexRecordOption::Basic))
        }
        Some(Value::Number(_)) | Some(Value::Date(_)) => match typed_term(path, meta, value) {
            Some(term) => Box::new(RangeQuery::new(
                Bound::Included(term.clone()),
                Bound::Included(term),
            )),
            None => Box::new(EmptyQuery),
        },
        None => Box::new(EmptyQuery),
    }
}

/// One side of a range: the exclusive bound, else the inclusive one, else none.
fn bound(
    path: &str,
    meta: Field,
    exclusive: Option<&FilterValue>,
    inclusive: Option<&FilterValue>,
) -> Bound<Term> {
    if let Some(term) = exclusive.and_then(|value| typed_term(path, meta, value)) {
        return Bound::Excluded(term);
    }
    if let Some(term) = inclusive.and_then(|value| typed_term(path, meta, value)) {
        return Bound::Included(term);
    }
    Bound::Unbounded
}

/// The column term of a number (f64) or a date; `None` for other values.
fn typed_term(path: &str, meta: Field, value: &FilterValue) -> Option<Term> {
    let mut term = Term::from_field_json_path(meta, path, true);
    match &value.value {
        Some(Value::Number(number)) => term.append_type_and_fast_value(*number),
        Some(Value::Date(text)) => {
            let micros = quarry_kit::filter::parse_date(text)?;
            term.append_type_and_fast_value(DateTime::from_timestamp_micros(micros));
        }
        _ => return None,
    }
    Some(term)
}

/// Reads a wire filter: `None` when the request has none.
pub(crate) fn compile_optional(
    filter: Option<&Filter>,
    meta: Field,
) -> Result<Option<Box<dyn Query>>, RetrieverError> {
    filter.map(|filter| compile(filter, meta)).transpose()
}

/// The keys (`vector_key`) of the documents a query matches, read from the key column.
pub(crate) struct MatchingKeys;

pub(crate) struct SegmentKeys {
    keys: tantivy::columnar::Column<u64>,
    found: Vec<u64>,
}

impl tantivy::collector::Collector for MatchingKeys {
    type Fruit = Vec<u64>;
    type Child = SegmentKeys;

    fn for_segment(
        &self,
        _segment: tantivy::SegmentOrdinal,
        reader: &tantivy::SegmentReader,
    ) -> tantivy::Result<SegmentKeys> {
        Ok(SegmentKeys {
            keys: reader.fast_fields().u64(crate::schema::VECTOR_KEY_FIELD)?,
            found: Vec::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Vec<u64>>) -> tantivy::Result<Vec<u64>> {
        Ok(fruits.into_iter().flatten().collect())
    }
}

impl tantivy::collector::SegmentCollector for SegmentKeys {
    type Fruit = Vec<u64>;

    fn collect(&mut self, doc: tantivy::DocId, _score: tantivy::Score) {
        if let Some(key) = self.keys.first(doc) {
            self.found.push(key);
        }
    }

    fn harvest(self) -> Vec<u64> {
        self.found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::{Shard, StoredDocument};

    fn shard_with_metadata() -> (tempfile::TempDir, Shard) {
        let directory = tempfile::tempdir().unwrap();
        let shard = Shard::open(directory.path(), 0, 0, 20_000_000).unwrap();
        let documents = [
            (
                "a",
                r#"{"team": "hr", "year": 2019, "published": "2019-03-01", "tags": ["x", "y"], "author": {"name": "ann"}}"#,
            ),
            (
                "b",
                r#"{"team": "legal", "year": 2021, "published": "2021-07-15T10:00:00Z", "draft": true}"#,
            ),
            (
                "c",
                r#"{"team": "hr", "year": 2023.5, "published": "2023-01-01", "tags": ["y"]}"#,
            ),
            ("d", r#"{"team": "it"}"#),
            ("e", "{}"),
        ];
        let stored: Vec<StoredDocument> = documents
            .iter()
            .enumerate()
            .map(|(position, (id, metadata))| StoredDocument {
                id: id.to_string(),
                text: format!("policy handbook number {position}"),
                metadata: serde_json::from_str(metadata).unwrap(),
                vector: vec![1.0, position as f32, 0.5],
                ..StoredDocument::default()
            })
            .collect();
        shard.upsert(&stored).unwrap();
        (directory, shard)
    }

    fn matching(shard: &Shard, filter: &str) -> Vec<String> {
        let filter = quarry_kit::filter::parse(filter).unwrap();
        let query = compile(&filter, shard.meta_field()).unwrap();
        let mut keyword: Vec<String> = shard
            .search_keyword("policy", 10, None, Some(query.as_ref()))
            .unwrap()
            .into_iter()
            .map(|hit| hit.doc_id)
            .collect();
        let mut vector: Vec<String> = shard
            .search_vector(&[1.0, 1.0, 0.5], 10, Some(query.as_ref()))
            .unwrap()
            .into_iter()
            .map(|hit| hit.doc_id)
            .collect();
        keyword.sort();
        vector.sort();
        assert_eq!(
            keyword, vector,
            "keyword and vector search admit the same documents"
        );
        keyword
    }

    #[test]
    fn every_operator_admits_exactly_its_documents_in_keyword_and_vector_search() {
        let (_directory, shard) = shard_with_metadata();
        let cases: [(&str, &[&str]); 16] = [
            ("team=hr", &["a", "c"]),
            ("team!=hr", &["b", "d", "e"]),
            ("team=hr,it", &["a", "c", "d"]),
            ("year>=2021", &["b", "c"]),
            ("year>2021", &["c"]),
            ("year<2021", &["a"]),
            ("year=2019", &["a"]),
            ("year=2023.5", &["c"]),
            ("published>=2021-01-01", &["b", "c"]),
            ("published<2021-07-15T10:00:01Z", &["a", "b"]),
            ("published=2019-03-01", &["a"]),
            ("tags=y", &["a", "c"]),
            ("draft=true", &["b"]),
            ("draft? ", &["b"]),
            ("!year?", &["d", "e"]),
            ("author.name=ann author?", &["a"]),
        ];
        for (filter, expected) in cases {
            assert_eq!(matching(&shard, filter), expected, "{filter}");
        }
        let any = r#"{"any": [{"field": "team", "equals": "it"}, {"field": "year", "range": {"lt": 2020}}]}"#;
        assert_eq!(matching(&shard, any), ["a", "d"]);
        assert_eq!(matching(&shard, r#"{"any": []}"#), Vec::<String>::new());
    }

    #[test]
    fn a_filtered_keyword_search_keeps_the_unfiltered_scores() {
        let (_directory, shard) = shard_with_metadata();
        let all = shard
            .search_keyword("policy number", 10, None, None)
            .unwrap();
        let filter = quarry_kit::filter::parse("team=hr").unwrap();
        let query = compile(&filter, shard.meta_field()).unwrap();
        let filtered = shard
            .search_keyword("policy number", 10, None, Some(query.as_ref()))
            .unwrap();
        assert_eq!(filtered.len(), 2);
        for hit in &filtered {
            let unfiltered = all.iter().find(|other| other.doc_id == hit.doc_id).unwrap();
            assert_eq!(hit.score, unfiltered.score);
        }
    }

    #[test]
    fn a_malformed_filter_is_refused_naming_the_field() {
        let (_directory, shard) = shard_with_metadata();
        let filter = Filter {
            kind: Some(Kind::Field(FieldCondition {
                field: "year".to_string(),
                test: None,
            })),
        };
        let error = compile(&filter, shard.meta_field()).err().unwrap();
        assert!(error.to_string().starts_with("filter: year:"), "{error}");
        assert_eq!(
            tonic::Status::from(error).code(),
            tonic::Code::InvalidArgument
        );
    }
}
