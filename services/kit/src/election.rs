//! One leader among replicas of a role, through etcd's election API (the scheduler's
//! `/quarry/<cluster>/scheduler/leader`, the placement coordinator's
//! `/quarry/<cluster>/placement/coordinator`). A replica campaigns with its advertised address
//! as the value, under a lease it keeps alive; `campaign` returns once it leads. The term ends
//! the moment the lease cannot be refreshed (`Term::lost`), and on a graceful stop the lease
//! is revoked so a standby takes over at once. Followers read the leader's address from the
//! election. A leader's writes are fenced by the election key's creation revision.

use std::time::Duration;

use etcd_client::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::KitError;

fn election_error(error: etcd_client::Error) -> KitError {
    KitError::Discovery(format!("etcd election: {error}"))
}

/// This replica's place in the election.
#[derive(Clone)]
pub struct Election {
    client: Client,
    name: String,
    address: String,
    ttl_seconds: i64,
}

/// A leadership term: the election key whose creation revision fences writes, and a token
/// cancelled as soon as the lease may have lapsed.
pub struct Term {
    pub key: Vec<u8>,
    pub revision: i64,
    pub lost: CancellationToken,
    lease: i64,
    client: Client,
}

impl Election {
    /// Campaigns in the election called `name` (an etcd key prefix).
    pub fn new(client: Client, name: String, address: &str, ttl_seconds: i64) -> Self {
        Self {
            client,
            name,
            address: address.to_string(),
            ttl_seconds: ttl_seconds.max(2),
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// The leader's advertised address, or `None` while nobody leads.
    pub async fn leader_address(&self) -> Result<Option<String>, KitError> {
        let mut election = self.client.election_client();
        match election.leader(self.name.as_str()).await {
            Ok(response) => Ok(response
                .kv()
                .map(|entry| String::from_utf8_lossy(entry.value()).to_string())),
            Err(error) if error.to_string().contains("no leader") => Ok(None),
            Err(error) => Err(election_error(error)),
        }
    }

    /// Waits until this replica leads (or `shutdown`); its lease is kept alive meanwhile.
    pub async fn campaign(&self, shutdown: &CancellationToken) -> Result<Term, KitError> {
        let mut client = self.client.clone();
        let lease = client
            .lease_grant(self.ttl_seconds, None)
            .await
            .map_err(election_error)?
            .id();
        let lost = CancellationToken::new();
        tokio::spawn(keep_alive(
            client.clone(),
            lease,
            self.ttl_seconds,
            lost.clone(),
        ));
        let mut election = client.election_client();
        let campaign = election.campaign(self.name.as_str(), self.address.as_str(), lease);
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => Err(KitError::Discovery("shutting down".to_string())),
            _ = lost.cancelled() => Err(KitError::Discovery("lease lost while campaigning".to_string())),
            response = campaign => response.map_err(election_error),
        };
        let response = match outcome {
            Ok(response) => response,
            Err(error) => {
                lost.cancel();
                let _ = client.lease_revoke(lease).await;
                return Err(error);
            }
        };
        let Some(leader) = response.leader() else {
            lost.cancel();
            let _ = client.lease_revoke(lease).await;
            return Err(KitError::Discovery(
                "campaign answered without a leader key".to_string(),
            ));
        };
        info!(
            election = self.name,
            address = self.address,
            lease,
            "elected leader"
        );
        Ok(Term {
            key: leader.key().to_vec(),
            revision: leader.rev(),
            lost,
            lease,
            client,
        })
    }
}

impl Term {
    /// Ends the term: stops the keep-alive and revokes the lease, which deletes the election
    /// key so that a standby's campaign returns now rather than after the TTL.
    pub async fn resign(mut self) {
        self.lost.cancel();
        if let Err(error) = self.client.lease_revoke(self.lease).await {
            warn!(error = %error, "could not revoke the leader lease; it expires with its TTL");
        }
    }
}

/// Refreshes the lease every third of its TTL; cancels `lost` on the first failure or
/// unanswered refresh.
async fn keep_alive(mut client: Client, lease: i64, ttl_seconds: i64, lost: CancellationToken) {
    let period = Duration::from_millis((ttl_seconds as u64 * 1000) / 3);
    let outcome: Result<(), String> = async {
        let (mut keeper, mut responses) = client
            .lease_keep_alive(lease)
            .await
            .map_err(|error| error.to_string())?;
        loop {
            tokio::select! {
                _ = lost.cancelled() => return Ok(()),
                _ = tokio::time::sleep(period) => {}
            }
            keeper
                .keep_alive()
                .await
                .map_err(|error| error.to_string())?;
            // An unanswered refresh counts as lost: the lease may lapse meanwhile.
            let answer = tokio::time::timeout(period, responses.message())
                .await
                .map_err(|_| format!("lease {lease}: no answer to a refresh within {period:?}"))?;
            match answer.map_err(|error| error.to_string())? {
                Some(response) if response.ttl() > 0 => {}
                _ => return Err(format!("lease {lease} expired")),
            }
        }
    }
    .await;
    if let Err(error) = outcome {
        warn!(lease, error, "leader lease lost");
    }
    lost.cancel();
}
