//! `ShardClient`: how the gateway calls retriever shards — one place for replica choice,
//! hedging, retry on another replica, per-phase time limits and partial results, behind the
//! small `Shards` trait (the member list and one call to one replica), so that all of it is
//! unit-tested in-process against fake shards (`tests.rs`) and the query path above it
//! (`fan_out.rs`) only says which shards to ask what.
//!
//! One shard call: the replica the balancer puts first; hedged on the next one when it
//! outlives the recent p95 of that (shard, rpc) — the first success wins; on a failure
//! another replica might not have, retried once on a replica not tried yet. Every attempt
//! runs under the phase's deadline, never a fresh one: a retry gets what the first try left.
//! A phase asks many shards at once and reports those with no answering replica instead of
//! failing.

mod balancer;
mod grpc;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use quarry_kit::config::ReplicaSelection;
use quarry_kit::discovery::Member;
use quarry_kit::metrics::code_name;
use quarry_proto::v1::{
    CollectStatsRequest, CorpusStats, FetchRequest, FetchResponse, ShardInfoRequest,
    ShardInfoResponse, ShardSearchRequest, ShardSearchResponse,
};
use tokio::time::Instant;
use tonic::Status;
use tracing::field::Empty;
use tracing::{warn, Instrument, Span};

pub use balancer::ReplicaBalancer;
pub use grpc::GrpcShards;

use crate::error::GatewayError;
use crate::metrics::metrics;

/// The retriever rpcs the gateway calls on a query's path (and for cluster status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rpc {
    CollectStats,
    Search,
    Fetch,
    ShardInfo,
}

impl Rpc {
    pub fn as_str(self) -> &'static str {
        match self {
            Rpc::CollectStats => "collect_stats",
            Rpc::Search => "search",
            Rpc::Fetch => "fetch",
            Rpc::ShardInfo => "shard_info",
        }
    }
}

/// One request to a shard.
#[derive(Debug, Clone)]
pub enum ShardCall {
    CollectStats(CollectStatsRequest),
    /// Boxed: a search request (query vector, statistics, filter) is much larger than the rest.
    Search(Box<ShardSearchRequest>),
    Fetch(FetchRequest),
    ShardInfo(ShardInfoRequest),
}

impl ShardCall {
    pub fn rpc(&self) -> Rpc {
        match self {
            ShardCall::CollectStats(_) => Rpc::CollectStats,
            ShardCall::Search(_) => Rpc::Search,
            ShardCall::Fetch(_) => Rpc::Fetch,
            ShardCall::ShardInfo(_) => Rpc::ShardInfo,
        }
    }
}

/// A shard's answer to a `ShardCall` of the same kind.
#[derive(Debug, Clone)]
pub enum ShardReply {
    CollectStats(CorpusStats),
    Search(ShardSearchResponse),
    Fetch(FetchResponse),
    ShardInfo(ShardInfoResponse),
}

impl ShardReply {
    /// The reply's size on the wire (protobuf encoded).
    pub fn encoded_len(&self) -> usize {
        use prost::Message;
        match self {
            ShardReply::CollectStats(reply) => reply.encoded_len(),
            ShardReply::Search(reply) => reply.encoded_len(),
            ShardReply::Fetch(reply) => reply.encoded_len(),
            ShardReply::ShardInfo(reply) => reply.encoded_len(),
        }
    }
}

/// The shards as the client sees them: who serves each, and one call to one replica.
#[tonic::async_trait]
pub trait Shards: Send + Sync + 'static {
    fn shard_count(&self) -> u32;
    /// Ready replicas of `shard`, in a stable order.
    fn replicas(&self, shard: u32) -> Vec<Member>;
    /// One call to one replica; `timeout` is sent along as its deadline.
    async fn call(
        &self,
        replica: &Member,
        call: ShardCall,
        timeout: Duration,
    ) -> Result<ShardReply, Status>;
}

/// A shard's reply and how many hedged calls it took.
#[derive(Debug)]
pub struct ShardAnswer {
    pub reply: ShardReply,
    pub hedges: u32,
}

/// What one phase (the same rpc to many shards) gathered.
#[derive(Debug, Default)]
pub struct PhaseAnswers {
    /// Shard and reply, in the order the calls were given.
    pub answered: Vec<(u32, ShardReply)>,
    /// Shards no replica of which answered, ascending.
    pub failed: Vec<u32>,
    pub hedges: u32,
    /// The newest placement epoch a shard refused a call with (routed by an older one).
    pub moved: Option<u64>,
}

