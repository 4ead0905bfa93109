//! Where API keys live — a JSON-lines file (a mounted Kubernetes Secret, or written by
//! `quarry keys create --file`) and/or etcd (`/quarry/<cluster>/keys/<id>`) — and the
//! `KeyRing` the gateway checks calls against, re-read every `auth.reload_ms` so that an
//! added or revoked key takes effect without a restart. A source that cannot be read at
//! start stops the gateway; one that fails later keeps the last good keys, logged and
//! counted.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use etcd_client::{Client, GetOptions};
use quarry_kit::discovery::EtcdAccess;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::keys::{ApiKey, KeySet};
use crate::metrics::metrics;

/// One place keys are kept.
#[derive(Debug, Clone)]
pub enum KeyLocation {
    File(PathBuf),
    Etcd { access: EtcdAccess, cluster: String },
}

fn etcd_prefix(cluster: &str) -> String {
    format!("/quarry/{cluster}/keys/")
}

impl KeyLocation {
    /// Every key stored there, revoked ones included.
    pub async fn load(&self) -> Result<Vec<ApiKey>, String> {
        self.load_with(&mut None).await
    }

    /// `load`, reusing `etcd` as the connection to etcd (made when `None`, dropped on error).
    async fn load_with(&self, etcd: &mut Option<Client>) -> Result<Vec<ApiKey>, String> {
        match self {
            Self::File(path) => {
                let text = match std::fs::read_to_string(path) {
                    Ok(text) => text,
                    Err(error) => return Err(format!("reading {}: {error}", path.display())),
                };
                let keys = KeySet::parse_lines(&text)
                    .map_err(|error| format!("{}: {error}", path.display()))?;
                let mut keys: Vec<ApiKey> = keys.into_keys().collect();
                keys.sort_by(|a, b| a.id.cmp(&b.id));
                Ok(keys)
            }
            Self::Etcd { access, cluster } => {
                let client = match etcd {
                    Some(client) => client,
                    None => etcd.insert(connect(access).await?),
                };
                let response = match client
                    .get(etcd_prefix(cluster), Some(GetOptions::new().with_prefix()))
                    .await
                {
                    Ok(response) => response,
                    Err(error) => {
                        *etcd = None;
                        return Err(format!("etcd: {error}"));
                    }
                };
                response
                    .kvs()
                    .iter()
                    .map(|kv| {
                        serde_json::from_slice::<ApiKey>(kv.value()).map_err(|error| {
                            format!("etcd {}: {error}", kv.key_str().unwrap_or("?"))
                        })
                    })
                    .collect()
            }
        }
    }

    /// Stores a new key, or replaces the stored key with the same id.
    pub async fn put(&self, key: &ApiKey) -> Result<(), String> {
        match self {
            Self::File(path) => {
                let mut keys: Vec<ApiKey> = if path.exists() {
                    self.load().await?
                } else {
                    Vec::new()
                };
                keys.retain(|stored| stored.id != key.id);
                keys.push(key.clone());
                write_atomically(path, &keys)
            }
            Self::Etcd { access, cluster } => {
                let mut client = connect(access).await?;
                let value = serde_json::to_vec(key).map_err(|error| error.to_string())?;
                client
                    .put(format!("{}{}", etcd_prefix(cluster), key.id), value, None)
                    .await
                    .map_err(|error| format!("etcd: {error}"))?;
                Ok(())
            }
        }
    }
}

async fn connect(access: &EtcdAccess) -> Result<Client, String> {
    access
        .connect()
        .await
        .map_err(|error| format!("{} ({})", error, access.endpoints.join(",")))
}

/// Writes the keys beside the file, fsyncs, then renames over it: a reader sees the old
/// file or the new one, never half of one.
fn write_atomically(path: &Path, keys: &[ApiKey]) -> Result<(), String> {
    use std::io::Write;
    let mut text = String::new();
    for key in keys {
        text.push_str(&serde_json::to_string(key).map_err(|error| error.to_string())?);
        text.push('\n');
    }
    let partial = path.with_extension("partial");
    let written = (|| {
        let mut file = std::fs::File::create(&partial)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&partial, path)
    })();
    written.map_err(|error| format!("writing {}: {error}", path.display()))
}

