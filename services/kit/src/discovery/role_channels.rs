//! `RoleChannels`: "a ready member of role R, and a channel to it". One lazily connected
//! channel per member address, reused across calls; the ready members of a role are taken
//! in turn. The gateway and the evaluator (for the analyzer's encoder) both use it. Every
//! channel given carries the caller's trace context into its calls. Channels of members that
//! left are forgotten.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tonic::transport::Channel;

use super::{Discovery, MemberSet, Role};
use crate::error::KitError;
use crate::server::endpoint;
use crate::telemetry::{traced, TracedChannel};

/// Why no channel could be given.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("no ready {role} in the cluster")]
    NoMember { role: Role },
    #[error(transparent)]
    Address(#[from] KitError),
    #[error("channel cache lock poisoned")]
    Poisoned,
}

/// Channels to the members of a cluster, picked from the live member set.
pub struct RoleChannels {
    discovery: Arc<dyn Discovery>,
    members: watch::Receiver<MemberSet>,
    channels: Mutex<HashMap<String, Channel>>,
    next_instance: AtomicUsize,
    /// The CA an `https://` member's certificate is checked against (else the system's),
    /// and the name it must carry (else the address's host).
    ca: Option<std::path::PathBuf>,
    server_name: Option<String>,
    /// This member's certificate for mutual TLS with the other roles.
    internal_tls: Option<Arc<crate::mtls::InternalTlsClient>>,
}

impl RoleChannels {
    pub fn new(discovery: Arc<dyn Discovery>) -> Self {
        let members = discovery.watch();
        Self {
            discovery,
            members,
            channels: Mutex::new(HashMap::new()),
            next_instance: AtomicUsize::new(0),
            ca: None,
            server_name: None,
            internal_tls: None,
        }
    }

    /// Trusts `ca` (a PEM file) for members served over TLS (a TLS gateway), whose
    /// certificates name `server_name` when given.
    pub fn with_tls(mut self, ca: Option<std::path::PathBuf>, server_name: Option<String>) -> Self {
        self.ca = ca;
        self.server_name = server_name;
        self
    }

    /// Dials members that take mutual TLS with this certificate (`internal_tls`).
    pub fn with_internal_tls(
        mut self,
        client: Option<Arc<crate::mtls::InternalTlsClient>>,
    ) -> Self {
        self.internal_tls = client;
        self
    }

    pub fn discovery(&self) -> &Arc<dyn Discovery> {
        &self.discovery
    }

    /// The member set as it is now.
    pub fn members(&self) -> MemberSet {
        self.members.borrow().clone()
    }

    /// A channel to the next ready member of `role`, in turn.
    pub fn pick(&self, role: Role) -> Result<TracedChannel, ChannelError> {
        let address = {
            let members = self.members.borrow();
            let ready: Vec<&str> = members
                .ready(role)
                .map(|member| member.address.as_str())
                .collect();
            if ready.is_empty() {
                return Err(ChannelError::NoMember { role });
            }
            let turn = self.next_instance.fetch_add(1, Ordering::Relaxed);
            ready[turn % ready.len()].to_string()
        };
        self.channel(&address)
    }

    /// The (cached, lazily connected) channel to one address.
    pub fn channel(&self, address: &str) -> Result<TracedChannel, ChannelError> {
        let mut channels = self.channels.lock().map_err(|_| ChannelError::Poisoned)?;
        if let Some(channel) = channels.get(address) {
            return Ok(traced(channel.clone()));
        }
        let member = self
            .members
            .borrow()
            .all()
            .iter()
            .find(|member| member.address == address)
            .map(|member| (member.role, member.internal_tls));
        let channel = match (&self.internal_tls, member) {
            // Roles other than the gateway take internal calls, with mutual TLS when on.
            (Some(client), Some((role, mode))) if role != crate::discovery::Role::Gateway => {
                client.endpoint(address, role, mode)?.connect_lazy()
            }
            _ => {
                let ca = self
                    .ca
                    .as_deref()
                    .filter(|_| address.starts_with("https://"));
                endpoint(address, ca, self.server_name.as_deref())?.connect_lazy()
            }
        };
        // Channels of members that left are dropped whenever a new one is made, so the cache
        // holds at most the current members' (and this one).
        {
            let members = self.members.borrow();
            channels
                .retain(|cached, _| members.all().iter().any(|member| member.address == *cached));
        }
        channels.insert(address.to_string(), channel.clone());
        Ok(traced(channel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{Member, StaticDiscovery};

    fn member(role: Role, port: u16, ready: bool) -> Member {
        Member {
            node_id: format!("{role}-{port}"),
            role,
            address: format!("http://127.0.0.1:{port}"),
            shard: 0,
            replica: 0,
            version: "test".to_string(),
            ready,
            recovering: false,
            internal_tls: Default::default(),
        }
    }

    #[tokio::test]
    async fn picks_only_ready_members_of_the_role() {
        let discovery = Arc::new(StaticDiscovery::new(1, Vec::new()));
        let channels = RoleChannels::new(discovery.clone());
        assert!(matches!(
            channels.pick(Role::Analyzer),
            Err(ChannelError::NoMember {
                role: Role::Analyzer
            })
        ));
        discovery
            .register(member(Role::Analyzer, 7712, false))
            .await
            .unwrap();
        discovery
            .register(member(Role::Generator, 7713, true))
            .await
            .unwrap();
        assert!(channels.pick(Role::Analyzer).is_err());
        discovery
            .register(member(Role::Analyzer, 7714, true))
            .await
            .unwrap();
        assert!(channels.pick(Role::Analyzer).is_ok());
        assert!(matches!(
            channels.channel("not a uri"),
            Err(ChannelError::Address(_))
        ));
    }
}
