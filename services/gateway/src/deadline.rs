//! Deadlines: the client's `grpc-timeout` bounds every downstream call, so no hop outlives
//! the question it serves.

use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;

/// The client's remaining time, from the `grpc-timeout` header (e.g. `250m`, `5S`), if any.
pub fn client_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 {
        return None;
    }
    let (amount, unit) = value.split_at(value.len() - 1);
    let amount: u64 = amount.parse().ok()?;
    match unit {
        "H" => Some(Duration::from_secs(amount.saturating_mul(3600))),
        "M" => Some(Duration::from_secs(amount.saturating_mul(60))),
        "S" => Some(Duration::from_secs(amount)),
        "m" => Some(Duration::from_millis(amount)),
        "u" => Some(Duration::from_micros(amount)),
        "n" => Some(Duration::from_nanos(amount)),
        _ => None,
    }
}

/// When the client stops waiting, if it said.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    expires: Option<Instant>,
}

impl Deadline {
    pub fn from_metadata(metadata: &MetadataMap) -> Self {
        Self::after(client_timeout(metadata))
    }

    pub fn after(timeout: Option<Duration>) -> Self {
        Self {
            // A timeout too far away to represent is no deadline at all.
            expires: timeout.and_then(|timeout| Instant::now().checked_add(timeout)),
        }
    }

    /// The timeout of one downstream call: the hop's own limit, cut to the time left.
    pub fn hop(&self, hop_limit: Duration) -> Duration {
        match self.expires {
            Some(expires) => hop_limit.min(expires.saturating_duration_since(Instant::now())),
            None => hop_limit,
        }
    }
}

/// The time an operation of several phases has (a search: statistics, search, fetch),
/// handed out phase by phase as shares of what is left, so that no phase can take it all.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    expires: tokio::time::Instant,
}

impl Budget {
    pub fn new(total: Duration) -> Self {
        Self {
            expires: tokio::time::Instant::now() + total,
        }
    }

    pub fn remaining(&self) -> Duration {
        self.expires
            .saturating_duration_since(tokio::time::Instant::now())
    }

    /// `fraction` of the time left.
    pub fn share(&self, fraction: f64) -> Duration {
        self.remaining().mul_f64(fraction.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_grpc_timeout_unit() {
        let parse = |text: &str| {
            let mut metadata = MetadataMap::new();
            metadata.insert("grpc-timeout", text.parse().unwrap());
            client_timeout(&metadata)
        };
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("x"), None);
        let far = parse("18446744073709551615S");
        assert_eq!(
            Deadline::after(far).hop(Duration::from_secs(1)),
            Duration::from_secs(1)
        );
        assert_eq!(parse("12q"), None);
        assert_eq!(client_timeout(&MetadataMap::new()), None);
    }

    #[test]
    fn the_client_deadline_cuts_the_hop_limit() {
        let second = Duration::from_secs(1);
        assert!(Deadline::after(Some(second / 4)).hop(second) <= second / 4);
        assert_eq!(Deadline::after(Some(second * 4)).hop(second), second);
        assert_eq!(Deadline::after(None).hop(second), second);
        assert_eq!(
            Deadline::after(Some(Duration::ZERO)).hop(second),
            Duration::ZERO
        );
    }
}
