//! `EmbedBatcher`: embedding requests that arrive together share one `Encoder::encode` call,
//! run on one of a few dedicated worker threads, and each caller gets back its own vectors
//! in order. One worker gathers the next batch while the others encode theirs, so on a
//! machine with several cores batches run side by side, each on one core. The queue is
//! bounded: a request that finds it full is refused at once (`RESOURCE_EXHAUSTED`) rather
//! than waiting behind work it would time out on, and a request whose caller has gone by
//! the time it is gathered is dropped unencoded.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::Encoder;
use crate::error::AnalyzerError;
use crate::metrics::metrics;

/// How requests are gathered into batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    /// Most texts in one batch; a single larger request still runs, alone.
    pub max_batch: usize,
    /// How long the worker waits for more requests after the first one arrives.
    pub window: Duration,
    /// Worker threads, hence batches encoded at the same time.
    pub workers: usize,
    /// Requests that may wait for a worker; one more is refused at once.
    pub max_queued: usize,
}

/// Counts of what the batcher has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// `encode` calls made.
    pub batches: u64,
    /// Requests answered (each shares one batch with others or runs alone).
    pub requests: u64,
    /// Texts embedded.
    pub texts: u64,
    /// Most texts in one batch so far.
    pub largest_batch: u64,
}

#[derive(Debug, Default)]
struct BatchCounters {
    batches: AtomicU64,
    requests: AtomicU64,
    texts: AtomicU64,
    largest_batch: AtomicU64,
}

type EmbedResult = Result<Vec<Vec<f32>>, AnalyzerError>;

/// One caller's texts and where its vectors go.
struct EmbedJob {
    texts: Vec<String>,
    reply: oneshot::Sender<EmbedResult>,
}

/// Gathers concurrent embedding requests into batches for one encoder.
pub struct EmbedBatcher {
    encoder: Arc<dyn Encoder>,
    jobs: SyncSender<EmbedJob>,
    max_queued: usize,
    counters: Arc<BatchCounters>,
}

impl std::fmt::Debug for EmbedBatcher {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("EmbedBatcher")
            .field("encoder", &self.encoder.name())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl EmbedBatcher {
    /// Starts the worker threads; they stop once the batcher is dropped and its queue is
    /// empty.
    pub fn start(encoder: Arc<dyn Encoder>, options: BatchOptions) -> Result<Self, AnalyzerError> {
        let max_queued = options.max_queued.max(1);
        let (jobs, queue) = mpsc::sync_channel(max_queued);
        let counters = Arc::new(BatchCounters::default());
        let gatherer = Arc::new(Mutex::new(Gatherer {
            queue,
            options: BatchOptions {
                max_batch: options.max_batch.max(1),
                window: options.window,
                workers: options.workers.max(1),
                max_queued,
            },
            held_over: None,
        }));
        for number in 0..options.workers.max(1) {
            let worker = BatchWorker {
                encoder: Arc::clone(&encoder),
                gatherer: Arc::clone(&gatherer),
                counters: Arc::clone(&counters),
            };
            std::thread::Builder::new()
                .name(format!("quarry-embed-{number}"))
                .spawn(move || worker.run())
                .map_err(|error| {
                    AnalyzerError::EncoderLoad(format!("cannot start an embedding worker: {error}"))
                })?;
        }
        Ok(Self {
            encoder,
            jobs,
            max_queued,
            counters,
        })
    }

    /// The encoder every batch runs on.
    pub fn encoder(&self) -> &Arc<dyn Encoder> {
        &self.encoder
    }

    /// Embeds `texts`, sharing an `encode` call with whatever other requests arrive alongside.
    pub async fn embed(&self, texts: Vec<String>) -> EmbedResult {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, vectors) = oneshot::channel();
        match self.jobs.try_send(EmbedJob { texts, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                metrics()
                    .embed_rejected
                    .with_label_values(&["queue_full"])
                    .inc();
                return Err(AnalyzerError::Overloaded(format!(
                    "the embedding queue is full ({} requests waiting); retry later",
                    self.max_queued
                )));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(AnalyzerError::Encoder(
                    "the embedding worker has stopped".to_string(),
                ))
            }
        }
        vectors
            .await
            .map_err(|_| AnalyzerError::Encoder("the embedding worker has stopped".to_string()))?
    }

