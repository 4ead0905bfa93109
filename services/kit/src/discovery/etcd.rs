//! Discovery through etcd: each process registers `/quarry/<cluster>/members/<role>/<node-id>`
//! under a lease kept alive in the background (and registered again if the lease is lost);
//! a watcher lists the prefix and watches from that revision, listing again after a
//! compaction or a broken watch, so that no change is missed; while etcd is unreachable
//! the last member set stays in force. The cluster's shard count is written once at
//! `/quarry/<cluster>/config` by `quarry cluster create`.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Discovery, Member, MemberSet};
use crate::error::KitError;

/// Pause between attempts while etcd is unreachable.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// What `/quarry/<cluster>/config` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    /// The shard count the cluster was created with (the partitions' blocks; the shard
    /// count now is the placement's).
    pub shards: u32,
    /// Partitions in all; absent in clusters created before partitions (then the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,
}

impl ClusterSettings {
    pub fn partitioning(&self) -> Result<crate::placement::Partitioning, KitError> {
        crate::placement::Partitioning::new(self.shards, self.partitions)
    }
}

fn config_key(cluster: &str) -> String {
    format!("/quarry/{cluster}/config")
}

fn members_prefix(cluster: &str) -> String {
    format!("/quarry/{cluster}/members/")
}

fn member_key(cluster: &str, member: &Member) -> String {
    format!(
        "{}{}/{}",
        members_prefix(cluster),
        member.role,
        member.node_id
    )
}

fn etcd_error(error: etcd_client::Error) -> KitError {
    KitError::Discovery(format!("etcd: {error}"))
}

/// How to reach etcd: endpoints, and TLS and a user when configured.
#[derive(Debug, Clone, Default)]
pub struct EtcdAccess {
    pub endpoints: Vec<String>,
    /// CA, then client certificate and key (both or neither).
    pub ca: Option<std::path::PathBuf>,
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    pub user: Option<(String, String)>,
}

impl EtcdAccess {
    pub fn from_config(discovery: &crate::config::DiscoveryConfig) -> Self {
        Self::with_endpoints(discovery, discovery.etcd.clone())
    }

    /// The configured TLS and user, towards `endpoints`.
    pub fn with_endpoints(
        discovery: &crate::config::DiscoveryConfig,
        endpoints: Vec<String>,
    ) -> Self {
        Self {
            endpoints,
            ca: discovery.etcd_ca.clone(),
            client_cert: discovery.etcd_cert.clone().zip(discovery.etcd_key.clone()),
            user: discovery
                .etcd_user
                .clone()
                .map(|user| (user, discovery.etcd_password.clone().unwrap_or_default())),
        }
    }

    /// Just endpoints: plaintext, no user.
    pub fn plain(endpoints: &[String]) -> Self {
        Self {
            endpoints: endpoints.to_vec(),
            ..Self::default()
        }
    }

    pub async fn connect(&self) -> Result<Client, KitError> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|error| {
                KitError::Config(format!("discovery: {}: {error}", path.display()))
            })
        };
        let mut options = etcd_client::ConnectOptions::new();
        let mut any = false;
        if self.ca.is_some() || self.client_cert.is_some() {
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &self.ca {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
            }
            if let Some((cert, key)) = &self.client_cert {
                tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(tls);
            any = true;
        }
        if let Some((user, password)) = &self.user {
            options = options.with_user(user.clone(), password.clone());
            any = true;
        }
        Client::connect(&self.endpoints, any.then_some(options))
            .await
            .map_err(etcd_error)
    }
}

async fn connect(access: &EtcdAccess) -> Result<Client, KitError> {
    access.connect().await
}

/// Writes the cluster's settings once; creating it again leaves them and answers them.
pub async fn create_cluster(
    access: &EtcdAccess,
    cluster: &str,
    settings: ClusterSettings,
) -> Result<ClusterSettings, KitError> {
    settings.partitioning()?;
    let mut client = connect(access).await?;
    let key = config_key(cluster);
    let value =
        serde_json::to_string(&settings).map_err(|error| KitError::Config(error.to_string()))?;
    let created = client
        .txn(
            Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.as_str(), value, None)]),
        )
        .await
        .map_err(etcd_error)?
        .succeeded();
    if created {
        return Ok(settings);
    }
    // Created already: its partitions stay as they were made; the shard count changes only
    // through `quarry cluster scale` (so a pod's `create` step never fails after a resize).
    read_settings(&mut client, cluster).await
}

