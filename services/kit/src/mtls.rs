//! Mutual TLS between the roles (`internal_tls`).
//!
//! - **Identity.** Every member presents a certificate from the cluster's CA whose DNS name
//!   is `<role>.<cluster>.quarry` (`identity_name`). A server checks the chain during the
//!   handshake, and then, per call, that the name is one of the roles allowed to call that
//!   rpc (`allowed_callers`): a wrong CA fails the handshake, a wrong role gets
//!   PERMISSION_DENIED. A client checks the server's certificate names the role it meant to
//!   reach.
//! - **Modes.** `required`: TLS only, a client certificate demanded. `permissive`: the first
//!   byte of a connection tells a TLS handshake (0x16) from plaintext, and both are served;
//!   a certificate, when presented, is checked as in `required`. Clients of a member dial
//!   TLS when that member's registration says it takes it (`Member::internal_tls`), so a
//!   cluster moves off → permissive → required one member at a time.
//! - **Probes.** Health is served on the role's port like any rpc (and to anyone), and
//!   alone in plaintext on `internal_tls.health_listen` for Kubernetes' gRPC probes.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tower::{Layer, Service};

use crate::config::{InternalTlsConfig, InternalTlsMode};
use crate::discovery::Role;
use crate::error::KitError;
use crate::metrics::service_and_method;
use crate::tls::{accept_with, CertFiles, ReloadingCert};

/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The DNS name a member's certificate carries: `<role>.<cluster>.quarry`.
pub fn identity_name(role: Role, cluster: &str) -> String {
    format!("{}.{cluster}.quarry", role.as_str())
}

/// The roles that may call `service`/`method`; `None` for anyone (health, reflection).
pub fn allowed_callers(service: &str, method: &str) -> Option<&'static [Role]> {
    use Role::{Evaluator, Gateway, Retriever, Scheduler};
    Some(match (service, method) {
        (service, _) if service.starts_with("grpc.") => return None,
        // Only gateways write to retrievers, and peer replicas catching up.
        ("quarry.v1.Retriever", "Index" | "Delete") => &[Gateway, Retriever],
        ("quarry.v1.Retriever", "ListVersions" | "Export") => &[Retriever],
        // The placement coordinator (in a gateway) has a replica import a partition.
        ("quarry.v1.Retriever", "ImportPartition") => &[Gateway],
        ("quarry.v1.Retriever", _) => &[Gateway, Retriever],
        ("quarry.v1.Analyzer", _) => &[Gateway, Evaluator, Scheduler],
        ("quarry.v1.Generator", _) => &[Gateway, Scheduler],
        ("quarry.v1.Evaluator", _) => &[Gateway, Scheduler],
        // Gateways forward workflow calls; a follower forwards to the leader.
        ("quarry.v1.Scheduler", _) => &[Gateway, Scheduler],
        // The gateway's public API is guarded by API keys, not by role certificates.
        ("quarry.v1.Quarry", _) => return None,
        _ => &[],
    })
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, KitError> {
    std::fs::read(path).map_err(|error| {
        KitError::Config(format!("internal_tls.{what} {}: {error}", path.display()))
    })
}

fn required_path<'a>(path: &'a Option<PathBuf>, what: &str) -> Result<&'a Path, KitError> {
    path.as_deref()
        .ok_or_else(|| KitError::Config(format!("internal_tls.{what} is not set")))
}

/// The server side: the rustls configuration that demands (or, permissive, accepts) a
/// client certificate from the cluster's CA.
pub struct InternalTlsServer {
    config: Arc<rustls::ServerConfig>,
    mode: InternalTlsMode,
}