/// Calls shards through `Shards`, with replica choice, hedging and one retry.
pub struct ShardClient {
    shards: Arc<dyn Shards>,
    balancer: ReplicaBalancer,
    hedging: bool,
}

impl ShardClient {
    pub fn new(shards: Arc<dyn Shards>, selection: ReplicaSelection, hedging: bool) -> Self {
        Self {
            shards,
            balancer: ReplicaBalancer::new(selection),
            hedging,
        }
    }

    pub fn shard_count(&self) -> u32 {
        self.shards.shard_count()
    }

    pub fn balancer(&self) -> &ReplicaBalancer {
        &self.balancer
    }

    /// Calls every listed shard at once, each under `timeout`; shards that do not answer
    /// are reported, not fatal.
    pub async fn call_each(&self, calls: Vec<(u32, ShardCall)>, timeout: Duration) -> PhaseAnswers {
        let rpc = calls.first().map(|(_, call)| call.rpc());
        let deadline = Instant::now() + timeout;
        let outcomes = join_all(calls.into_iter().map(|(shard, call)| async move {
            (shard, self.call_until(shard, call, deadline).await)
        }))
        .await;
        let mut phase = PhaseAnswers::default();
        for (shard, outcome) in outcomes {
            match outcome {
                Ok(answer) => {
                    phase.hedges += answer.hedges;
                    phase.answered.push((shard, answer.reply));
                }
                Err(GatewayError::Moved { epoch, .. }) => {
                    phase.moved = phase.moved.max(Some(epoch));
                    phase.failed.push(shard);
                }
                Err(error) => {
                    warn!(shard, rpc = rpc.map(Rpc::as_str), error = %error, "shard did not answer");
                    phase.failed.push(shard);
                }
            }
        }
        phase.failed.sort_unstable();
        phase
    }

    /// Calls one shard under `timeout`, hedged and retried as the module says.
    pub async fn call(
        &self,
        shard: u32,
        call: ShardCall,
        timeout: Duration,
    ) -> Result<ShardAnswer, GatewayError> {
        self.call_until(shard, call, Instant::now() + timeout).await
    }

    async fn call_until(
        &self,
        shard: u32,
        call: ShardCall,
        deadline: Instant,
    ) -> Result<ShardAnswer, GatewayError> {
        let rpc = call.rpc();
        let replicas = self.balancer.order(self.shards.replicas(shard));
        let Some(first_replica) = replicas.first() else {
            return Err(GatewayError::Unavailable(format!(
                "shard {shard} has no ready replica"
            )));
        };
        let hedge_delay = match replicas.get(1) {
            Some(_) if self.hedging => self.balancer.hedge_delay(shard, rpc),
            _ => None,
        };
        let mut hedges = 0;
        let mut tried = 1;
        // A first try has no span of its own: the replica's server span, a child of the
        // request's, says all there is. Hedges and retries get one, to be told apart.
        let first = self.attempt(shard, first_replica, &call, deadline);
        let outcome = match hedge_delay {
            None => first.await,
            Some(delay) => {
                tokio::pin!(first);
                tokio::select! {
                    outcome = &mut first => outcome,
                    _ = tokio::time::sleep(delay) => {
                        hedges += 1;
                        metrics().hedges.inc();
                        tried = 2;
                        let second = self
                            .attempt(shard, &replicas[1], &call, deadline)
                            .instrument(attempt_span(shard, &replicas[1], rpc, true, false));
                        tokio::pin!(second);
                        first_success(first, second).await
                    }
                }
            }
        };
        let error = match outcome {
            Ok(reply) => return Ok(ShardAnswer { reply, hedges }),
            Err(error) if !is_retryable(error.code()) => return Err(error),
            Err(error) => error,
        };
        let Some(retry_replica) = replicas.get(tried) else {
            return Err(error);
        };
        if Instant::now() >= deadline {
            return Err(error);
        }
        warn!(shard, error = %error, replica = retry_replica.replica, "retrying on another replica");
        metrics().retries.inc();
        let retry_span = attempt_span(shard, retry_replica, rpc, false, true);
        retry_span.record("after_error", code_name(error.code()));
        let reply = self
            .attempt(shard, retry_replica, &call, deadline)
            .instrument(retry_span)
            .await?;
        Ok(ShardAnswer { reply, hedges })
    }

