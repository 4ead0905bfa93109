//! The `/metrics` endpoint: a small HTTP/1.1 server on `--metrics-addr` that answers
//! `GET /metrics` with the registry in the Prometheus text format, anything else with 404,
//! and stops with the process's shutdown token.

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::{encode_text, register_common};
use crate::error::KitError;
use crate::server::bind;

/// The content type of the Prometheus text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds `address` and serves `/metrics` there on a task until `shutdown` is cancelled;
/// returns the bound address (port 0 picks a free one).
pub async fn spawn_metrics_endpoint(
    address: &str,
    shutdown: CancellationToken,
) -> Result<SocketAddr, KitError> {
    register_common();
    let listener = bind(address).await?;
    let local_address = listener
        .local_addr()
        .map_err(|error| KitError::Serve(error.to_string()))?;
    tokio::spawn(serve_metrics(listener, shutdown));
    Ok(local_address)
}

/// Serves `/metrics` on `listener` until `shutdown` is cancelled.
pub async fn serve_metrics(listener: TcpListener, shutdown: CancellationToken) {
    if let Ok(address) = listener.local_addr() {
        info!(address = %address, "serving metrics");
    }
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                debug!(error = %error, "metrics connection not accepted");
                continue;
            }
        };
        let connection_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let connection =
                http1::Builder::new().serve_connection(TokioIo::new(stream), service_fn(answer));
            tokio::select! {
                served = connection => {
                    if let Err(error) = served {
                        debug!(error = %error, "metrics connection ended");
                    }
                }
                () = connection_shutdown.cancelled() => {}
            }
        });
    }
}

async fn answer(
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let found = request.uri().path() == "/metrics"
        && matches!(*request.method(), Method::GET | Method::HEAD);
    let response = if found {
        Response::builder()
            .header(http::header::CONTENT_TYPE, TEXT_FORMAT)
            .body(Full::new(Bytes::from(encode_text())))
    } else {
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"not found; try /metrics\n")))
    };
    Ok(response.unwrap_or_default())
}
