//! What every Quarry role shares: layered configuration, member discovery, the gRPC server
//! bootstrap (health, reflection, graceful shutdown), logging, and text utilities.

pub mod config;
pub mod discovery;
pub mod error;
pub mod openai;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod text;

pub use config::QuarryConfig;
pub use error::KitError;
