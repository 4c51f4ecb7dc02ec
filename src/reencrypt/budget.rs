//! Memory bounded in bytes, not in items: Helm release records (50–200 KiB each, up to 1 MiB
//! for any Secret) sort next to each other, so a page of 100 can weigh 100 times a page of
//! tokens. Pages reserve their expected size before they are listed and release it when their
//! writes are done; page sizes follow the bytes per Secret each namespace has shown so far.

use std::sync::Mutex;
use tokio::sync::Notify;

pub struct Budget {
    max: u64,
    used: Mutex<u64>,
    notify: Notify,
}

impl Budget {
    pub fn new(max: u64) -> Self {
        Budget {
            max,
            used: Mutex::new(0),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `n` more bytes fit (always lets one reservation through when nothing is held).
    pub async fn reserve(&self, n: u64) {
        loop {
            let notified = self.notify.notified();
            {
                let mut used = self.lock();
                if *used == 0 || *used + n <= self.max {
                    *used += n;
                    return;
                }
            }
            notified.await;
        }
    }

    /// Replaces an estimate with the real size once known (this may go over the maximum: the
    /// next reservations then wait).
    pub fn adjust(&self, reserved: u64, actual: u64) {
        let mut used = self.lock();
        *used = used.saturating_sub(reserved) + actual;
        drop(used);
        self.notify.notify_waiters();
    }

    pub fn release(&self, n: u64) {
        let mut used = self.lock();
        *used = used.saturating_sub(n);
        drop(used);
        self.notify.notify_waiters();
    }
}

/// Bytes held by pages at most, and the size a page aims for.
pub const PAGES_MAX_BYTES: u64 = 16 << 20;
pub const PAGE_TARGET_BYTES: u64 = 1 << 20;
/// A namespace's first page: its Secrets' size is not known yet.
pub const FIRST_PAGE_LIMIT: u32 = 4;
/// The largest a Secret can be (the API server's 1 MiB data limit, plus metadata).
pub const SECRET_MAX_BYTES: u64 = (1 << 20) + (64 << 10);

/// A Secret at least this large counts as large: few of them are written at once.
pub const LARGE_SECRET_BYTES: usize = 64 << 10;
pub const LARGE_IN_FLIGHT: usize = 32;
/// List requests in flight at once: each may bring a page larger than expected.
pub const LISTS_IN_FLIGHT: usize = 4;

/// The page size for a namespace, from the bytes per Secret seen so far.
pub fn page_limit(batch_size: u32, bytes_per_secret: Option<u64>) -> u32 {
    match bytes_per_secret {
        None | Some(0) => batch_size,
        Some(b) => ((PAGE_TARGET_BYTES / b) as u32).clamp(1, batch_size.max(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_limits_follow_bytes() {
        assert_eq!(page_limit(50, None), 50);
        assert_eq!(page_limit(50, Some(2_000)), 50);
        assert_eq!(page_limit(50, Some(170_000)), 6);
        assert_eq!(page_limit(50, Some(5_000_000)), 1);
    }

    #[tokio::test]
    async fn reservations_wait_for_room() {
        let b = std::sync::Arc::new(Budget::new(100));
        b.reserve(80).await;
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.reserve(50).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        b.release(80);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
