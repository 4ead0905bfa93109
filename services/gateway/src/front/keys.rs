//! API keys: an id plus a 256-bit secret, shown once as a bearer token
//! (`qk_<id>_<secret>`); only the secret's SHA-256 is stored. A key has scopes, may be
//! limited to some collections, may expire, and may be revoked. Stored as JSON, one key per
//! line in a file, or one per etcd key.

use std::collections::HashMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Prefix of every token, so a leaked one is recognisable (secret scanners, logs).
const TOKEN_PREFIX: &str = "qk_";
/// Hex digits of a key id (64 bits: unique among any realistic number of keys).
const ID_HEX: usize = 16;
/// Hex digits of a secret (256 bits: never guessed, so a fast hash suffices to store it).
const SECRET_HEX: usize = 64;

/// What a key may do. `admin` includes `read` and `write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim() {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }
}

/// A stored key: everything but the secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    pub scopes: Vec<Scope>,
    /// Collections the key may touch; empty for all.
    #[serde(default)]
    pub collections: Vec<String>,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    #[serde(default)]
    pub expires_at: Option<u64>,
    #[serde(default)]
    pub revoked: bool,
    #[serde(default)]
    pub description: String,
}

impl ApiKey {
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }

    /// Whether the key may touch `collection`.
    pub fn allows_collection(&self, collection: &str) -> bool {
        self.collections.is_empty() || self.collections.iter().any(|name| name == collection)
    }
}

/// A new key and its token, which is shown once and stored nowhere.
pub struct NewKey {
    pub key: ApiKey,
    pub token: String,
}

/// Makes a key with a fresh id and secret from the operating system's random source.
pub fn generate(
    scopes: Vec<Scope>,
    collections: Vec<String>,
    expires_at: Option<u64>,
    description: String,
) -> Result<NewKey, getrandom::Error> {
    let mut id = [0u8; ID_HEX / 2];
    let mut secret = [0u8; SECRET_HEX / 2];
    getrandom::fill(&mut id)?;
    getrandom::fill(&mut secret)?;
    let (id, secret) = (hex(&id), hex(&secret));
    let key = ApiKey {
        secret_sha256: hex(&Sha256::digest(secret.as_bytes())),
        id: id.clone(),
        scopes,
        collections,
        created_at: now_s(),
        expires_at,
        revoked: false,
        description,
    };
    Ok(NewKey {
        key,
        token: format!("{TOKEN_PREFIX}{id}_{secret}"),
    })
}

/// Why a token was not accepted; each is `UNAUTHENTICATED`, and none carries the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    Missing,
    Malformed,
    Unknown(String),
    Expired(String),
    Revoked(String),
}

impl Rejection {
    /// Label of `quarry_gateway_auth_total{outcome}`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Unknown(_) => "unknown",
            Self::Expired(_) => "expired",
            Self::Revoked(_) => "revoked",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => write!(
                formatter,
                "authorization: no API key; send `authorization: Bearer <key>`"
            ),
            Self::Malformed => write!(
                formatter,
                "authorization: not a Quarry API key (expected `Bearer qk_<id>_<secret>`)"
            ),
            Self::Unknown(id) => write!(formatter, "authorization: API key {id} is not known"),
            Self::Expired(id) => write!(formatter, "authorization: API key {id} has expired"),
            Self::Revoked(id) => write!(formatter, "authorization: API key {id} was revoked"),
        }
    }
}

/// The keys in force, by id.
#[derive(Debug, Default, Clone)]
pub struct KeySet {
    keys: HashMap<String, ApiKey>,
}

impl KeySet {
    pub fn new(keys: impl IntoIterator<Item = ApiKey>) -> Self {
        Self {
            keys: keys.into_iter().map(|key| (key.id.clone(), key)).collect(),
        }
    }

