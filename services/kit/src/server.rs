//! Server bootstrap shared by every role: binds the listener, adds `grpc.health.v1.Health`
//! and server reflection (v1) beside the role's own services, applies the server-wide limits,
//! runs every call through the metrics and tracing layers, and on shutdown reports
//! NOT_SERVING, finishes in-flight calls, then returns.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Server};
use tonic_health::ServingStatus;
use tracing::info;

use crate::config::ServerConfig;
use crate::error::KitError;
use crate::metrics::GrpcMetricsLayer;
use crate::telemetry::GrpcTraceLayer;

/// Binds a TCP listener; port 0 picks a free port (see `local_addr`).
pub async fn bind(address: &str) -> Result<TcpListener, KitError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| KitError::Bind {
            address: address.to_string(),
            source,
        })
}

/// What one role's server runs: its routes and the names its health reports.
pub struct RoleServer {
    /// Role name, for logs.
    pub role: &'static str,
    pub routes: Routes,
    /// Fully qualified gRPC service names served, e.g. `quarry.v1.Quarry`.
    pub service_names: Vec<&'static str>,
    /// A retriever's shard and replica, for its spans.
    pub shard_replica: Option<(u32, u32)>,
    /// Serve TLS with this configuration (the gateway's public API), else plaintext.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Also serve `grpc.health.v1.Health` alone, in plaintext, here: Kubernetes' gRPC
    /// probes do not speak TLS.
    pub health_listener: Option<TcpListener>,
    /// Mutual TLS with the other roles (`internal_tls`), and the cluster whose role
    /// certificates may call.
    pub internal_tls: Option<(crate::mtls::InternalTlsServer, String)>,
}

/// Serves the role on `listener` until `shutdown` is cancelled, then drains in-flight calls.
pub async fn serve(
    listener: TcpListener,
    role_server: RoleServer,
    config: &ServerConfig,
    shutdown: CancellationToken,
) -> Result<(), KitError> {
    let local_address = listener
        .local_addr()
        .map_err(|error| KitError::Serve(error.to_string()))?;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    for name in &role_server.service_names {
        health_reporter
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    health_reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(quarry_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|error| KitError::Serve(error.to_string()))?;
    let health_only = role_server.health_listener.map(|listener| {
        let health_service = health_service.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            Server::builder()
                .add_service(health_service)
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
        })
    });
    let routes = role_server
        .routes
        .add_service(health_service)
        .add_service(reflection);

    let role = role_server.role;
    let trace_layer = GrpcTraceLayer {
        role,
        shard: role_server.shard_replica.map(|(shard, _)| shard),
        replica: role_server.shard_replica.map(|(_, replica)| replica),
    };
    let service_names = role_server.service_names;
    let drain = async move {
        shutdown.cancelled().await;
        for name in &service_names {
            health_reporter
                .set_service_status(*name, ServingStatus::NotServing)
                .await;
        }
        health_reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        info!(role, "draining in-flight calls");
    };
    info!(
        role,
        address = %local_address,
        tls = role_server.tls.is_some(),
        internal_tls = role_server.internal_tls.is_some(),
        "serving"
    );
    let mut builder = Server::builder();
    if config.request_timeout_ms > 0 {
        builder = builder.timeout(Duration::from_millis(config.request_timeout_ms));
    }
    let (internal_tls, peer_roles) = match role_server.internal_tls {
        Some((server, cluster)) => (
            Some(server),
            Some(crate::mtls::PeerRoleLayer {
                cluster: cluster.into(),
            }),
        ),
        None => (None, None),
    };
    let router = builder
        .concurrency_limit_per_connection(config.concurrency_limit_per_connection)
        .layer(GrpcMetricsLayer)
        .layer(trace_layer)
        .layer(tower::util::option_layer(peer_roles))
        .add_routes(routes);
    let served = match (role_server.tls, internal_tls) {
        (_, Some(internal)) => {
            let stop_accepting = CancellationToken::new();
            let incoming = internal.incoming(listener, stop_accepting.clone());
            let served = router.serve_with_incoming_shutdown(incoming, drain).await;
            stop_accepting.cancel();
            served
        }
        (Some(tls), None) => {
            let stop_accepting = CancellationToken::new();
            let incoming = crate::tls::incoming(listener, tls, stop_accepting.clone());
            let served = router.serve_with_incoming_shutdown(incoming, drain).await;
            stop_accepting.cancel();
            served
        }
        (None, None) => {
            // Small request/response messages must not wait for Nagle's algorithm.
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            router.serve_with_incoming_shutdown(incoming, drain).await
        }
    };
    served.map_err(|error| KitError::Serve(error.to_string()))?;
    if let Some(health_only) = health_only {
        let _ = health_only.await;
    }
    info!(role, "stopped");
    Ok(())
}

/// `http://` address of a bound listener, as other members dial it.
pub fn dial_address(address: SocketAddr) -> String {
    format!("http://{address}")
}

/// A channel to another member that connects on first use and reconnects after failures;
/// an `https://` address is dialled over TLS, trusting the system's roots.
pub fn lazy_channel(address: &str) -> Result<Channel, KitError> {
    Ok(endpoint(address, None, None)?.connect_lazy())
}

/// An endpoint for `address`; `https://` uses TLS and trusts `ca` (a PEM file) when given,
/// else the system's roots, and checks the certificate for `server_name` when given (a pod
/// dialled by IP whose certificate names its Service), else the address's host.
pub fn endpoint(
    address: &str,
    ca: Option<&std::path::Path>,
    server_name: Option<&str>,
) -> Result<Endpoint, KitError> {
    let mut endpoint = Endpoint::from_shared(address.to_string())
        .map_err(|error| KitError::Config(format!("bad address {address:?}: {error}")))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true);
    if address.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        tls = match ca {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|error| {
                    KitError::Config(format!("reading the CA {}: {error}", path.display()))
                })?;
                tls.ca_certificate(Certificate::from_pem(pem))
            }
            None => tls.with_native_roots(),
        };
        if let Some(name) = server_name {
            tls = tls.domain_name(name);
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|error| KitError::Config(format!("TLS for {address}: {error}")))?;
    } else if ca.is_some() {
        return Err(KitError::Config(format!(
            "a CA was given for {address}, which is not https://"
        )));
    }
    Ok(endpoint)
}
