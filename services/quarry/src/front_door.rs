//! The gateway's front door as configured: where its API keys come from, the per-key rate,
//! the admission limits — and the rule that a gateway reachable from other machines has TLS
//! or keys, unless told `--insecure`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quarry_gateway::front::key_store::{KeyLocation, KeyRing};
use quarry_gateway::front::{FrontDoor, KeyRates};
use quarry_kit::config::QuarryConfig;
use quarry_kit::discovery::EtcdAccess;
use tokio_util::sync::CancellationToken;

/// How often idle keys' rate buckets are forgotten.
const TIDY_EVERY: Duration = Duration::from_secs(60);

/// Where the configured keys live.
pub fn key_locations(config: &QuarryConfig) -> Vec<KeyLocation> {
    let mut locations = Vec::new();
    if let Some(path) = &config.auth.keys_file {
        locations.push(KeyLocation::File(path.clone()));
    }
    if config.auth.etcd_keys {
        locations.push(KeyLocation::Etcd {
            access: EtcdAccess::from_config(&config.discovery),
            cluster: config.cluster.clone(),
        });
    }
    locations
}

pub async fn build(
    config: &QuarryConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<FrontDoor>> {
    let keys = match config.auth.enabled() {
        true => {
            let reload = Duration::from_millis(config.auth.reload_ms);
            let ring = KeyRing::start(key_locations(config), reload, shutdown.clone())
                .await
                .map_err(|error| anyhow::anyhow!("API keys: {error}"))?;
            Some(ring)
        }
        false => None,
    };
    let rates = KeyRates::new(config.auth.rate_per_key, config.auth.burst_per_key);
    let door = Arc::new(FrontDoor::new(keys, rates, &config.admission));
    let tidied = Arc::clone(&door);
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(TIDY_EVERY) => tidied.tidy(),
            }
        }
    });
    Ok(door)
}

/// Refuses a gateway that anyone on the network could use without a key or see in
/// plaintext, unless `insecure` says so (secure by default, like Elasticsearch 8).
pub fn check_exposure(config: &QuarryConfig, address: SocketAddr) -> anyhow::Result<()> {
    if address.ip().is_loopback()
        || config.tls.enabled()
        || config.auth.enabled()
        || config.insecure
    {
        return Ok(());
    }
    anyhow::bail!(
        "the gateway would listen on {address}, reachable from other machines, with neither TLS \
         (--tls-cert/--tls-key) nor API keys (--keys-file, or auth.etcd_keys): anyone who reaches it \
         could read and delete every document. Add one of them, or pass --insecure to serve it open"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_open_non_loopback_gateway_needs_insecure() {
        let mut config = QuarryConfig::default();
        let loopback: SocketAddr = "127.0.0.1:7700".parse().unwrap();
        let everywhere: SocketAddr = "0.0.0.0:7700".parse().unwrap();
        assert!(check_exposure(&config, loopback).is_ok());
        let error = check_exposure(&config, everywhere).unwrap_err().to_string();
        assert!(error.contains("--insecure"), "{error}");
        config.auth.keys_file = Some("keys.jsonl".into());
        assert!(check_exposure(&config, everywhere).is_ok());
        config.auth.keys_file = None;
        config.insecure = true;
        assert!(check_exposure(&config, everywhere).is_ok());
    }
}