    /// What the batcher has done so far.
    pub fn stats(&self) -> BatchStats {
        BatchStats {
            batches: self.counters.batches.load(Ordering::Relaxed),
            requests: self.counters.requests.load(Ordering::Relaxed),
            texts: self.counters.texts.load(Ordering::Relaxed),
            largest_batch: self.counters.largest_batch.load(Ordering::Relaxed),
        }
    }
}

/// The queue the workers take turns gathering from, and a job that did not fit the last
/// batch (it opens the next one, whichever worker gathers it).
struct Gatherer {
    queue: Receiver<EmbedJob>,
    options: BatchOptions,
    held_over: Option<EmbedJob>,
}

/// One worker thread: gathers a batch while holding the queue, then encodes it.
struct BatchWorker {
    encoder: Arc<dyn Encoder>,
    gatherer: Arc<Mutex<Gatherer>>,
    counters: Arc<BatchCounters>,
}

impl BatchWorker {
    fn run(self) {
        loop {
            let batch = match self.gatherer.lock() {
                Ok(mut gatherer) => gatherer.next_batch(),
                Err(_) => None,
            };
            let Some(batch) = batch else {
                break;
            };
            self.encode_and_reply(batch);
        }
        debug!("embedding worker stopped");
    }
}

impl Gatherer {
    /// Blocks for the first job, then gathers more until the batch is full, the window has
    /// passed, or the queue is closed. `None` once the queue is closed and empty.
    fn next_batch(&mut self) -> Option<Vec<EmbedJob>> {
        let first = loop {
            let job = match self.held_over.take() {
                Some(job) => job,
                None => self.queue.recv().ok()?,
            };
            if !abandoned(&job) {
                break job;
            }
        };
        let deadline = Instant::now() + self.options.window;
        let mut texts = first.texts.len();
        let mut batch = vec![first];
        while texts < self.options.max_batch {
            let next = match self.queue.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    match self.queue.recv_timeout(deadline - now) {
                        Ok(job) => job,
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            if abandoned(&next) {
                continue;
            }
            if texts + next.texts.len() > self.options.max_batch {
                self.held_over = Some(next);
                break;
            }
            texts += next.texts.len();
            batch.push(next);
        }
        Some(batch)
    }
}

/// Whether the job's caller has gone (its request was cancelled or timed out): its texts
/// are not encoded.
fn abandoned(job: &EmbedJob) -> bool {
    let gone = job.reply.is_closed();
    if gone {
        metrics()
            .embed_rejected
            .with_label_values(&["abandoned"])
            .inc();
    }
    gone
}

impl BatchWorker {
    /// One `encode` over every job's texts; the vectors, or the error, go back to each job.
    fn encode_and_reply(&self, batch: Vec<EmbedJob>) {
        let mut texts = Vec::with_capacity(batch.iter().map(|job| job.texts.len()).sum());
        let mut replies = Vec::with_capacity(batch.len());
        for job in batch {
            replies.push((job.texts.len(), job.reply));
            texts.extend(job.texts);
        }
        self.count(replies.len(), texts.len());
        let started = Instant::now();
        let encoded = catch_unwind(AssertUnwindSafe(|| self.encoder.encode(&texts)))
            .unwrap_or_else(|_| Err(AnalyzerError::Encoder("the encoder panicked".to_string())));
        let encoded = encoded.and_then(|vectors| {
            if vectors.len() == texts.len() {
                Ok(vectors)
            } else {
                Err(AnalyzerError::Encoder(format!(
                    "the encoder returned {} vectors for {} texts",
                    vectors.len(),
                    texts.len()
                )))
            }
        });
        let batch_metrics = metrics();
        batch_metrics.batch_size.observe(texts.len() as f64);
        batch_metrics
            .batch_duration
            .observe(started.elapsed().as_secs_f64());
        debug!(
            requests = replies.len(),
            texts = texts.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = encoded.is_ok(),
            "embedding batch encoded"
        );
        match encoded {
            Ok(vectors) => {
                let mut vectors = vectors.into_iter();
                for (count, reply) in replies {
                    // A caller that gave up (its request was cancelled) is no longer waiting.
                    let _ = reply.send(Ok(vectors.by_ref().take(count).collect()));
                }
            }
            Err(error) => {
                warn!(texts = texts.len(), error = %error, "embedding batch failed");
                for (_, reply) in replies {
                    let _ = reply.send(Err(same_error(&error)));
                }
            }
        }
    }

