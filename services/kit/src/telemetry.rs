//! The process-wide `tracing` subscriber: human-readable or JSON lines, filtered by `RUST_LOG`
//! (default `info`), written to stderr so that client commands keep stdout for their output.

use tracing_subscriber::{fmt, EnvFilter};

/// Log line format, from `log_format` in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Installs the global subscriber; a second call is a no-op.
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
