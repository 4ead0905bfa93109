//! Corpus statistics for BM25: what a shard reports (`CollectStats`), what the gateway sums
//! over every shard, and the tantivy `Bm25StatisticsProvider` that scores with the sums, so
//! a document's score does not depend on how the corpus is split into shards.

use std::collections::HashMap;

use tantivy::query::Bm25StatisticsProvider;
use tantivy::schema::Field;
use tantivy::{Searcher, Term};

/// Document count, token count of the body field, and document frequency per term.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CorpusStatistics {
    pub num_docs: u64,
    pub total_num_tokens: u64,
    pub doc_freqs: HashMap<String, u64>,
}

impl CorpusStatistics {
    /// Adds another shard's statistics to these.
    pub fn add(&mut self, other: &CorpusStatistics) {
        self.num_docs += other.num_docs;
        self.total_num_tokens += other.total_num_tokens;
        for (term, doc_freq) in &other.doc_freqs {
            *self.doc_freqs.entry(term.clone()).or_default() += doc_freq;
        }
    }
}

/// Scores with global statistics where they are known and the local searcher's elsewhere,
/// clamped so that no input can break BM25's invariants (doc_freq <= num_docs, num_docs >= 1).
pub struct GlobalStatisticsProvider<'a> {
    pub global: &'a CorpusStatistics,
    pub local: &'a Searcher,
    pub body: Field,
}

impl GlobalStatisticsProvider<'_> {
    fn num_docs(&self) -> tantivy::Result<u64> {
        let local = Bm25StatisticsProvider::total_num_docs(self.local)?;
        Ok(self.global.num_docs.max(local).max(1))
    }
}

impl Bm25StatisticsProvider for GlobalStatisticsProvider<'_> {
    fn total_num_tokens(&self, field: Field) -> tantivy::Result<u64> {
        let local = Bm25StatisticsProvider::total_num_tokens(self.local, field)?;
        if field != self.body {
            return Ok(local);
        }
        Ok(self.global.total_num_tokens.max(local))
    }

    fn total_num_docs(&self) -> tantivy::Result<u64> {
        self.num_docs()
    }

    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        let local = self.local.doc_freq(term)?;
        let global = term
            .value()
            .as_str()
            .and_then(|text| self.global.doc_freqs.get(text).copied())
            .unwrap_or(local);
        Ok(global.max(local).min(self.num_docs()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_sums_counts_and_merges_terms() {
        let mut total = CorpusStatistics::default();
        let shard = |docs, tokens, terms: &[(&str, u64)]| CorpusStatistics {
            num_docs: docs,
            total_num_tokens: tokens,
            doc_freqs: terms.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
        };
        total.add(&shard(3, 30, &[("cell", 2), ("gene", 1)]));
        total.add(&shard(2, 10, &[("cell", 1)]));
        assert_eq!(total.num_docs, 5);
        assert_eq!(total.total_num_tokens, 40);
        assert_eq!(total.doc_freqs["cell"], 3);
        assert_eq!(total.doc_freqs["gene"], 1);
    }
}
