//! The one retry policy every remote call goes through (ARM, Key Vault, Entra ID, Kubernetes):
//! exponential backoff with jitter, the server's Retry-After honoured, bounded in attempts and
//! in total time. What may be retried is decided by the error itself (`Retryable`).

use std::future::Future;
use std::time::{Duration, Instant};

/// How an error may be retried.
pub enum RetryHint {
    /// Never: a 4xx that will not change by asking again.
    No,
    /// With backoff, or after the server's Retry-After when given.
    After(Option<Duration>),
}

pub trait Retryable {
    fn retry_hint(&self) -> RetryHint;
}

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(180),
        }
    }
}

fn jitter(d: Duration) -> Duration {
    // A cheap per-call jitter in [0.5, 1.0) of the delay, so parallel retries spread out.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d.mul_f64(0.5 + (nanos % 1000) as f64 / 2000.0)
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1` (0-based), honouring the server's hint.
    pub fn delay(&self, attempt: u32, server: Option<Duration>) -> Duration {
        match server {
            Some(d) => d.min(self.max_delay.max(Duration::from_secs(60))),
            None => jitter(
                self.base_delay
                    .saturating_mul(1u32 << attempt.min(16))
                    .min(self.max_delay),
            ),
        }
    }

    pub async fn run<T, E, F, Fut>(&self, what: &str, mut call: F) -> Result<T, E>
    where
        E: Retryable + std::fmt::Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let start = Instant::now();
        let mut attempt = 0;
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let RetryHint::After(server) = e.retry_hint() else {
                        return Err(e);
                    };
                    let delay = self.delay(attempt, server);
                    attempt += 1;
                    if attempt >= self.max_attempts || start.elapsed() + delay > self.max_elapsed {
                        return Err(e);
                    }
                    tracing::debug!(%what, attempt, delay_ms = delay.as_millis() as u64, error = %e, "retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// Parses Retry-After as seconds (the only form ARM, Key Vault and kube-apiserver send).
pub fn parse_retry_after(v: Option<&str>) -> Option<Duration> {
    v.and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| *s >= 0.0)
        .map(Duration::from_secs_f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct E(bool);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "e")
        }
    }
    impl Retryable for E {
        fn retry_hint(&self) -> RetryHint {
            if self.0 {
                RetryHint::After(Some(Duration::ZERO))
            } else {
                RetryHint::No
            }
        }
    }

    #[tokio::test]
    async fn retries_only_what_may_be_retried() {
        let p = RetryPolicy {
            max_attempts: 3,
            ..Default::default()
        };
        let mut n = 0;
        let r: Result<(), E> = p
            .run("t", || {
                n += 1;
                async { Err(E(true)) }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(n, 3);
        let mut m = 0;
        let r: Result<(), E> = p
            .run("t", || {
                m += 1;
                async { Err(E(false)) }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(m, 1);
        assert!(p.delay(3, None) <= Duration::from_millis(1600));
        assert_eq!(parse_retry_after(Some("2")), Some(Duration::from_secs(2)));
    }
}
