//! How many requests may be in flight, and how fast: additive increase, multiplicative decrease.
//! A 429 (API Priority and Fairness) lowers both the in-flight limit and a send rate measured
//! from recent successes; quiet periods raise them again. Without any 429 the engine runs
//! unpaced at its configured concurrency.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

const DECREASE: f64 = 0.85;
const WINDOW: Duration = Duration::from_secs(1);
const HOLD: Duration = Duration::from_millis(300);
/// Above this share of 429s among the last second's answers, the server is over capacity.
const THROTTLED_SHARE: f64 = 0.08;

struct State {
    max: usize,
    limit: f64,
    in_flight: usize,
    /// Adaptive send rate (requests/s); None until the first 429.
    rate: Option<f64>,
    user_rate: Option<f64>,
    next_send: Instant,
    last_decrease: Instant,
    last_increase: Instant,
    recent: VecDeque<Instant>,
    throttled: VecDeque<Instant>,
    started: Instant,
}

fn trim(q: &mut VecDeque<Instant>, now: Instant) {
    while q.front().is_some_and(|t| now.duration_since(*t) > WINDOW) {
        q.pop_front();
    }
}

pub struct Controller {
    state: Mutex<State>,
    notify: Notify,
}

pub struct Permit<'a>(&'a Controller);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
        self.0.notify.notify_one();
    }
}

impl Controller {
    pub fn new(concurrency: usize, max_qps: Option<f64>) -> Self {
        let now = Instant::now();
        let max = concurrency.max(1);
        Controller {
            state: Mutex::new(State {
                max,
                limit: max as f64,
                in_flight: 0,
                rate: None,
                user_rate: max_qps.filter(|q| *q > 0.0),
                next_send: now,
                last_decrease: now - HOLD,
                last_increase: now,
                recent: VecDeque::new(),
                throttled: VecDeque::new(),
                started: now,
            }),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a slot within the in-flight limit and for the send rate.
    pub async fn acquire(&self) -> Permit<'_> {
        loop {
            let notified = self.notify.notified();
            let send_at = {
                let mut s = self.lock();
                if (s.in_flight as f64) < s.limit.floor().max(1.0) {
                    s.in_flight += 1;
                    let rate = match (s.rate, s.user_rate) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    let now = Instant::now();
                    let at = s.next_send.max(now);
                    if let Some(r) = rate {
                        s.next_send = at + Duration::from_secs_f64(1.0 / r.max(0.5));
                    }
                    Some(at)
                } else {
                    None
                }
            };
            match send_at {
                Some(at) => {
                    tokio::time::sleep_until(at.into()).await;
                    return Permit(self);
                }
                None => notified.await,
            }
        }
    }

    pub fn on_success(&self) {
        let mut s = self.lock();
        let now = Instant::now();
        s.recent.push_back(now);
        trim(&mut s.recent, now);
        if s.limit < s.max as f64 {
            s.limit = (s.limit + 1.0 / s.limit).min(s.max as f64);
        }
        if let Some(r) = s.rate
            && now.duration_since(s.last_increase) >= Duration::from_millis(500)
            && now.duration_since(s.last_decrease) >= Duration::from_millis(500)
        {
            s.rate = Some(r + (r * 0.02).max(1.0));
            s.last_increase = now;
        }
        drop(s);
        self.notify.notify_one();
    }

    /// A 429: slow down, at most once per hold period (the in-flight requests of the same
    /// moment all see it).
    pub fn on_throttle(&self) {
        let mut s = self.lock();
        let now = Instant::now();
        s.throttled.push_back(now);
        trim(&mut s.throttled, now);
        trim(&mut s.recent, now);
        let (ok, refused) = (s.recent.len() as f64, s.throttled.len() as f64);
        // A lone 429 among few answers says nothing yet; a share of them does.
        if refused < 3.0 || refused / (ok + refused) <= THROTTLED_SHARE {
            return;
        }
        if now.duration_since(s.last_decrease) < HOLD {
            return;
        }
        s.last_decrease = now;
        let span = now
            .duration_since(s.started)
            .min(WINDOW)
            .as_secs_f64()
            .max(0.05);
        let measured = s.recent.len() as f64 / span;
        let current = s.rate.unwrap_or(f64::MAX).min(measured.max(1.0));
        s.rate = Some((current * DECREASE).max(1.0));
        s.limit = (s.limit * 0.7).max(2.0_f64.min(s.max as f64));
    }

    pub fn snapshot(&self) -> (usize, Option<f64>) {
        let s = self.lock();
        (s.limit.floor() as usize, s.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn throttling_lowers_then_successes_raise() {
        let c = Controller::new(16, None);
        for _ in 0..10 {
            let _p = c.acquire().await;
            c.on_success();
        }
        for _ in 0..3 {
            c.on_throttle();
        }
        let (limit, rate) = c.snapshot();
        assert!(limit < 16 && rate.is_some());
        c.on_throttle(); // within the hold period: no second cut
        assert_eq!(c.snapshot().0, limit);
        for _ in 0..200 {
            c.on_success();
        }
        assert!(c.snapshot().0 > limit);
    }

    #[tokio::test]
    async fn a_few_random_429s_do_not_slow_the_engine() {
        let c = Controller::new(16, None);
        for i in 0..400 {
            let _p = c.acquire().await;
            if i % 25 == 0 {
                c.on_throttle(); // 4%: not the server's load
            } else {
                c.on_success();
            }
        }
        assert_eq!(c.snapshot(), (16, None));
    }

    #[tokio::test]
    async fn in_flight_is_bounded() {
        let c = std::sync::Arc::new(Controller::new(2, None));
        let a = c.acquire().await;
        let _b = c.acquire().await;
        let c2 = c.clone();
        let third = tokio::spawn(async move {
            let _p = c2.acquire().await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!third.is_finished());
        drop(a);
        tokio::time::timeout(Duration::from_secs(1), third)
            .await
            .unwrap()
            .unwrap();
    }
}