    fn count(&self, requests: usize, texts: usize) {
        let counters = &self.counters;
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters
            .requests
            .fetch_add(requests as u64, Ordering::Relaxed);
        counters.texts.fetch_add(texts as u64, Ordering::Relaxed);
        counters
            .largest_batch
            .fetch_max(texts as u64, Ordering::Relaxed);
    }
}

/// A copy of a batch's error for each of its callers.
fn same_error(error: &AnalyzerError) -> AnalyzerError {
    match error {
        AnalyzerError::InvalidArgument { field, reason } => AnalyzerError::InvalidArgument {
            field,
            reason: reason.clone(),
        },
        AnalyzerError::NoEncoder => AnalyzerError::NoEncoder,
        AnalyzerError::EncoderLoad(message) => AnalyzerError::EncoderLoad(message.clone()),
        AnalyzerError::Encoder(message) => AnalyzerError::Encoder(message.clone()),
        AnalyzerError::EncoderUnavailable(message) => {
            AnalyzerError::EncoderUnavailable(message.clone())
        }
        AnalyzerError::Overloaded(message) => AnalyzerError::Overloaded(message.clone()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::encoder::HashEncoder;

    /// The hash encoder, counting its `encode` calls and optionally failing them.
    struct CountingEncoder {
        inner: HashEncoder,
        calls: AtomicUsize,
        fail: bool,
    }

    impl Encoder for CountingEncoder {
        fn name(&self) -> String {
            self.inner.name()
        }
        fn dimensions(&self) -> usize {
            self.inner.dimensions()
        }
        fn encode(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, AnalyzerError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            // Long enough that callers pile up behind a running batch.
            std::thread::sleep(Duration::from_millis(2));
            if self.fail {
                return Err(AnalyzerError::EncoderUnavailable(
                    "backend down".to_string(),
                ));
            }
            self.inner.encode(texts)
        }
    }

    fn counting(fail: bool) -> Arc<CountingEncoder> {
        Arc::new(CountingEncoder {
            inner: HashEncoder::new(64),
            calls: AtomicUsize::new(0),
            fail,
        })
    }

    fn options() -> BatchOptions {
        BatchOptions {
            max_batch: 32,
            window: Duration::from_millis(1),
            workers: 2,
            max_queued: 64,
        }
    }

    /// An encoder that holds every `encode` until released, recording the texts it encoded.
    struct GatedEncoder {
        gate: Mutex<std::sync::mpsc::Receiver<()>>,
        entered: AtomicUsize,
        encoded: Mutex<Vec<String>>,
    }

    impl Encoder for GatedEncoder {
        fn name(&self) -> String {
            "gated".to_string()
        }
        fn dimensions(&self) -> usize {
            2
        }
        fn encode(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, AnalyzerError> {
            self.entered.fetch_add(1, Ordering::SeqCst);
            let _ = self.gate.lock().unwrap().recv();
            self.encoded.lock().unwrap().extend(texts.iter().cloned());
            Ok(texts.iter().map(|_| vec![1.0, 0.0]).collect())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_at_once_and_abandoned_requests_are_not_encoded() {
        let (release, gate) = std::sync::mpsc::channel();
        let encoder = Arc::new(GatedEncoder {
            gate: Mutex::new(gate),
            entered: AtomicUsize::new(0),
            encoded: Mutex::new(Vec::new()),
        });
        let options = BatchOptions {
            max_batch: 1,
            window: Duration::ZERO,
            workers: 1,
            max_queued: 1,
        };
        let batcher = Arc::new(EmbedBatcher::start(encoder.clone(), options).unwrap());
        let embed = |text: &str| {
            let batcher = Arc::clone(&batcher);
            let text = text.to_string();
            tokio::spawn(async move { batcher.embed(vec![text]).await })
        };
        // "running" holds the only worker; "abandoned" then takes the one queue slot.
        let running = embed("running");
        while encoder.entered.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let abandoned = embed("abandoned");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = tokio::time::timeout(
            Duration::from_secs(1),
            batcher.embed(vec!["refused".to_string()]),
        )
        .await
        .expect("a full queue answers at once");
        assert!(
            matches!(&refused, Err(AnalyzerError::Overloaded(message)) if message.contains("queue is full")),
            "{refused:?}"
        );
        abandoned.abort();
        let _ = abandoned.await;
        release.send(()).unwrap();
        assert!(running.await.unwrap().is_ok());
        let next = embed("next");
        release.send(()).unwrap();
        assert!(next.await.unwrap().is_ok());
        assert_eq!(*encoder.encoded.lock().unwrap(), ["running", "next"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_callers_share_batches_and_get_their_own_vectors() {
        let encoder = counting(false);
        let batcher = Arc::new(EmbedBatcher::start(encoder.clone(), options()).unwrap());
        let callers: Vec<_> = (0..50)
            .map(|caller| {
                let batcher = Arc::clone(&batcher);
                tokio::spawn(async move {
                    let texts: Vec<String> = (0..1 + caller % 3)
                        .map(|text| format!("caller {caller} text {text} about insulin"))
                        .collect();
                    let vectors = batcher.embed(texts.clone()).await.unwrap();
                    (texts, vectors)
                })
            })
            .collect();
        let reference = HashEncoder::new(64);
        for caller in callers {
            let (texts, vectors) = caller.await.unwrap();
            assert_eq!(vectors, reference.encode(&texts).unwrap());
        }
        let calls = encoder.calls.load(Ordering::SeqCst);
        let stats = batcher.stats();
        assert!(calls < 50, "{calls} encode calls for 50 callers");
        assert_eq!(stats.batches, calls as u64);
        assert_eq!(stats.requests, 50);
        assert_eq!(
            stats.texts,
            (0..50).map(|caller| 1 + caller % 3).sum::<u64>()
        );
        assert!(stats.largest_batch <= 32, "{stats:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn an_encoder_error_reaches_every_caller_of_the_batch() {
        let batcher = Arc::new(EmbedBatcher::start(counting(true), options()).unwrap());
        let callers: Vec<_> = (0..8)
            .map(|caller| {
                let batcher = Arc::clone(&batcher);
                tokio::spawn(async move { batcher.embed(vec![format!("text {caller}")]).await })
            })
            .collect();
        for caller in callers {
            let error = caller.await.unwrap().unwrap_err();
            assert!(
                matches!(error, AnalyzerError::EncoderUnavailable(ref message) if message == "backend down"),
                "{error:?}"
            );
        }
    }

    /// Sleeps in `encode` and records how many calls overlapped.
    struct OverlapEncoder {
        running: AtomicUsize,
        most: AtomicUsize,
    }

    impl Encoder for OverlapEncoder {
        fn name(&self) -> String {
            "overlap".to_string()
        }
        fn dimensions(&self) -> usize {
            1
        }
        fn encode(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, AnalyzerError> {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(30));
            self.running.fetch_sub(1, Ordering::SeqCst);
            Ok(texts.iter().map(|_| vec![1.0]).collect())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn several_workers_encode_batches_side_by_side_and_one_never_does() {
        for workers in [1, 2] {
            let encoder = Arc::new(OverlapEncoder {
                running: AtomicUsize::new(0),
                most: AtomicUsize::new(0),
            });
            let batcher = Arc::new(
                EmbedBatcher::start(
                    encoder.clone(),
                    BatchOptions {
                        max_batch: 4,
                        window: Duration::ZERO,
                        workers,
                        max_queued: 64,
                    },
                )
                .unwrap(),
            );
            let callers: Vec<_> = (0..24)
                .map(|caller| {
                    let batcher = Arc::clone(&batcher);
                    tokio::spawn(async move { batcher.embed(vec![format!("t{caller}")]).await })
                })
                .collect();
            for caller in callers {
                assert_eq!(caller.await.unwrap().unwrap(), vec![vec![1.0]]);
            }
            assert_eq!(encoder.most.load(Ordering::SeqCst), workers);
        }
    }

    #[tokio::test]
    async fn a_request_larger_than_max_batch_still_runs_and_empty_ones_skip_the_encoder() {
        let encoder = counting(false);
        let batcher = EmbedBatcher::start(
            encoder.clone(),
            BatchOptions {
                max_batch: 2,
                window: Duration::ZERO,
                workers: 1,
                max_queued: 64,
            },
        )
        .unwrap();
        let texts: Vec<String> = (0..5).map(|text| format!("text {text}")).collect();
        let vectors = batcher.embed(texts.clone()).await.unwrap();
        assert_eq!(vectors, HashEncoder::new(64).encode(&texts).unwrap());
        assert!(batcher.embed(Vec::new()).await.unwrap().is_empty());
        assert_eq!(encoder.calls.load(Ordering::SeqCst), 1);
    }
}
