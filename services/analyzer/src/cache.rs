//! In-memory caches of analyses and embeddings (size + TTL, `moka`), with hit and miss
//! counters. Analyses are keyed by the question trimmed with its whitespace collapsed but its
//! case kept: the entity rules read capitals, so "paris" and "Paris" may analyse
//! differently. Embeddings are keyed by a 128-bit hash of the exact text (the encoder sees
//! every character, so any normalisation could hand back another text's vector; the hash
//! keeps a long text from costing its length twice) and bounded by the bytes of their
//! vectors. Only queries are cached: a document is embedded once, when it is ingested.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use quarry_proto::v1::Analysis;

use crate::metrics::metrics;

/// Size and lifetime of the caches; `entries == 0` turns both off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheOptions {
    /// Most analyses.
    pub entries: u64,
    /// Most bytes of embeddings (their vectors' floats); 0 turns that cache off.
    pub embedding_bytes: u64,
    pub ttl: Duration,
}

/// Hits and misses so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheCounts {
    pub analysis_hits: u64,
    pub analysis_misses: u64,
    pub embedding_hits: u64,
    pub embedding_misses: u64,
}

#[derive(Debug, Default)]
struct Counters {
    analysis_hits: AtomicU64,
    analysis_misses: AtomicU64,
    embedding_hits: AtomicU64,
    embedding_misses: AtomicU64,
}

#[derive(Clone)]
pub struct AnalyzerCaches {
    analyses: Option<Cache<String, Analysis>>,
    embeddings: Option<Cache<u128, Arc<Vec<f32>>>>,
    counters: Arc<Counters>,
}