/// The cluster's settings as `create_cluster` wrote them.
pub async fn read_settings(
    client: &mut Client,
    cluster: &str,
) -> Result<ClusterSettings, KitError> {
    let response = client
        .get(config_key(cluster), None)
        .await
        .map_err(etcd_error)?;
    let Some(entry) = response.kvs().first() else {
        return Err(KitError::Config(format!(
            "cluster {cluster:?} does not exist in etcd; create it with `quarry cluster create --cluster {cluster} --shards N`"
        )));
    };
    serde_json::from_slice(entry.value()).map_err(|error| {
        KitError::Config(format!("bad settings at {}: {error}", config_key(cluster)))
    })
}

/// Members found through etcd.
pub struct EtcdDiscovery {
    client: Client,
    cluster: String,
    settings: ClusterSettings,
    ttl_seconds: i64,
    members: watch::Sender<MemberSet>,
    /// This process's own registrations, put again if the lease is lost.
    registrations: Mutex<HashMap<String, (Member, i64)>>,
    stop: CancellationToken,
    /// This discovery itself, for the keep-alive tasks `register` starts.
    this: OnceLock<Weak<Self>>,
}

impl EtcdDiscovery {
    /// Connects, reads the cluster's settings, and starts watching its members.
    pub async fn connect(
        access: &EtcdAccess,
        cluster: &str,
        ttl_seconds: i64,
    ) -> Result<Arc<Self>, KitError> {
        let mut client = connect(access).await?;
        let settings = read_settings(&mut client, cluster).await?;
        let (members, _) = watch::channel(MemberSet::default());
        let discovery = Arc::new(Self {
            client,
            cluster: cluster.to_string(),
            settings,
            ttl_seconds: ttl_seconds.max(2),
            members,
            registrations: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
            this: OnceLock::new(),
        });
        let _ = discovery.this.set(Arc::downgrade(&discovery));
        let (listed, _) = discovery.list().await?;
        discovery.members.send_replace(listed);
        tokio::spawn(Arc::clone(&discovery).watch_members());
        Ok(discovery)
    }

    pub fn settings(&self) -> ClusterSettings {
        self.settings
    }

