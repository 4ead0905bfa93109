//! The gateway's front door: one tower layer around `quarry.v1.Quarry` (health and
//! reflection are served beside it, never counted or checked). In order, for every call:
//!
//! 1. **Authenticate** the `authorization: Bearer <key>` header against the API keys in
//!    force (`KeyRing`, re-read from its file or etcd): missing, malformed, unknown, expired
//!    or revoked is `UNAUTHENTICATED`.
//! 2. **Authorise**: the method's scope (`read`, `write`, `admin`) and the key's collections;
//!    a valid key without them is `PERMISSION_DENIED`. The handler is never reached.
//! 3. **Rate**: the key's token bucket (`auth.rate_per_key`).
//! 4. **Admit**: a slot of the method's class (search, ask, ingest, workflows); when none is
//!    free, `RESOURCE_EXHAUSTED` at once. Refusals carry `grpc-retry-pushback-ms` and a
//!    `google.rpc.RetryInfo`.
//! 5. **Deadline**: a call that sent no `grpc-timeout` gets its class's default.
//!
//! The slot is held until the response (a stream included) ends. The key id — never the
//! secret — goes on the call's span (`key_id`) and into `quarry_gateway_calls_by_key_total`.

mod admission;
pub mod key_store;
pub mod keys;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::HeaderValue;
use quarry_kit::config::AdmissionConfig;
use quarry_kit::grpc_body::{grpc_status, CompletionBody};
use tonic::body::Body;
use tonic::metadata::MetadataValue;
use tonic::server::NamedService;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

pub use admission::{Gate, KeyRates};
use key_store::KeyRing;
use keys::{now_s, Scope};

use crate::metrics::metrics;

/// The collection workflows read and write.
const DEFAULT_COLLECTION: &str = quarry_kit::collections::DEFAULT_COLLECTION;

/// The collections the caller's key may use, handed to the handlers (which know the
/// request's collection) in the request's extensions; absent when the API needs no key.
#[derive(Debug, Clone)]
pub struct CollectionGrant {
    pub key_id: String,
    /// Empty: every collection.
    pub collections: Arc<Vec<String>>,
}

impl CollectionGrant {
    pub fn allows(&self, collection: &str) -> bool {
        self.collections.is_empty() || self.collections.iter().any(|name| name == collection)
    }
}

/// Methods that share one concurrency limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Search,
    Ask,
    Ingest,
    Workflows,
}

impl Class {
    pub const ALL: [Class; 4] = [Class::Search, Class::Ask, Class::Ingest, Class::Workflows];

