//! The process-wide `tracing` subscriber and OpenTelemetry: log lines (human-readable, or
//! JSON with trace and span ids) filtered by `RUST_LOG` and written to stderr, so that client
//! commands keep stdout for their output; and, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, Quarry's spans exported over OTLP/gRPC
//! with W3C trace context carried across every gRPC hop.

mod export;
mod json_lines;
#[cfg(feature = "otlp-receiver")]
pub mod otlp_receiver;
mod propagation;
mod server_layer;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::{Level, Metadata};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer, Registry};

pub use export::{provider_with, ExportError};
pub use json_lines::JsonWithTraceIds;
pub use propagation::{
    extract_context, inject_current_context, is_enabled, traced, InjectTraceContext, TracedChannel,
};
pub use server_layer::{GrpcTraceLayer, GrpcTraceService};

/// Log line format, from `log_format` in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// How a serving process reports what it does.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    /// The `RUST_LOG` filter used when the variable is unset.
    pub default_filter: String,
    /// `service.name` when `OTEL_SERVICE_NAME` does not set one (`quarry-gateway`, ...).
    pub service_name: String,
    /// The `quarry.role` resource attribute (`gateway`, ... or `all` under `quarry up`).
    pub role: String,
}

/// Installed telemetry; `shutdown` exports the spans still queued.
#[must_use = "call shutdown() before the process exits, or queued spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is queued and stops the exporter (blocks up to the export timeout).
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        let stopped = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(error)) = stopped {
            eprintln!("warning: span exporter did not shut down cleanly: {error}");
        }
    }
}

/// Whether the standard OpenTelemetry variables ask for span export.
pub fn export_requested() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|value| value == "true")
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|value| value == "none");
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Installs the global subscriber for a serving process: logs, and OpenTelemetry spans
/// when export is requested or JSON logs want trace ids. Must run inside the tokio runtime.
/// A second call installs nothing.
pub fn init(settings: &TelemetrySettings) -> Result<Telemetry, ExportError> {
    let provider = if export_requested() {
        Some(export::otlp_provider(resource(settings))?)
    } else if settings.log_format == LogFormat::Json {
        // Ids for the log lines and propagation to the next hop; nothing is exported.
        Some(
            SdkTracerProvider::builder()
                .with_resource(resource(settings))
                .build(),
        )
    } else {
        None
    };
    let mut layers = vec![log_layer(settings.log_format, &settings.default_filter)];
    if let Some(provider) = &provider {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let spans = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("quarry"))
            .with_tracked_inactivity(false)
            .with_target(false)
            .with_threads(false)
            .with_location(false)
            .with_filter(filter_fn(exported))
            .boxed();
        layers.push(spans);
    }
    if tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .is_ok()
        && provider.is_some()
    {
        propagation::enable();
    }
    Ok(Telemetry { provider })
}

/// Installs a log-only subscriber (the client commands); a second call is a no-op.
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let _ = tracing_subscriber::registry()
        .with(vec![log_layer(format, default_filter)])
        .try_init();
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

fn log_layer(format: LogFormat, default_filter: &str) -> BoxedLayer {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let layer = fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Human => layer.with_target(false).with_filter(filter).boxed(),
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .event_format(JsonWithTraceIds {
                inner: fmt::format().json().flatten_event(true),
            })
            .with_filter(filter)
            .boxed(),
    }
}

/// What becomes part of a trace: Quarry's own spans (whatever `RUST_LOG` says), and its
/// warnings and errors as span events. Nothing from the libraries below.
fn exported(metadata: &Metadata<'_>) -> bool {
    let ours = metadata.target().starts_with("quarry");
    if metadata.is_span() {
        ours && *metadata.level() <= Level::INFO
    } else {
        ours && *metadata.level() <= Level::WARN
    }
}

fn resource(settings: &TelemetrySettings) -> Resource {
    let named_in_environment = std::env::var("OTEL_SERVICE_NAME").is_ok()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES")
            .is_ok_and(|attributes| attributes.contains("service.name="));
    let mut builder = Resource::builder().with_attributes([
        KeyValue::new("quarry.role", settings.role.clone()),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
    ]);
    if !named_in_environment {
        builder = builder.with_service_name(settings.service_name.clone());
    }
    builder.build()
}