impl InternalTlsServer {
    /// `None` when the mode is off.
    pub fn start(
        settings: &InternalTlsConfig,
        shutdown: CancellationToken,
    ) -> Result<Option<Self>, KitError> {
        if settings.mode == InternalTlsMode::Off {
            return Ok(None);
        }
        let files = CertFiles {
            cert: required_path(&settings.cert, "cert")?.to_path_buf(),
            key: required_path(&settings.key, "key")?.to_path_buf(),
        };
        let resolver =
            ReloadingCert::start(files, Duration::from_millis(settings.reload_ms), shutdown)?;
        let roots = Arc::new(root_store(required_path(&settings.ca, "ca")?)?);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(&provider));
        let verifier = match settings.mode {
            InternalTlsMode::Permissive => verifier.allow_unauthenticated(),
            _ => verifier,
        }
        .build()
        .map_err(|error| KitError::Config(format!("internal_tls.ca: {error}")))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| KitError::Config(error.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Some(Self {
            config: Arc::new(config),
            mode: settings.mode,
        }))
    }

    /// Accepted connections — TLS, or in permissive mode also plaintext — for tonic's
    /// `serve_with_incoming` (`tls::accept_with`: handshakes off the accept loop).
    pub fn incoming(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> ReceiverStream<Result<PeerStream, std::io::Error>> {
        let acceptor = TlsAcceptor::from(Arc::clone(&self.config));
        let permissive = self.mode == InternalTlsMode::Permissive;
        accept_with(listener, shutdown, move |stream| {
            let acceptor = acceptor.clone();
            async move {
                let mut first = [0u8; 1];
                if permissive
                    && stream.peek(&mut first).await? == 1
                    && first[0] != TLS_HANDSHAKE_RECORD
                {
                    return Ok(PeerStream::Plain(stream));
                }
                Ok(PeerStream::Tls(Box::new(acceptor.accept(stream).await?)))
            }
        })
    }
}

fn root_store(ca: &Path) -> Result<RootCertStore, KitError> {
    let mut roots = RootCertStore::empty();
    let pem = read(ca, "ca")?;
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        let certificate = certificate.map_err(|error| {
            KitError::Config(format!("internal_tls.ca {}: {error}", ca.display()))
        })?;
        roots.add(certificate).map_err(|error| {
            KitError::Config(format!("internal_tls.ca {}: {error}", ca.display()))
        })?;
    }
    if roots.is_empty() {
        return Err(KitError::Config(format!(
            "internal_tls.ca {}: no certificate",
            ca.display()
        )));
    }
    Ok(roots)
}

/// A connection to an internal server: TLS, or plaintext (permissive mode only).
pub enum PeerStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// What a call knows about the connection it came on: the peer's certificate chain, when it
/// presented one. A request extension, read by `PeerRoleLayer`.
#[derive(Debug, Clone, Default)]
pub struct PeerCertificates(pub Option<Arc<Vec<CertificateDer<'static>>>>);

impl Connected for PeerStream {
    type ConnectInfo = PeerCertificates;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            PeerStream::Plain(_) => PeerCertificates(None),
            PeerStream::Tls(stream) => {
                PeerCertificates(stream.get_ref().1.peer_certificates().map(|chain| {
                    Arc::new(chain.iter().map(|der| der.clone().into_owned()).collect())
                }))
            }
        }
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(stream) => Pin::new(stream).poll_read(context, buffer),
            PeerStream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(context, buffer),
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(stream) => Pin::new(stream).poll_write(context, buffer),
            PeerStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(context, buffer),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(stream) => Pin::new(stream).poll_flush(context),
            PeerStream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(context),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(stream) => Pin::new(stream).poll_shutdown(context),
            PeerStream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(context),
        }
    }
}

/// Whether the certificate names one of `roles` in `cluster`.
fn names_one_of(certificate: &CertificateDer<'_>, roles: &[Role], cluster: &str) -> bool {
    let Ok(end_entity) = webpki::EndEntityCert::try_from(certificate) else {
        return false;
    };
    roles.iter().any(|role| {
        ServerName::try_from(identity_name(*role, cluster))
            .is_ok_and(|name| end_entity.verify_is_valid_for_subject_name(&name).is_ok())
    })
}

/// Refuses, with PERMISSION_DENIED, a call whose certificate names no role allowed to
/// make it. A call without a certificate (plaintext, permissive mode) passes.
#[derive(Clone)]
pub struct PeerRoleLayer {
    pub cluster: Arc<str>,
}

impl<S> Layer<S> for PeerRoleLayer {
    type Service = PeerRoleService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PeerRoleService {
            inner,
            cluster: Arc::clone(&self.cluster),
        }
    }
}