    pub fn name(self) -> &'static str {
        match self {
            Class::Search => "search",
            Class::Ask => "ask",
            Class::Ingest => "ingest",
            Class::Workflows => "workflows",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What a method needs and how it is admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodRule {
    pub class: Class,
    pub scope: Scope,
    /// Whether the class's default deadline applies (not to Ingest, bounded by its idle
    /// timeout, nor to WatchWorkflow, which lasts as long as its workflow).
    pub default_deadline: bool,
    /// Whether the method works on `default` alone (workflows), so a key limited to other
    /// collections is refused here; the document and collection methods check the request's
    /// own collection in their handlers (`CollectionGrant`).
    pub default_collection_only: bool,
}

/// The rule of a `quarry.v1.Quarry` method; `None` for a name the service does not have
/// (it still needs a valid key, and gets UNIMPLEMENTED from tonic).
pub fn rule(method: &str) -> Option<MethodRule> {
    let (class, scope, default_deadline, default_collection_only) = match method {
        "Search" | "GetDocument" => (Class::Search, Scope::Read, true, false),
        "ListCollections" | "GetCollection" => (Class::Search, Scope::Read, true, false),
        "ClusterStatus" => (Class::Search, Scope::Admin, true, false),
        "Ask" | "AskStream" => (Class::Ask, Scope::Read, true, false),
        "Ingest" => (Class::Ingest, Scope::Write, false, false),
        "Delete" => (Class::Ingest, Scope::Write, true, false),
        "CreateCollection" | "DeleteCollection" => (Class::Ingest, Scope::Admin, true, false),
        "SubmitWorkflow" | "CancelWorkflow" => (Class::Workflows, Scope::Write, true, true),
        "GetWorkflow" | "ListWorkflows" => (Class::Workflows, Scope::Read, true, true),
        "WatchWorkflow" => (Class::Workflows, Scope::Read, false, true),
        _ => return None,
    };
    Some(MethodRule {
        class,
        scope,
        default_deadline,
        default_collection_only,
    })
}

/// Everything the front door decides with; shared by every connection.
pub struct FrontDoor {
    keys: Option<Arc<KeyRing>>,
    rates: Option<KeyRates>,
    gates: [Gate; 4],
    deadlines: [Duration; 4],
}

impl FrontDoor {
    /// `keys`: `None` leaves the API open (no key needed).
    pub fn new(
        keys: Option<Arc<KeyRing>>,
        rates: Option<KeyRates>,
        admission: &AdmissionConfig,
    ) -> Self {
        let limits = admission.limits();
        let millis = Duration::from_millis;
        Self {
            keys,
            rates,
            gates: limits.map(Gate::new),
            deadlines: [
                millis(admission.search_deadline_ms),
                millis(admission.ask_deadline_ms),
                millis(admission.write_deadline_ms),
                millis(admission.workflows_deadline_ms),
            ],
        }
    }

    /// Forgets rate buckets of idle keys; called now and then.
    pub fn tidy(&self) {
        if let Some(rates) = &self.rates {
            rates.retain_recent();
        }
    }

    /// Checks one call; on success, its slot and how long it may run.
    fn admit(&self, method: &str, headers: &http::HeaderMap) -> Result<Admitted, Status> {
        let rule = rule(method);
        let mut key_id = None;
        let mut grant = None;
        if let Some(ring) = &self.keys {
            let keys = ring.snapshot();
            let authorization = headers
                .get(http::header::AUTHORIZATION)
                .map(HeaderValue::as_bytes);
            let key = keys.verify(authorization, now_s()).map_err(|rejection| {
                metrics()
                    .auth
                    .with_label_values(&[rejection.outcome()])
                    .inc();
                tracing::info!(
                    method,
                    outcome = rejection.outcome(),
                    "call refused: {rejection}"
                );
                Status::unauthenticated(rejection.to_string())
            })?;
            let denied = |reason: String| {
                metrics().auth.with_label_values(&["denied"]).inc();
                tracing::info!(method, key_id = %key.id, "call refused: {reason}");
                Status::permission_denied(reason)
            };
            if let Some(rule) = rule {
                if !key.allows(rule.scope) {
                    return Err(denied(format!(
                        "API key {} lacks the `{}` scope that {method} needs",
                        key.id,
                        rule.scope.name()
                    )));
                }
                if rule.default_collection_only && !key.allows_collection(DEFAULT_COLLECTION) {
                    return Err(denied(format!(
                        "API key {} may not use collection `{DEFAULT_COLLECTION}`",
                        key.id
                    )));
                }
            }
            metrics().auth.with_label_values(&["ok"]).inc();
            if let (Some(rates), Some(rule)) = (&self.rates, rule) {
                if let Err(pushback) = rates.check(&key.id) {
                    metrics()
                        .rejected
                        .with_label_values(&[rule.class.name(), "rate"])
                        .inc();
                    return Err(busy(
                        format!("API key {} is over its rate; retry later", key.id),
                        pushback,
                    ));
                }
            }
            key_id = Some(key.id.clone());
            grant = Some(CollectionGrant {
                key_id: key.id.clone(),
                collections: Arc::new(key.collections.clone()),
            });
        }
        let Some(rule) = rule else {
            return Ok(Admitted {
                slot: None,
                key_id,
                grant,
                deadline: None,
            });
        };
        let gate = &self.gates[rule.class.index()];
        let Some(permit) = gate.try_admit() else {
            metrics()
                .rejected
                .with_label_values(&[rule.class.name(), "concurrency"])
                .inc();
            return Err(busy(
                format!(
                    "the gateway is busy: every {} slot is taken; retry later",
                    rule.class.name()
                ),
                gate.pushback(),
            ));
        };
        if let Some(key_id) = &key_id {
            metrics()
                .calls_by_key
                .with_label_values(&[key_id.as_str(), rule.class.name()])
                .inc();
        }
        Ok(Admitted {
            slot: Some((rule.class, permit)),
            key_id,
            grant,
            deadline: rule
                .default_deadline
                .then(|| self.deadlines[rule.class.index()]),
        })
    }
}

/// `RESOURCE_EXHAUSTED` with a retry pushback, as gRPC clients and Envoy read it.
fn busy(message: String, pushback: Duration) -> Status {
    let mut status = Status::with_error_details(
        Code::ResourceExhausted,
        message,
        ErrorDetails::with_retry_info(Some(pushback)),
    );
    if let Ok(value) = MetadataValue::try_from(pushback.as_millis().to_string()) {
        status
            .metadata_mut()
            .insert("grpc-retry-pushback-ms", value);
    }
    status
}

struct Admitted {
    slot: Option<(Class, tokio::sync::OwnedSemaphorePermit)>,
    key_id: Option<String>,
    grant: Option<CollectionGrant>,
    /// The default deadline, when the call is unary-like and sent none.
    deadline: Option<Duration>,
}

/// Puts the front door in front of a service.
#[derive(Clone)]
pub struct FrontDoorLayer(pub Arc<FrontDoor>);

impl<S> Layer<S> for FrontDoorLayer {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guarded {
            inner,
            door: Arc::clone(&self.0),
        }
    }
}

/// A service behind the front door.
#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    door: Arc<FrontDoor>,
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<http::Request<Body>> for Guarded<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let method = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let mut admitted = match self.door.admit(&method, request.headers()) {
            Ok(admitted) => admitted,
            Err(status) => return Box::pin(std::future::ready(Ok(status.into_http()))),
        };
        if let Some(key_id) = &admitted.key_id {
            tracing::Span::current().record("key_id", key_id.as_str());
        }
        if let Some(grant) = admitted.grant.take() {
            request.extensions_mut().insert(grant);
        }
        let mut timeout = None;
        if let Some(deadline) = admitted.deadline {
            if !request.headers().contains_key("grpc-timeout") {
                let value = format!("{}m", deadline.as_millis().min(99_999_999));
                if let Ok(value) = HeaderValue::from_str(&value) {
                    request.headers_mut().insert("grpc-timeout", value);
                }
                timeout = Some(deadline);
            }
        }
        // The clone that was made ready is the one called (tower's rule for Clone services).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let door = Arc::clone(&self.door);
        Box::pin(async move {
            let started = Instant::now();
            let called = inner.call(request);
            let response = match timeout {
                Some(limit) => match tokio::time::timeout(limit, called).await {
                    Ok(response) => response?,
                    Err(_) => {
                        return Ok(Status::deadline_exceeded(format!(
                            "{method}: the default deadline of {} ms passed",
                            limit.as_millis()
                        ))
                        .into_http())
                    }
                },
                None => called.await?,
            };
            let Some((class, permit)) = admitted.slot else {
                return Ok(response);
            };
            let in_flight = metrics().admitted.with_label_values(&[class.name()]);
            in_flight.inc();
            let header_code = grpc_status(response.headers());
            Ok(response.map(|body| {
                Body::new(CompletionBody::new(
                    body,
                    header_code,
                    Box::new(move |_| {
                        door.gates[class.index()].observe(started.elapsed());
                        in_flight.dec();
                        drop(permit);
                    }),
                ))
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::front::keys::{generate, KeySet};

    fn door(keys: Option<KeySet>, admission: AdmissionConfig) -> FrontDoor {
        FrontDoor::new(keys.map(KeyRing::fixed), None, &admission)
    }

    fn headers(token: Option<&str>) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        if let Some(token) = token {
            headers.insert(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn scopes_follow_the_method_table() {
        let read = generate(vec![Scope::Read], Vec::new(), None, String::new()).unwrap();
        let write = generate(vec![Scope::Write], Vec::new(), None, String::new()).unwrap();
        let keys = KeySet::new([read.key.clone(), write.key.clone()]);
        let door = door(Some(keys), AdmissionConfig::default());
        for method in [
            "Search",
            "Ask",
            "AskStream",
            "GetDocument",
            "GetWorkflow",
            "WatchWorkflow",
            "ListWorkflows",
        ] {
            assert!(
                door.admit(method, &headers(Some(&read.token))).is_ok(),
                "{method}"
            );
            let error = door
                .admit(method, &headers(Some(&write.token)))
                .err()
                .unwrap();
            assert_eq!(error.code(), Code::PermissionDenied, "{method}");
        }
        for method in ["Ingest", "Delete", "SubmitWorkflow", "CancelWorkflow"] {
            assert!(
                door.admit(method, &headers(Some(&write.token))).is_ok(),
                "{method}"
            );
            let error = door
                .admit(method, &headers(Some(&read.token)))
                .err()
                .unwrap();
            assert_eq!(error.code(), Code::PermissionDenied, "{method}");
        }
        let error = door
            .admit("ClusterStatus", &headers(Some(&read.token)))
            .err()
            .unwrap();
        assert_eq!(error.code(), Code::PermissionDenied);
        let error = door.admit("Search", &headers(None)).err().unwrap();
        assert_eq!(error.code(), Code::Unauthenticated);
        let error = door.admit("NoSuchMethod", &headers(None)).err().unwrap();
        assert_eq!(error.code(), Code::Unauthenticated);
    }

    #[test]
    fn a_key_limited_to_other_collections_gets_a_grant_and_is_denied_workflows() {
        let key = generate(vec![Scope::Admin], vec!["hr".into()], None, String::new()).unwrap();
        let door = door(
            Some(KeySet::new([key.key.clone()])),
            AdmissionConfig::default(),
        );
        let error = door
            .admit("SubmitWorkflow", &headers(Some(&key.token)))
            .err()
            .unwrap();
        assert_eq!(error.code(), Code::PermissionDenied);
        let admitted = door
            .admit("Search", &headers(Some(&key.token)))
            .ok()
            .unwrap();
        let grant = admitted.grant.unwrap();
        assert!(grant.allows("hr") && !grant.allows("default"));
        assert!(door
            .admit("ClusterStatus", &headers(Some(&key.token)))
            .is_ok());
    }

    #[test]
    fn a_full_class_is_refused_with_a_pushback_and_others_still_admit() {
        let admission = AdmissionConfig {
            ask: 1,
            ..AdmissionConfig::default()
        };
        let door = door(None, admission);
        let held = door.admit("Ask", &headers(None)).ok().unwrap();
        let refused = door.admit("AskStream", &headers(None)).err().unwrap();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(refused.metadata().get("grpc-retry-pushback-ms").is_some());
        assert!(refused.get_details_retry_info().is_some());
        assert!(door.admit("Search", &headers(None)).is_ok());
        drop(held);
        assert!(door.admit("Ask", &headers(None)).is_ok());
    }
}
