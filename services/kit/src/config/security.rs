//! The security sections of the configuration: API keys (`[auth]`), TLS on the public API
//! (`[tls]`), admission on the gateway (`[admission]`) and mutual TLS between the roles
//! (`[internal_tls]`), with their checks.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::QuarryConfig;
use crate::error::KitError;

/// API keys: where the gateway reads them, how often, and the rate each key may call at.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AuthConfig {
    /// A JSON-lines file of keys (`quarry keys create --file`), e.g. a mounted Kubernetes
    /// Secret; re-read every `reload_ms`.
    pub keys_file: Option<PathBuf>,
    /// Keys kept in etcd under `/quarry/<cluster>/keys/` (`quarry keys create --etcd`),
    /// read from `discovery.etcd` every `reload_ms`.
    pub etcd_keys: bool,
    /// How often keys are re-read: an added or revoked key takes effect within this.
    pub reload_ms: u64,
    /// Calls per second each key may make (a token bucket per key id); 0: unlimited.
    pub rate_per_key: f64,
    /// Calls a key may make at once beyond its rate (the bucket's size).
    pub burst_per_key: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            keys_file: None,
            etcd_keys: false,
            reload_ms: 500,
            rate_per_key: 0.0,
            burst_per_key: 100,
        }
    }
}

impl AuthConfig {
    /// Whether any key source is configured (then every call needs a key).
    pub fn enabled(&self) -> bool {
        self.keys_file.is_some() || self.etcd_keys
    }
}

/// A server certificate and key (PEM), re-read from disk every `reload_ms`, so a renewed
/// certificate is served to new connections without a restart.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TlsConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub reload_ms: u64,
    /// The CA members trust when they dial a TLS gateway (the scheduler's agents do); the
    /// system's roots when unset.
    pub ca: Option<PathBuf>,
    /// The name a TLS gateway's certificate is checked for when members dial it by address
    /// (its Kubernetes Service's name, say); the address's host when unset.
    pub server_name: Option<String>,
    /// Where a TLS gateway also serves its health alone in plaintext (Kubernetes' gRPC
    /// probes speak no TLS), e.g. `0.0.0.0:7702`; none by default.
    pub health_listen: Option<String>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            reload_ms: 1000,
            ca: None,
            server_name: None,
            health_listen: None,
        }
    }
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }
}

/// Admission on the gateway. Each method class has a concurrency limit: a call beyond it is
/// answered `RESOURCE_EXHAUSTED` at once, with a retry pushback, instead of queueing. A
/// limit of 0 is derived from the machine's cores. Calls that send no `grpc-timeout` get
/// their class's default deadline.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AdmissionConfig {
    /// Search, GetDocument, ClusterStatus at once (0: 8 per core).
    pub search: usize,
    /// Ask and AskStream at once (0: one per two cores, at least one — an Ask keeps about
    /// two cores busy: the encoder's forward pass runs on every core).
    pub ask: usize,
    /// Ingest streams and Deletes at once (0: 2 per core).
    pub ingest: usize,
    /// Workflow calls at once, watches included (0: 64).
    pub workflows: usize,
    pub search_deadline_ms: u64,
    pub ask_deadline_ms: u64,
    pub workflows_deadline_ms: u64,
    /// Delete's default deadline (Ingest is bounded by `gateway.ingest_idle_ms` instead).
    pub write_deadline_ms: u64,
    /// Largest request message the public API accepts (internal hops take
    /// `server.max_message_bytes`).
    pub max_request_bytes: usize,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            search: 0,
            ask: 0,
            ingest: 0,
            workflows: 0,
            search_deadline_ms: 10_000,
            ask_deadline_ms: 60_000,
            workflows_deadline_ms: 10_000,
            write_deadline_ms: 60_000,
            max_request_bytes: 4 * 1024 * 1024,
        }
    }
}

impl AdmissionConfig {
    /// The limits with 0 replaced by their core-derived defaults: (search, ask, ingest, workflows).
    pub fn limits(&self) -> [usize; 4] {
        let cores = std::thread::available_parallelism().map_or(2, |cores| cores.get());
        let or = |value: usize, default: usize| if value == 0 { default } else { value };
        [
            or(self.search, 8 * cores),
            or(self.ask, (cores / 2).max(1)),
            or(self.ingest, 2 * cores),
            or(self.workflows, 64),
        ]
    }
}

/// Mutual TLS between the roles, switched on without downtime in three steps: every member
/// `permissive` (servers take TLS and plaintext; clients dial TLS to members that take it),
/// then every member `required` (TLS only, a certificate from the cluster's CA naming an
/// allowed role on every call).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InternalTlsMode {
    #[default]
    Off,
    Permissive,
    Required,
}

/// This member's certificate and the cluster's CA, as PEM files. The certificate names the
/// member's role and cluster: DNS name `<role>.<cluster>.quarry` (`quarry certs issue`
/// writes one; so does the Helm chart).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct InternalTlsConfig {
    pub mode: InternalTlsMode,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// How often the certificate files are checked for a renewal.
    pub reload_ms: u64,
    /// Where a role also serves its health alone in plaintext for Kubernetes' gRPC probes
    /// (they present no certificate), e.g. `0.0.0.0:7702`.
    pub health_listen: Option<String>,
}

impl Default for InternalTlsConfig {
    fn default() -> Self {
        Self {
            mode: InternalTlsMode::Off,
            ca: None,
            cert: None,
            key: None,
            reload_ms: 1000,
            health_listen: None,
        }
    }
}

impl QuarryConfig {
    /// Checks the security sections (called by `validate`).
    pub(super) fn validate_security(&self) -> Result<(), KitError> {
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(KitError::Config(
                "tls.cert and tls.key go together: set both or neither".to_string(),
            ));
        }
        if !(self.auth.rate_per_key.is_finite() && self.auth.rate_per_key >= 0.0) {
            return Err(KitError::Config(format!(
                "auth.rate_per_key must be 0 or more, got {}",
                self.auth.rate_per_key
            )));
        }
        if self.auth.reload_ms == 0 || self.tls.reload_ms == 0 || self.auth.burst_per_key == 0 {
            return Err(KitError::Config(
                "auth.reload_ms, auth.burst_per_key and tls.reload_ms must be positive".to_string(),
            ));
        }
        let internal = &self.internal_tls;
        if internal.mode != InternalTlsMode::Off
            && (internal.ca.is_none() || internal.cert.is_none() || internal.key.is_none())
        {
            return Err(KitError::Config(
                "internal_tls.mode permissive or required needs internal_tls.ca, internal_tls.cert and internal_tls.key"
                    .to_string(),
            ));
        }
        if self.auth.etcd_keys && self.discovery.etcd.is_empty() {
            return Err(KitError::Config(
                "auth.etcd_keys needs discovery.etcd (--etcd)".to_string(),
            ));
        }
        Ok(())
    }
}