#[derive(Clone)]
pub struct PeerRoleService<S> {
    inner: S,
    cluster: Arc<str>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, RequestBody> Service<http::Request<RequestBody>> for PeerRoleService<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let (service, method) = service_and_method(request.uri().path());
        let chain = request
            .extensions()
            .get::<PeerCertificates>()
            .and_then(|peer| peer.0.clone());
        if let (Some(allowed), Some(chain)) = (allowed_callers(service, method), chain) {
            let permitted = chain
                .first()
                .is_some_and(|certificate| names_one_of(certificate, allowed, &self.cluster));
            if !permitted {
                let roles: Vec<&str> = allowed.iter().map(|role| role.as_str()).collect();
                let status = tonic::Status::permission_denied(format!(
                    "{service}/{method} may be called by {} of cluster {} only; the caller's certificate names none of them",
                    roles.join(", "),
                    self.cluster
                ));
                return Box::pin(std::future::ready(Ok(status.into_http())));
            }
        }
        Box::pin(self.inner.call(request))
    }
}

/// The client side: this member's certificate and the cluster's CA, read from disk each time
/// a channel is made (so a renewed certificate is used by new connections).
#[derive(Debug, Clone)]
pub struct InternalTlsClient {
    mode: InternalTlsMode,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    cluster: String,
}

impl InternalTlsClient {
    /// `None` when the mode is off.
    pub fn new(settings: &InternalTlsConfig, cluster: &str) -> Result<Option<Arc<Self>>, KitError> {
        if settings.mode == InternalTlsMode::Off {
            return Ok(None);
        }
        Ok(Some(Arc::new(Self {
            mode: settings.mode,
            ca: required_path(&settings.ca, "ca")?.to_path_buf(),
            cert: required_path(&settings.cert, "cert")?.to_path_buf(),
            key: required_path(&settings.key, "key")?.to_path_buf(),
            cluster: cluster.to_string(),
        })))
    }

    pub fn mode(&self) -> InternalTlsMode {
        self.mode
    }

    /// An endpoint to a member of `role` at `address` whose server runs `peer_mode`: mutual
    /// TLS when it takes it, plaintext when it does not (refused when this member requires
    /// TLS).
    pub fn endpoint(
        &self,
        address: &str,
        role: Role,
        peer_mode: InternalTlsMode,
    ) -> Result<Endpoint, KitError> {
        if peer_mode == InternalTlsMode::Off {
            if self.mode == InternalTlsMode::Required {
                return Err(KitError::Config(format!(
                    "{role} at {address} serves no TLS and internal_tls.mode is required"
                )));
            }
            return crate::server::endpoint(address, None, None);
        }
        let address = match address.strip_prefix("http://") {
            Some(rest) => format!("https://{rest}"),
            None => address.to_string(),
        };
        let identity = Identity::from_pem(read(&self.cert, "cert")?, read(&self.key, "key")?);
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca, "ca")?))
            .identity(identity)
            .domain_name(identity_name(role, &self.cluster));
        let endpoint = Endpoint::from_shared(address.clone())
            .map_err(|error| KitError::Config(format!("bad address {address:?}: {error}")))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true);
        endpoint
            .tls_config(tls)
            .map_err(|error| KitError::Config(format!("internal TLS for {address}: {error}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_to_retrievers_come_from_gateways_and_peers_only() {
        let index = allowed_callers("quarry.v1.Retriever", "Index").unwrap();
        assert!(index.contains(&Role::Gateway) && index.contains(&Role::Retriever));
        assert!(!index.contains(&Role::Evaluator) && !index.contains(&Role::Scheduler));
        assert_eq!(
            allowed_callers("quarry.v1.Retriever", "Export").unwrap(),
            [Role::Retriever]
        );
        assert!(allowed_callers("grpc.health.v1.Health", "Check").is_none());
        assert_eq!(allowed_callers("quarry.v1.Unknown", "X").unwrap(), []);
        assert_eq!(identity_name(Role::Gateway, "prod"), "gateway.prod.quarry");
    }
}
