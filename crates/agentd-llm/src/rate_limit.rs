//! A tokens-per-minute limiter: a token bucket refilled continuously.
//!
//! A call reserves its estimated tokens (prompt + `max_tokens`) before sending and settles the
//! reservation against actual usage afterwards. Waiters queue in FIFO order behind a tokio
//! mutex, so a large request is not starved by a stream of small ones. A request larger than
//! the whole per-minute allowance waits until the bucket is full and then goes through, leaving
//! the bucket in debt: later requests wait until the debt is repaid, so the average rate holds.

use std::sync::{Mutex, PoisonError};

use tokio::time::{Duration, Instant};

/// A continuously refilled token bucket holding at most one minute of allowance.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    capacity: f64,
    per_second: f64,
    state: Mutex<BucketState>,
    /// Held while waiting, so waiters are served in arrival order.
    turn: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct BucketState {
    /// Tokens available now; negative after an oversized request (debt).
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    /// A full bucket allowing `tokens_per_minute`.
    pub(crate) fn per_minute(tokens_per_minute: u32) -> Self {
        let capacity = f64::from(tokens_per_minute.max(1));
        TokenBucket {
            capacity,
            per_second: capacity / 60.0,
            state: Mutex::new(BucketState {
                tokens: capacity,
                refilled_at: Instant::now(),
            }),
            turn: tokio::sync::Mutex::new(()),
        }
    }

    /// Waits until `tokens` are available (or, for more than the capacity, until the bucket is
    /// full), then takes them. Dropping the future while waiting takes nothing.
    pub(crate) async fn acquire(&self, tokens: u32) {
        let _turn = self.turn.lock().await;
        let needed = f64::from(tokens);
        loop {
            let wait = {
                let mut state = self.lock();
                self.refill(&mut state);
                let threshold = needed.min(self.capacity);
                if state.tokens >= threshold {
                    state.tokens -= needed;
                    return;
                }
                (threshold - state.tokens) / self.per_second
            };
            // Round up to the millisecond so a wait never falls just short of the refill.
            tokio::time::sleep(Duration::from_millis((wait * 1000.0).ceil() as u64)).await;
        }
    }

    /// Corrects a reservation of `reserved` tokens to the `used` ones.
    pub(crate) fn settle(&self, reserved: u32, used: u32) {
        let mut state = self.lock();
        self.refill(&mut state);
        state.tokens = (state.tokens + f64::from(reserved) - f64::from(used)).min(self.capacity);
    }

    fn refill(&self, state: &mut BucketState) {
        let now = Instant::now();
        let elapsed = now.duration_since(state.refilled_at).as_secs_f64();
        state.tokens = (state.tokens + elapsed * self.per_second).min(self.capacity);
        state.refilled_at = now;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BucketState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn available(&self) -> f64 {
        let mut state = self.lock();
        self.refill(&mut state);
        state.tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 600 tokens per minute = 10 per second; paused time makes the waits exact.

    #[tokio::test(start_paused = true)]
    async fn full_bucket_serves_immediately_then_waits_for_refill() {
        let bucket = TokenBucket::per_minute(600);
        let start = Instant::now();
        bucket.acquire(600).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        bucket.acquire(100).await;
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited < Duration::from_millis(10_100),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn oversized_request_passes_when_full_and_leaves_debt() {
        let bucket = TokenBucket::per_minute(600);
        let start = Instant::now();
        bucket.acquire(1000).await; // more than a minute's worth: no deadlock
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert!((bucket.available() + 400.0).abs() < 1e-6);
        bucket.acquire(10).await; // must repay 400 and then find 10: 41 s
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(41) && waited < Duration::from_millis(41_100),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn oversized_request_waits_for_a_full_bucket() {
        let bucket = TokenBucket::per_minute(600);
        bucket.acquire(300).await;
        let start = Instant::now();
        bucket.acquire(5000).await; // needs the bucket full again: 30 s
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(30) && waited < Duration::from_millis(30_100),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn settle_refunds_unused_reservation() {
        let bucket = TokenBucket::per_minute(600);
        bucket.acquire(500).await;
        bucket.settle(500, 120);
        assert!((bucket.available() - 480.0).abs() < 1e-6);
        bucket.settle(0, 1000); // usage beyond the reservation puts the bucket in debt
        assert!((bucket.available() + 520.0).abs() < 1e-6);
        bucket.settle(10_000, 0); // never above capacity
        assert!((bucket.available() - 600.0).abs() < 1e-6);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_in_order() {
        let bucket = std::sync::Arc::new(TokenBucket::per_minute(600));
        bucket.acquire(600).await;
        let order = std::sync::Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (index, tokens) in [(0, 300u32), (1, 10), (2, 10)] {
            let (bucket, order) = (bucket.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                bucket.acquire(tokens).await;
                order.lock().unwrap().push(index);
            }));
            tokio::task::yield_now().await; // let it queue before the next one
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            vec![0, 1, 2],
            "small requests must not overtake"
        );
    }
}