    /// One call to one replica until `deadline`, counted as outstanding while it runs.
    async fn attempt(
        &self,
        shard: u32,
        replica: &Member,
        call: &ShardCall,
        deadline: Instant,
    ) -> Result<ShardReply, GatewayError> {
        let rpc = call.rpc();
        let started = Instant::now();
        let timeout = deadline.saturating_duration_since(started);
        if timeout.is_zero() {
            return Err(GatewayError::downstream(
                "retriever",
                Status::deadline_exceeded(format!("shard {shard}: no time left to call it")),
            ));
        }
        let _in_flight = self.balancer.begin(&replica.address);
        let outcome =
            match tokio::time::timeout(timeout, self.shards.call(replica, call.clone(), timeout))
                .await
            {
                Ok(Ok(reply)) => {
                    self.balancer
                        .record_success(shard, rpc, &replica.address, started.elapsed());
                    metrics()
                        .shard_reply_bytes
                        .with_label_values(&[rpc.as_str()])
                        .inc_by(reply.encoded_len() as u64);
                    Ok(reply)
                }
                Ok(Err(status)) => {
                    if is_retryable(status.code()) {
                        self.balancer.record_failure(&replica.address);
                    }
                    Err(GatewayError::moved(&status)
                        .unwrap_or_else(|| GatewayError::downstream("retriever", status)))
                }
                Err(_) => {
                    // A short limit says more about the caller's deadline than the replica.
                    if timeout >= PENALISED_TIMEOUT {
                        self.balancer.record_failure(&replica.address);
                    }
                    Err(GatewayError::downstream(
                        "retriever",
                        Status::deadline_exceeded(format!(
                            "shard {shard} replica {} timed out",
                            replica.replica
                        )),
                    ))
                }
            };
        metrics()
            .shard_call_duration
            .with_label_values(&[&shard.to_string()])
            .observe(started.elapsed().as_secs_f64());
        // Only a hedge's or retry's own span is marked failed: a first try runs in the
        // request's span, which may still succeed on another replica.
        let span = Span::current();
        let own_span = span.metadata().map(|metadata| metadata.name()) == Some(ATTEMPT_SPAN);
        if let (Err(error), true) = (&outcome, own_span) {
            span.record("otel.status_code", "ERROR");
            span.record("error.code", code_name(error.code()));
        }
        outcome
    }
}

/// The shortest timed-out attempt that counts against its replica.
const PENALISED_TIMEOUT: Duration = Duration::from_millis(100);

/// The name of a hedged or retried call's span.
const ATTEMPT_SPAN: &str = "retriever.call";

/// The client span of a hedged or retried call to one replica.
fn attempt_span(shard: u32, replica: &Member, rpc: Rpc, hedged: bool, retry: bool) -> Span {
    tracing::info_span!(
        ATTEMPT_SPAN,
        otel.kind = "client",
        otel.status_code = Empty,
        shard,
        replica = replica.replica,
        rpc = rpc.as_str(),
        hedged,
        retry,
        after_error = Empty,
        error.code = Empty,
    )
}

/// The first of two calls to succeed; the other's failure only if both fail.
async fn first_success<T>(
    mut first: std::pin::Pin<&mut impl Future<Output = Result<T, GatewayError>>>,
    mut second: std::pin::Pin<&mut impl Future<Output = Result<T, GatewayError>>>,
) -> Result<T, GatewayError> {
    tokio::select! {
        outcome = &mut first => match outcome {
            Ok(value) => Ok(value),
            Err(_) => second.await,
        },
        outcome = &mut second => match outcome {
            Ok(value) => Ok(value),
            Err(_) => first.await,
        },
    }
}

/// Failures another replica might not have. `RESOURCE_EXHAUSTED` is not one: a reply too
/// large is too large everywhere, and a replica that sheds load asks for back-off, which a
/// retry elsewhere would defeat.
fn is_retryable(code: tonic::Code) -> bool {
    !matches!(
        code,
        tonic::Code::InvalidArgument
            | tonic::Code::FailedPrecondition
            | tonic::Code::NotFound
            | tonic::Code::ResourceExhausted
    )
}
