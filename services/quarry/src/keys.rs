//! `quarry keys create|list|revoke`: API keys in a file or in etcd. A new key's token is
//! printed once, here; what is stored is its id, the SHA-256 of its secret, its scopes,
//! collections and expiry.

use anyhow::Context;
use quarry_gateway::front::key_store::KeyLocation;
use quarry_gateway::front::keys::{generate, now_s, parse_lifetime, ApiKey, Scope};

use quarry_kit::config::DiscoveryConfig;
use quarry_kit::discovery::EtcdAccess;

use crate::cli::{KeyStoreArgs, KeysCommand};

pub async fn run(command: &KeysCommand, discovery: &DiscoveryConfig) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create(args) => {
            let mut scopes = Vec::new();
            for name in &args.scopes {
                let scope = Scope::parse(name).with_context(|| {
                    format!("--scopes: {name:?} is not a scope (read, write, admin)")
                })?;
                if !scopes.contains(&scope) {
                    scopes.push(scope);
                }
            }
            let expires_at = match &args.expires {
                Some(text) => {
                    let lifetime = parse_lifetime(text).with_context(|| {
                        format!("--expires: {text:?} is not a lifetime such as 90d, 12h or 30m")
                    })?;
                    Some(now_s() + lifetime)
                }
                None => None,
            };
            let new = generate(
                scopes,
                args.collections.clone(),
                expires_at,
                args.description.clone(),
            )
            .context("no randomness from the operating system")?;
            location(&args.store, discovery)
                .put(&new.key)
                .await
                .map_err(anyhow::Error::msg)?;
            eprintln!(
                "created API key {} ({}); it is shown once, here:",
                new.key.id,
                scope_names(&new.key)
            );
            println!("{}", new.token);
            Ok(())
        }
        KeysCommand::List(store) => {
            let keys = location(store, discovery)
                .load()
                .await
                .map_err(anyhow::Error::msg)?;
            for key in keys {
                println!("{}", describe(&key));
            }
            Ok(())
        }
        KeysCommand::Revoke(args) => {
            let store = location(&args.store, discovery);
            let keys = store.load().await.map_err(anyhow::Error::msg)?;
            let key = keys
                .into_iter()
                .find(|key| key.id == args.id)
                .with_context(|| format!("no API key {} there", args.id))?;
            store
                .put(&ApiKey {
                    revoked: true,
                    ..key
                })
                .await
                .map_err(anyhow::Error::msg)?;
            println!("revoked API key {}", args.id);
            Ok(())
        }
    }
}

fn location(store: &KeyStoreArgs, discovery: &DiscoveryConfig) -> KeyLocation {
    match &store.file {
        Some(path) => KeyLocation::File(path.clone()),
        // etcd's TLS and user come from the configuration (`discovery.etcd_*`).
        None => KeyLocation::Etcd {
            access: EtcdAccess::with_endpoints(discovery, store.etcd.clone()),
            cluster: store.cluster.clone(),
        },
    }
}

fn scope_names(key: &ApiKey) -> String {
    key.scopes
        .iter()
        .map(|scope| scope.name())
        .collect::<Vec<_>>()
        .join(",")
}

fn describe(key: &ApiKey) -> String {
    let collections = match key.collections.is_empty() {
        true => "*".to_string(),
        false => key.collections.join(","),
    };
    let expires = match key.expires_at {
        Some(at) if at <= now_s() => "expired".to_string(),
        Some(at) => format!("expires in {}h", (at - now_s()) / 3600),
        None => "no expiry".to_string(),
    };
    let state = if key.revoked { "revoked" } else { "active" };
    format!(
        "{}\t{}\tcollections={collections}\t{expires}\t{state}\t{}",
        key.id,
        scope_names(key),
        key.description
    )
}