/// The keys in force; `snapshot` is what a call is checked against.
pub struct KeyRing {
    current: RwLock<Arc<KeySet>>,
}

impl KeyRing {
    /// A ring that holds `keys` and is never reloaded (tests, and the fuzz harness).
    pub fn fixed(keys: KeySet) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(Arc::new(keys)),
        })
    }

    pub fn snapshot(&self) -> Arc<KeySet> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(|poison| poison.into_inner()),
        )
    }

    fn replace(&self, keys: KeySet) {
        *self
            .current
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = Arc::new(keys);
    }

    /// Reads every location once (an error stops the start), then re-reads them every
    /// `reload` until `shutdown`.
    pub async fn start(
        locations: Vec<KeyLocation>,
        reload: Duration,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, String> {
        let mut connections: Vec<Option<Client>> = locations.iter().map(|_| None).collect();
        let keys = load_all(&locations, &mut connections).await?;
        info!(keys = keys.len(), "API keys loaded");
        let ring = Self::fixed(keys);
        let reloaded = Arc::clone(&ring);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(reload);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                match load_all(&locations, &mut connections).await {
                    Ok(keys) => {
                        if !keys.same_as(&reloaded.snapshot()) {
                            info!(keys = keys.len(), "API keys reloaded");
                        }
                        reloaded.replace(keys);
                    }
                    Err(error) => {
                        metrics().key_reload_errors.inc();
                        warn!(
                            error,
                            "API keys could not be re-read; the last good keys stay in force"
                        );
                    }
                }
            }
        });
        Ok(ring)
    }
}

async fn load_all(
    locations: &[KeyLocation],
    connections: &mut [Option<Client>],
) -> Result<KeySet, String> {
    let mut keys = Vec::new();
    for (location, connection) in locations.iter().zip(connections.iter_mut()) {
        keys.extend(location.load_with(connection).await?);
    }
    Ok(KeySet::new(keys))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::front::keys::{generate, now_s, Scope};

    #[tokio::test]
    async fn a_key_put_in_a_file_is_found_and_a_revocation_replaces_it() {
        let directory = tempfile::tempdir().unwrap();
        let location = KeyLocation::File(directory.path().join("keys.jsonl"));
        let first = generate(vec![Scope::Read], Vec::new(), None, "a".into()).unwrap();
        let second = generate(vec![Scope::Write], Vec::new(), None, "b".into()).unwrap();
        location.put(&first.key).await.unwrap();
        location.put(&second.key).await.unwrap();
        let revoked = ApiKey {
            revoked: true,
            ..first.key.clone()
        };
        location.put(&revoked).await.unwrap();
        let keys = location.load().await.unwrap();
        assert_eq!(keys.len(), 2);
        let set = KeySet::new(keys);
        let header = |token: &str| format!("Bearer {token}").into_bytes();
        assert!(set.verify(Some(&header(&first.token)), now_s()).is_err());
        assert!(set.verify(Some(&header(&second.token)), now_s()).is_ok());
    }

    /// Polls `condition` every 10 ms; fails after 5 s.
    async fn wait_until(condition: impl Fn() -> bool) {
        let started = std::time::Instant::now();
        while !condition() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "condition not met in 5 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_ring_keeps_its_last_good_keys_when_the_file_breaks() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("keys.jsonl");
        let location = KeyLocation::File(path.clone());
        let key = generate(vec![Scope::Read], Vec::new(), None, String::new()).unwrap();
        location.put(&key.key).await.unwrap();
        let shutdown = CancellationToken::new();
        let ring = KeyRing::start(vec![location], Duration::from_millis(20), shutdown.clone())
            .await
            .unwrap();
        std::fs::write(&path, "{not json\n").unwrap();
        // Several reloads pass (each counted as an error) and the key stays.
        let errors = metrics().key_reload_errors.get();
        wait_until(|| metrics().key_reload_errors.get() >= errors + 3).await;
        assert_eq!(ring.snapshot().len(), 1);
        std::fs::write(&path, "").unwrap();
        wait_until(|| ring.snapshot().is_empty()).await;
        shutdown.cancel();
        let missing = KeyLocation::File(directory.path().join("absent.jsonl"));
        assert!(KeyRing::start(
            vec![missing],
            Duration::from_secs(1),
            CancellationToken::new()
        )
        .await
        .is_err());
    }
}
