//! Settings of the distribution service and the rate limits it applies.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use seaport_shared::distribution::DEFAULT_PEER_PORT;

/// Settings of the distribution service (flags of `seaport-agent run`).
#[derive(Debug, Clone)]
pub struct DistributionOptions {
    /// UDP port of the peer server; 0 disables serving peers.
    pub peer_port: u16,
    /// Download cap in bytes/s (0: none).
    pub max_download_rate: u64,
    /// Upload cap to peers in bytes/s (0: none).
    pub max_upload_rate: u64,
    /// Piece requests to peers in flight at once (up to 3 pieces granted by
    /// the coordinator come on top).
    pub fetch_concurrency: usize,
    /// Piece requests served to peers at once.
    pub serve_concurrency: usize,
}

impl Default for DistributionOptions {
    fn default() -> Self {
        DistributionOptions {
            peer_port: DEFAULT_PEER_PORT,
            max_download_rate: 0,
            max_upload_rate: 0,
            fetch_concurrency: 8,
            serve_concurrency: 8,
        }
    }
}

/// Flags of `seaport-agent run` for layer distribution.
#[derive(Debug, Clone, clap::Args)]
pub struct DistributionArgs {
    /// UDP port to serve pieces to peer nodes on (0: do not serve).
    #[arg(long, env = "SEAPORT_AGENT_PEER_PORT", default_value_t = DEFAULT_PEER_PORT)]
    pub peer_port: u16,
    /// Download rate cap in Mbit/s (0: none).
    #[arg(long, env = "SEAPORT_AGENT_MAX_DOWNLOAD_MBIT", default_value_t = 0)]
    pub max_download_mbit: u64,
    /// Upload rate cap to peers in Mbit/s (0: none).
    #[arg(long, env = "SEAPORT_AGENT_MAX_UPLOAD_MBIT", default_value_t = 0)]
    pub max_upload_mbit: u64,
    /// Piece requests to peers in flight at once (up to 3 pieces granted by
    /// the coordinator come on top).
    #[arg(long, env = "SEAPORT_AGENT_FETCH_CONCURRENCY", default_value_t = 8)]
    pub fetch_concurrency: usize,
    /// Piece requests served to peers at once.
    #[arg(long, env = "SEAPORT_AGENT_SERVE_CONCURRENCY", default_value_t = 8)]
    pub serve_concurrency: usize,
}

impl DistributionArgs {
    pub fn options(&self) -> DistributionOptions {
        DistributionOptions {
            peer_port: self.peer_port,
            max_download_rate: self.max_download_mbit * 1_000_000 / 8,
            max_upload_rate: self.max_upload_mbit * 1_000_000 / 8,
            fetch_concurrency: self.fetch_concurrency.max(1),
            serve_concurrency: self.serve_concurrency.max(1),
        }
    }
}

/// A token bucket: callers take bytes and sleep while the bucket is in debt.
#[derive(Debug)]
pub struct RateLimit {
    rate: u64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    /// `rate` bytes per second; 0 means unlimited.
    pub fn new(rate: u64) -> RateLimit {
        RateLimit {
            rate,
            state: Mutex::new((0.0, Instant::now())),
        }
    }

    /// How long to wait before sending `bytes` more (and books them).
    pub fn book(&self, bytes: usize, now: Instant) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        let rate = self.rate as f64;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = &mut *st;
        // Refill, with a burst of at most a quarter second.
        *tokens =
            (*tokens + now.saturating_duration_since(*last).as_secs_f64() * rate).min(rate / 4.0);
        *last = now;
        *tokens -= bytes as f64;
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / rate)
        }
    }

    pub async fn take(&self, bytes: usize) {
        let wait = self.book(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_books_debt_as_waiting_time() {
        let r = RateLimit::new(1000);
        let t0 = Instant::now();
        assert_eq!(r.book(0, t0), Duration::ZERO);
        let w = r.book(500, t0);
        assert!(
            w >= Duration::from_millis(490) && w <= Duration::from_millis(510),
            "{w:?}"
        );
        // A second later the debt is paid and 250 bytes of burst are back.
        let w = r.book(250, t0 + Duration::from_secs(1));
        assert_eq!(w, Duration::ZERO);
        assert_eq!(RateLimit::new(0).book(1 << 30, t0), Duration::ZERO);
    }
}
