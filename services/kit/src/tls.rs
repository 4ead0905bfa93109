//! TLS for a server: a certificate and key read from PEM files and re-read when they change
//! (a renewed certificate is served to new connections within `reload`, without a restart;
//! connections already open keep theirs), and the handshakes done off the accept loop, so a
//! slow or silent client holds up nobody else.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::error::KitError;

/// Longest a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 256;

/// The files a server's certificate comes from.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    fn load(&self) -> Result<CertifiedKey, KitError> {
        let named = |path: &Path, error: String| {
            KitError::Config(format!("TLS {}: {error}", path.display()))
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|error| named(&self.cert, error.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|error| named(&self.cert, error.to_string()))?;
        if chain.is_empty() {
            return Err(named(&self.cert, "no certificate in the file".to_string()));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|error| named(&self.key, error.to_string()))?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        CertifiedKey::from_der(chain, key, &provider)
            .map_err(|error| named(&self.cert, error.to_string()))
    }

    fn modified(&self) -> Option<(SystemTime, SystemTime)> {
        let modified = |path: &Path| {
            std::fs::metadata(path)
                .and_then(|meta| meta.modified())
                .ok()
        };
        Some((modified(&self.cert)?, modified(&self.key)?))
    }
}

/// Serves whichever certificate was last read successfully.
#[derive(Debug)]
pub struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(|poison| poison.into_inner()),
        ))
    }
}

impl ReloadingCert {
    /// Reads the files (an error stops the start), then checks them every `reload` until
    /// `shutdown`, reading them again when either changed; a pair that does not load (a
    /// half-written renewal) leaves the last good one in use.
    pub fn start(
        files: CertFiles,
        reload: Duration,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, KitError> {
        let certified = files.load()?;
        let resolver = Arc::new(Self {
            current: RwLock::new(Arc::new(certified)),
        });
        let reloaded = Arc::clone(&resolver);
        tokio::spawn(async move {
            let mut seen = files.modified();
            let mut ticks = tokio::time::interval(reload);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                let modified = files.modified();
                if modified == seen {
                    continue;
                }
                match files.load() {
                    Ok(certified) => {
                        *reloaded
                            .current
                            .write()
                            .unwrap_or_else(|poison| poison.into_inner()) = Arc::new(certified);
                        seen = modified;
                        info!(cert = %files.cert.display(), "TLS certificate reloaded");
                    }
                    Err(error) => {
                        warn!(error = %error, "TLS certificate not reloaded; the last good one stays")
                    }
                }
            }
        });
        Ok(resolver)
    }

    /// A rustls server configuration that serves this certificate over HTTP/2.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }
}

/// Accepted TLS connections, for `tonic`'s `serve_with_incoming`.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let acceptor = TlsAcceptor::from(config);
    accept_with(listener, shutdown, move |stream| {
        let acceptor = acceptor.clone();
        async move { acceptor.accept(stream).await }
    })
}

/// Accepts connections and runs `handshake` on each, on its own task under a timeout, at
/// most `MAX_HANDSHAKES` at once; a connection whose handshake fails or times out is logged
/// and dropped, the others are handed on (to `tonic`'s `serve_with_incoming`).
pub fn accept_with<S, H, F>(
    listener: TcpListener,
    shutdown: CancellationToken,
    handshake: H,
) -> ReceiverStream<Result<S, std::io::Error>>
where
    S: Send + 'static,
    H: Fn(TcpStream) -> F + Send + 'static,
    F: std::future::Future<Output = std::io::Result<S>> + Send + 'static,
{
    let (sender, receiver) = mpsc::channel(64);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else {
                return;
            };
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(error = %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Small request/response messages must not wait for Nagle's algorithm.
            let _ = stream.set_nodelay(true);
            let (handshaken, sender) = (handshake(stream), sender.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshaken).await {
                    Ok(Ok(stream)) => {
                        let _ = sender.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => debug!(%peer, error = %error, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}