    /// Reads JSON lines; blank lines and `#` comments are skipped. A later line with the
    /// same id replaces an earlier one (so appending a revoked copy revokes).
    pub fn parse_lines(text: &str) -> Result<Self, String> {
        let mut keys = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key: ApiKey = serde_json::from_str(line)
                .map_err(|error| format!("line {}: {error}", number + 1))?;
            keys.insert(key.id.clone(), key);
        }
        Ok(Self { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn into_keys(self) -> impl Iterator<Item = ApiKey> {
        self.keys.into_values()
    }

    pub fn same_as(&self, other: &KeySet) -> bool {
        self.keys == other.keys
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// The key an `authorization` header value names, if it is valid now.
    pub fn verify(&self, authorization: Option<&[u8]>, now_s: u64) -> Result<&ApiKey, Rejection> {
        let header = authorization.ok_or(Rejection::Missing)?;
        let header = std::str::from_utf8(header).map_err(|_| Rejection::Malformed)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(Rejection::Malformed)?
            .trim();
        let (id, secret) = split_token(token).ok_or(Rejection::Malformed)?;
        let key = self
            .keys
            .get(id)
            .ok_or_else(|| Rejection::Unknown(id.to_string()))?;
        let presented = hex(&Sha256::digest(secret.as_bytes()));
        if !constant_time_eq(presented.as_bytes(), key.secret_sha256.as_bytes()) {
            // The id is right and the secret wrong: said the same way as an unknown key.
            return Err(Rejection::Unknown(id.to_string()));
        }
        if key.revoked {
            return Err(Rejection::Revoked(id.to_string()));
        }
        if key.expires_at.is_some_and(|expires_at| now_s >= expires_at) {
            return Err(Rejection::Expired(id.to_string()));
        }
        Ok(key)
    }
}

/// `(id, secret)` of a well-formed token.
fn split_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let is_hex = |text: &str, length: usize| {
        text.len() == length && text.bytes().all(|byte| byte.is_ascii_hexdigit())
    };
    (is_hex(id, ID_HEX) && is_hex(secret, SECRET_HEX)).then_some((id, secret))
}

fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .zip(right)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}

pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Parses a lifetime such as `90d`, `12h`, `30m` or `45s` into seconds.
pub fn parse_lifetime(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.len().checked_sub(1)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let unit_s = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return None,
    };
    number.checked_mul(unit_s).filter(|seconds| *seconds > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(token: &str) -> Vec<u8> {
        format!("Bearer {token}").into_bytes()
    }

    #[test]
    fn a_generated_token_verifies_and_only_its_hash_is_stored() {
        let new = generate(vec![Scope::Read], Vec::new(), None, String::new()).unwrap();
        let line = serde_json::to_string(&new.key).unwrap();
        let secret = new.token.rsplit('_').next().unwrap();
        assert!(!line.contains(secret), "the stored key holds the secret");
        let keys = KeySet::parse_lines(&line).unwrap();
        let key = keys.verify(Some(&bearer(&new.token)), now_s()).unwrap();
        assert_eq!(key.id, new.key.id);
        assert!(key.allows(Scope::Read) && !key.allows(Scope::Write));
    }

    #[test]
    fn wrong_missing_malformed_expired_and_revoked_tokens_are_refused() {
        let new = generate(vec![Scope::Write], Vec::new(), Some(1_000), String::new()).unwrap();
        let keys = KeySet::new([new.key.clone()]);
        let id = new.key.id.clone();
        assert_eq!(keys.verify(None, 10).unwrap_err(), Rejection::Missing);
        assert_eq!(
            keys.verify(Some(b"Basic abc"), 10).unwrap_err(),
            Rejection::Malformed
        );
        assert_eq!(
            keys.verify(Some(&bearer("qk_12_34")), 10).unwrap_err(),
            Rejection::Malformed
        );
        let mut wrong_secret = new.token.clone();
        let last = wrong_secret.pop().unwrap();
        wrong_secret.push(if last == '0' { '1' } else { '0' });
        assert_eq!(
            keys.verify(Some(&bearer(&wrong_secret)), 10).unwrap_err(),
            Rejection::Unknown(id.clone())
        );
        let other = generate(vec![Scope::Read], Vec::new(), None, String::new()).unwrap();
        assert_eq!(
            keys.verify(Some(&bearer(&other.token)), 10).unwrap_err(),
            Rejection::Unknown(other.key.id)
        );
        assert!(keys.verify(Some(&bearer(&new.token)), 999).is_ok());
        assert_eq!(
            keys.verify(Some(&bearer(&new.token)), 1_000).unwrap_err(),
            Rejection::Expired(id.clone())
        );
        let revoked = ApiKey {
            revoked: true,
            ..new.key.clone()
        };
        let lines = format!(
            "{}\n# comment\n\n{}\n",
            serde_json::to_string(&new.key).unwrap(),
            serde_json::to_string(&revoked).unwrap()
        );
        let keys = KeySet::parse_lines(&lines).unwrap();
        assert_eq!(
            keys.verify(Some(&bearer(&new.token)), 10).unwrap_err(),
            Rejection::Revoked(id)
        );
    }

    #[test]
    fn errors_never_carry_the_secret() {
        let new = generate(vec![Scope::Read], Vec::new(), Some(1), String::new()).unwrap();
        let keys = KeySet::new([new.key.clone()]);
        let secret = new.token.rsplit('_').next().unwrap().to_string();
        let rejection = keys.verify(Some(&bearer(&new.token)), 5).unwrap_err();
        assert!(!rejection.to_string().contains(&secret));
        assert!(rejection.to_string().contains(&new.key.id));
    }

    #[test]
    fn admin_includes_read_and_write_and_collections_limit() {
        let key = ApiKey {
            id: "k".into(),
            secret_sha256: String::new(),
            scopes: vec![Scope::Admin],
            collections: vec!["hr".into()],
            created_at: 0,
            expires_at: None,
            revoked: false,
            description: String::new(),
        };
        assert!(key.allows(Scope::Read) && key.allows(Scope::Write));
        assert!(key.allows_collection("hr") && !key.allows_collection("default"));
    }

    #[test]
    fn lifetimes_parse() {
        assert_eq!(parse_lifetime("90d"), Some(90 * 86_400));
        assert_eq!(parse_lifetime("2s"), Some(2));
        assert_eq!(parse_lifetime("0d"), None);
        assert_eq!(parse_lifetime("d"), None);
        assert_eq!(parse_lifetime("5w"), None);
    }
}