/// The analysis cache key: trimmed, inner whitespace runs collapsed to one space.
pub fn analysis_key(query: &str) -> String {
    query.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The embedding cache key: xxh3-128 of the exact text.
fn embedding_key(text: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(text.as_bytes())
}

impl AnalyzerCaches {
    pub fn new(options: CacheOptions) -> Self {
        let build = || (options.entries > 0).then_some(());
        Self {
            analyses: build().map(|()| {
                Cache::builder()
                    .max_capacity(options.entries)
                    .time_to_live(options.ttl)
                    .build()
            }),
            embeddings: build().filter(|()| options.embedding_bytes > 0).map(|()| {
                Cache::builder()
                    .max_capacity(options.embedding_bytes)
                    .weigher(|_, vector: &Arc<Vec<f32>>| {
                        (vector.len() * 4 + 48).min(u32::MAX as usize) as u32
                    })
                    .time_to_live(options.ttl)
                    .build()
            }),
            counters: Arc::new(Counters::default()),
        }
    }

    /// No caching.
    pub fn disabled() -> Self {
        Self::new(CacheOptions {
            entries: 0,
            embedding_bytes: 0,
            ttl: Duration::ZERO,
        })
    }

    pub fn counts(&self) -> CacheCounts {
        CacheCounts {
            analysis_hits: self.counters.analysis_hits.load(Ordering::Relaxed),
            analysis_misses: self.counters.analysis_misses.load(Ordering::Relaxed),
            embedding_hits: self.counters.embedding_hits.load(Ordering::Relaxed),
            embedding_misses: self.counters.embedding_misses.load(Ordering::Relaxed),
        }
    }

    pub fn analysis(&self, query: &str) -> Option<Analysis> {
        let cache = self.analyses.as_ref()?;
        let found = cache.get(&analysis_key(query));
        let (counter, metric) = if found.is_some() {
            (&self.counters.analysis_hits, &metrics().cache_hits)
        } else {
            (&self.counters.analysis_misses, &metrics().cache_misses)
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metric.with_label_values(&["analysis"]).inc();
        found
    }

    pub fn store_analysis(&self, query: &str, analysis: &Analysis) {
        if let Some(cache) = &self.analyses {
            cache.insert(analysis_key(query), analysis.clone());
        }
    }

    /// The cached vector of each text (`None` where missing), counting hits and misses.
    pub fn embeddings(&self, texts: &[String]) -> Vec<Option<Arc<Vec<f32>>>> {
        let Some(cache) = &self.embeddings else {
            return vec![None; texts.len()];
        };
        let found: Vec<Option<Arc<Vec<f32>>>> = texts
            .iter()
            .map(|text| cache.get(&embedding_key(text)))
            .collect();
        let hits = found.iter().filter(|vector| vector.is_some()).count() as u64;
        let misses = found.len() as u64 - hits;
        let counters = &self.counters;
        counters.embedding_hits.fetch_add(hits, Ordering::Relaxed);
        counters
            .embedding_misses
            .fetch_add(misses, Ordering::Relaxed);
        let analyzer_metrics = metrics();
        analyzer_metrics
            .cache_hits
            .with_label_values(&["embedding"])
            .inc_by(hits);
        analyzer_metrics
            .cache_misses
            .with_label_values(&["embedding"])
            .inc_by(misses);
        found
    }

    pub fn store_embedding(&self, text: &str, vector: &[f32]) {
        if let Some(cache) = &self.embeddings {
            cache.insert(embedding_key(text), Arc::new(vector.to_vec()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caches(entries: u64, ttl_ms: u64) -> AnalyzerCaches {
        AnalyzerCaches::new(CacheOptions {
            entries,
            embedding_bytes: 1024 * 1024,
            ttl: Duration::from_millis(ttl_ms),
        })
    }

    #[test]
    fn the_embedding_cache_is_bounded_by_bytes() {
        let caches = AnalyzerCaches::new(CacheOptions {
            entries: 100,
            embedding_bytes: 10 * (384 * 4 + 48),
            ttl: Duration::from_secs(60),
        });
        let texts: Vec<String> = (0..50).map(|number| format!("text {number}")).collect();
        for text in &texts {
            caches.store_embedding(text, &[0.5; 384]);
        }
        let cache = caches.embeddings.as_ref().unwrap();
        cache.run_pending_tasks();
        assert!(
            cache.weighted_size() <= 10 * (384 * 4 + 48),
            "{}",
            cache.weighted_size()
        );
        let kept = caches.embeddings(&texts).iter().flatten().count();
        assert!((1..=10).contains(&kept), "{kept}");
    }

    #[test]
    fn analyses_hit_across_whitespace_but_not_case_and_expire() {
        let caches = caches(100, 200);
        let analysis = Analysis {
            intent: "definition".to_string(),
            ..Analysis::default()
        };
        assert_eq!(caches.analysis("What is  Rust?"), None);
        caches.store_analysis("What is  Rust?", &analysis);
        assert_eq!(
            caches.analysis("  What is\tRust? ").as_ref(),
            Some(&analysis)
        );
        assert_eq!(caches.analysis("what is rust?"), None);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(caches.analysis("What is Rust?"), None);
        assert_eq!(
            caches.counts(),
            CacheCounts {
                analysis_hits: 1,
                analysis_misses: 3,
                ..CacheCounts::default()
            }
        );
    }

    #[test]
    fn embeddings_hit_only_for_the_exact_text_and_disabled_caches_count_nothing() {
        let caches = caches(100, 60_000);
        caches.store_embedding("kiwi bird", &[1.0, 0.0]);
        let found = caches.embeddings(&["kiwi bird".to_string(), "Kiwi bird".to_string()]);
        assert_eq!(found[0].as_deref(), Some(&vec![1.0, 0.0]));
        assert!(found[1].is_none());
        let counts = caches.counts();
        assert_eq!((counts.embedding_hits, counts.embedding_misses), (1, 1));
        let off = AnalyzerCaches::disabled();
        off.store_embedding("x", &[1.0]);
        assert!(off.embeddings(&["x".to_string()])[0].is_none());
        assert_eq!(off.counts(), CacheCounts::default());
    }
}
