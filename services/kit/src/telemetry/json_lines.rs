//! JSON log lines that name the trace and span they were written in (`trace_id`,
//! `span_id`, the ids an OTLP backend shows), so that logs and traces join.

use std::fmt;

use opentelemetry::trace::TraceContextExt;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Wraps a JSON event format and puts the trace and span ids first on each line.
pub struct JsonWithTraceIds<F> {
    pub inner: F,
}

impl<S, N, F> FormatEvent<S, N> for JsonWithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(context, Writer::new(&mut line), event)?;
        let Some(fields) = line.strip_prefix('{') else {
            return writer.write_str(&line);
        };
        match current_ids(context) {
            Some((trace_id, span_id)) => {
                let separator = if fields.starts_with('}') { "" } else { "," };
                write!(
                    writer,
                    "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"{separator}{fields}"
                )
            }
            None => writer.write_str(&line),
        }
    }
}

/// The ids of the innermost span around the event that belongs to a trace.
fn current_ids<S, N>(context: &FmtContext<'_, S, N>) -> Option<(String, String)>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let mut scope = context.event_scope()?;
    tracing::dispatcher::get_default(|dispatch| {
        for span in scope.by_ref() {
            let Some(otel_context) = tracing_opentelemetry::get_otel_context(&span.id(), dispatch)
            else {
                continue;
            };
            let otel_span = otel_context.span();
            let span_context = otel_span.span_context();
            if span_context.is_valid() {
                return Some((
                    span_context.trace_id().to_string(),
                    span_context.span_id().to_string(),
                ));
            }
        }
        None
    })
}
