//! API Priority and Fairness, as seen from a client: above a write rate, mutating requests are
//! answered 429 with Retry-After. Modelled as a token bucket with a small burst.

use std::sync::Mutex;
use std::time::Instant;

pub struct WriteLimiter {
    qps: Option<f64>,
    state: Mutex<(f64, Instant)>,
    pub rejected: std::sync::atomic::AtomicU64,
}

impl WriteLimiter {
    pub fn new(qps: Option<f64>) -> Self {
        let burst = qps.map(burst_of).unwrap_or(0.0);
        WriteLimiter {
            qps,
            state: Mutex::new((burst, Instant::now())),
            rejected: Default::default(),
        }
    }

    /// True when the write may proceed.
    pub fn admit(&self) -> bool {
        let Some(qps) = self.qps else { return true };
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(st.1).as_secs_f64() * qps;
        st.0 = (st.0 + refill).min(burst_of(qps));
        st.1 = now;
        if st.0 >= 1.0 {
            st.0 -= 1.0;
            true
        } else {
            self.rejected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            false
        }
    }
}

/// A tenth of a second's worth, at least one request.
fn burst_of(qps: f64) -> f64 {
    (qps / 10.0).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_a_burst_then_refuses() {
        let l = WriteLimiter::new(Some(50.0));
        let admitted = (0..20).filter(|_| l.admit()).count();
        assert_eq!(admitted, 5);
        assert!(WriteLimiter::new(None).admit());
    }
}
