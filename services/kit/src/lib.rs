//! What every Quarry role shares: layered configuration, member discovery, the catalog of
//! collections and metadata filters, the gRPC server
//! bootstrap (health, reflection, graceful shutdown, tracing and metrics layers), logging and
//! OpenTelemetry, Prometheus metrics, TLS with certificate reload, text utilities and the
//! write-version clock.

pub mod collections;
pub mod config;
pub mod discovery;
pub mod durable;
pub mod election;
pub mod error;
pub mod filter;
pub mod grpc_body;
pub mod metrics;
pub mod mtls;
pub mod openai;
pub mod placement;
pub mod ranking;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod text;
pub mod tls;
pub mod version_clock;

pub use config::QuarryConfig;
pub use error::KitError;
pub use version_clock::VersionClock;