    /// The etcd client, for what else lives in the cluster's etcd (the collection catalog).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The members under the prefix now, and the revision to watch from.
    async fn list(&self) -> Result<(MemberSet, i64), KitError> {
        let mut client = self.client.clone();
        let response = client
            .get(
                members_prefix(&self.cluster),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(etcd_error)?;
        let revision = response.header().map_or(0, |header| header.revision());
        let members = response
            .kvs()
            .iter()
            .filter_map(|entry| serde_json::from_slice::<Member>(entry.value()).ok())
            .collect();
        Ok((MemberSet::new(members), revision))
    }

    /// List, then watch from the list's revision; list again after any break.
    async fn watch_members(self: Arc<Self>) {
        while !self.stop.is_cancelled() {
            match self.list_then_watch().await {
                Ok(()) => {}
                Err(error) => {
                    warn!(error = %error, "member watch broken; keeping the last member set")
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(RETRY_PAUSE) => {}
            }
        }
    }

    async fn list_then_watch(&self) -> Result<(), KitError> {
        let (listed, revision) = self.list().await?;
        let mut by_key: HashMap<String, Member> = listed
            .all()
            .iter()
            .map(|member| (member_key(&self.cluster, member), member.clone()))
            .collect();
        self.publish(&by_key);
        let mut client = self.client.clone();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut stream = client
            .watch(members_prefix(&self.cluster), Some(options))
            .await
            .map_err(etcd_error)?;
        loop {
            let response = tokio::select! {
                _ = self.stop.cancelled() => return Ok(()),
                message = stream.message() => message.map_err(etcd_error)?,
            };
            let Some(response) = response else {
                return Err(KitError::Discovery("etcd closed the watch".to_string()));
            };
            if response.compact_revision() > 0 || response.canceled() {
                info!(
                    compacted = response.compact_revision(),
                    "member watch restarted after compaction"
                );
                return Ok(());
            }
            for event in response.events() {
                let Some(entry) = event.kv() else { continue };
                let key = String::from_utf8_lossy(entry.key()).to_string();
                match event.event_type() {
                    EventType::Put => {
                        if let Ok(member) = serde_json::from_slice::<Member>(entry.value()) {
                            by_key.insert(key, member);
                        }
                    }
                    EventType::Delete => {
                        by_key.remove(&key);
                    }
                }
            }
            self.publish(&by_key);
        }
    }

    fn publish(&self, by_key: &HashMap<String, Member>) {
        let set = MemberSet::new(by_key.values().cloned().collect());
        self.members.send_if_modified(|current| {
            if *current == set {
                return false;
            }
            *current = set;
            true
        });
    }

    async fn put_member(&self, member: &Member, lease: i64) -> Result<(), KitError> {
        let value = serde_json::to_string(member)
            .map_err(|error| KitError::Discovery(error.to_string()))?;
        let mut client = self.client.clone();
        client
            .put(
                member_key(&self.cluster, member),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(etcd_error)?;
        Ok(())
    }

    /// Grants a lease and puts the member's entry under it.
    async fn lease_and_put(&self, member: &Member) -> Result<i64, KitError> {
        let mut client = self.client.clone();
        let lease = client
            .lease_grant(self.ttl_seconds, None)
            .await
            .map_err(etcd_error)?
            .id();
        self.put_member(member, lease).await?;
        Ok(lease)
    }

    /// Keeps a registration's lease alive; when it is lost (etcd down longer than the TTL),
    /// grants a new one and registers again.
    async fn keep_registered(self: Arc<Self>, node_id: String) {
        loop {
            let Some((_, lease)) = self.registrations.lock().await.get(&node_id).cloned() else {
                return;
            };
            let outcome = self.keep_alive(lease).await;
            if self.stop.is_cancelled() || !self.registrations.lock().await.contains_key(&node_id) {
                return;
            }
            if let Err(error) = outcome {
                warn!(node_id, error = %error, "lease lost; registering again");
            }
            loop {
                // The entry as it is now: `update` may have changed it (a replica that caught
                // up is ready) since the lease was granted.
                let Some((member, _)) = self.registrations.lock().await.get(&node_id).cloned()
                else {
                    return;
                };
                match self.lease_and_put(&member).await {
                    Ok(new_lease) => {
                        if let Some(entry) = self.registrations.lock().await.get_mut(&node_id) {
                            entry.1 = new_lease;
                        }
                        info!(node_id, "registered again");
                        break;
                    }
                    Err(error) => {
                        warn!(node_id, error = %error, "etcd unreachable; will register when it is back");
                        tokio::select! {
                            _ = self.stop.cancelled() => return,
                            _ = tokio::time::sleep(RETRY_PAUSE) => {}
                        }
                    }
                }
            }
        }
    }

    /// Refreshes the lease every third of its TTL until it expires or the keeper fails.
    async fn keep_alive(&self, lease: i64) -> Result<(), KitError> {
        let mut client = self.client.clone();
        let (mut keeper, mut responses) =
            client.lease_keep_alive(lease).await.map_err(etcd_error)?;
        let period = Duration::from_millis((self.ttl_seconds as u64 * 1000) / 3);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(period) => {}
            }
            keeper.keep_alive().await.map_err(etcd_error)?;
            match responses.message().await.map_err(etcd_error)? {
                Some(response) if response.ttl() > 0 => {}
                _ => return Err(KitError::Discovery(format!("lease {lease} expired"))),
            }
        }
    }
}

#[async_trait::async_trait]
impl Discovery for EtcdDiscovery {
    async fn register(&self, member: Member) -> Result<(), KitError> {
        let lease = self.lease_and_put(&member).await?;
        let node_id = member.node_id.clone();
        self.registrations
            .lock()
            .await
            .insert(node_id.clone(), (member, lease));
        if let Some(this) = self.this.get().and_then(Weak::upgrade) {
            tokio::spawn(this.keep_registered(node_id.clone()));
        }
        info!(node_id, lease, ttl = self.ttl_seconds, "registered in etcd");
        Ok(())
    }

    async fn update(&self, member: Member) -> Result<(), KitError> {
        let mut registrations = self.registrations.lock().await;
        let Some(entry) = registrations.get_mut(&member.node_id) else {
            return Ok(());
        };
        self.put_member(&member, entry.1).await?;
        entry.0 = member;
        Ok(())
    }

    async fn deregister(&self, node_id: &str) -> Result<(), KitError> {
        let Some((mut member, lease)) = self.registrations.lock().await.remove(node_id) else {
            return Ok(());
        };
        member.ready = false;
        if let Err(error) = self.put_member(&member, lease).await {
            warn!(node_id, error = %error, "could not mark not ready");
        }
        let mut client = self.client.clone();
        client.lease_revoke(lease).await.map_err(etcd_error)?;
        info!(node_id, "deregistered from etcd");
        Ok(())
    }

    fn watch(&self) -> watch::Receiver<MemberSet> {
        self.members.subscribe()
    }

    fn shard_count(&self) -> u32 {
        self.settings.shards
    }
}

impl EtcdDiscovery {
    /// Stops the watcher and the keepers.
    pub fn close(&self) {
        self.stop.cancel();
    }
}
