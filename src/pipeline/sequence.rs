//! Reading ahead of a consumer when each item depends on the ones before it.
//!
//! [`super::Prefetcher`] lets any worker take any numbered job, so a job must be a function of
//! its number alone. Some inputs are drawn in sequence instead: clip-classification
//! pretraining draws each batch's clips and augmentation from one generator that runs through
//! the whole optimisation. [`InSequence`] produces such items in order on one thread of a
//! `std::thread::scope` (so they may borrow the caller's dataset), at most a bounded number
//! ahead of the consumer, with a pool of threads of its own for each item's parallel work;
//! the items, and everything computed from them, are the same as if the consumer had made
//! them itself. A consumer that stops early (an error, a finished
//! loop) drops its end, and the producer stops at its next item.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::Scope;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Items `produce(0)`, `produce(1)`, ... made in order on a thread of their own; see the
/// module documentation.
pub struct InSequence<T> {
    items: Receiver<Result<T>>,
    left: usize,
    waited: Duration,
}

impl<T: Send> InSequence<T> {
    /// Start producing `count` items on a thread of `scope`, at most `ahead` (at least 1)
    /// made and not yet taken. The first error ends the sequence: it is the last item.
    pub fn spawn<'scope, 'env, F>(
        scope: &'scope Scope<'scope, 'env>,
        count: usize,
        ahead: usize,
        produce: F,
    ) -> Self
    where
        T: 'scope,
        F: FnMut(usize) -> Result<T> + Send + 'scope,
    {
        let (send, items) = sync_channel(ahead.max(1));
        scope.spawn(move || match own_pool() {
            Some(pool) => pool.install(|| run(send, count, produce)),
            None => run(send, count, produce),
        });
        InSequence {
            items,
            left: count,
            waited: Duration::ZERO,
        }
    }

    /// The next item, waiting for it; `None` after the last one (or after an error).
    pub fn next_item(&mut self) -> Option<Result<T>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let t0 = Instant::now();
        let item = self.items.recv();
        self.waited += t0.elapsed();
        let item = item.unwrap_or_else(|_| {
            Err(Error::Config(
                "the input pipeline's producer stopped without its next item".into(),
            ))
        });
        if item.is_err() {
            self.left = 0;
        }
        Some(item)
    }

    /// How long [`Self::next_item`] has waited for items not yet made, in all.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

/// A pool of its own for the producer's parallel work (an item's clips decoded side by side),
/// as many threads as the shared pool: from a thread outside the shared pool that work would
/// queue behind the step's kernels and wait for them, where on a pool of its own the producer
/// works on whatever cores the step leaves idle, and on all of them when the step waits for
/// it. Its threads run at the step's priority: in the background class (`SCHED_IDLE`) they
/// let the step's threads take their cores at once, but another program's busy threads
/// starve them too, and the step waits on them (`docs/performance.md`, session 7).
/// `None` if the threads cannot be started (the shared pool is used then).
fn own_pool() -> Option<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(rayon::current_num_threads())
        .thread_name(|_| "e2e-tal-input".into())
        .build()
        .ok()
}

fn run<T>(send: SyncSender<Result<T>>, count: usize, mut produce: impl FnMut(usize) -> Result<T>) {
    for i in 0..count {
        let item = produce(i);
        let stop = item.is_err();
        // The consumer has gone: nothing more is wanted.
        if send.send(item).is_err() || stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn items_arrive_in_order_at_most_ahead_of_the_consumer() {
        let made = AtomicUsize::new(0);
        let mut state = 1u64;
        let got: Vec<u64> = std::thread::scope(|s| {
            let mut seq = InSequence::spawn(s, 20, 2, |_| {
                made.fetch_add(1, Ordering::SeqCst);
                // Each item depends on the one before.
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                Ok(state)
            });
            std::thread::sleep(std::time::Duration::from_millis(50));
            // Two queued and one made waiting to be queued, never more.
            assert!(made.load(Ordering::SeqCst) <= 3);
            std::iter::from_fn(|| seq.next_item().map(|r| r.unwrap())).collect()
        });
        let mut want = Vec::new();
        let mut state = 1u64;
        for _ in 0..20 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            want.push(state);
        }
        assert_eq!(got, want);
    }

    #[test]
    fn the_consumer_counts_its_waits_for_items_not_yet_made() {
        // Items that take 30 ms each and a consumer that does nothing but take them: nearly
        // all of its time is waiting (a margin for the untimed instructions of the loop).
        std::thread::scope(|s| {
            let mut seq = InSequence::spawn(s, 3, 1, |i| {
                std::thread::sleep(Duration::from_millis(30));
                Ok(i)
            });
            assert_eq!(seq.waited(), Duration::ZERO);
            let t0 = Instant::now();
            while seq.next_item().is_some() {}
            let all = t0.elapsed();
            assert!(seq.waited() > Duration::ZERO && seq.waited() <= all);
            assert!(
                seq.waited() + Duration::from_millis(10) >= all,
                "{:?} of {all:?}",
                seq.waited()
            );
        });
        // Slow items made before the consumer asks for them cost it no wait.
        let made = AtomicUsize::new(0);
        std::thread::scope(|s| {
            let mut seq = InSequence::spawn(s, 2, 2, |i| {
                std::thread::sleep(Duration::from_millis(150));
                made.fetch_add(1, Ordering::SeqCst);
                Ok(i)
            });
            while made.load(Ordering::SeqCst) < 2 {
                std::thread::sleep(Duration::from_millis(5));
            }
            while seq.next_item().is_some() {}
            assert!(
                seq.waited() < Duration::from_millis(100),
                "{:?}",
                seq.waited()
            );
        });
    }

    #[test]
    fn an_error_ends_the_sequence_and_an_early_stop_ends_the_producer() {
        let made = AtomicUsize::new(0);
        std::thread::scope(|s| {
            let mut seq = InSequence::spawn(s, 10, 1, |i| {
                made.fetch_add(1, Ordering::SeqCst);
                if i == 3 {
                    Err(Error::Config("item 3".into()))
                } else {
                    Ok(i)
                }
            });
            let got: Vec<String> = std::iter::from_fn(|| seq.next_item())
                .map(|r| r.map_or_else(|e| e.to_string(), |v| v.to_string()))
                .collect();
            assert_eq!(got[..3], ["0", "1", "2"]);
            assert!(got[3].contains("item 3"), "{got:?}");
            assert_eq!(got.len(), 4);
        });
        assert_eq!(made.load(Ordering::SeqCst), 4);
        // A consumer that takes one item of a million and leaves: the scope ends.
        std::thread::scope(|s| {
            let mut seq = InSequence::spawn(s, 1_000_000, 2, Ok);
            assert_eq!(seq.next_item().unwrap().unwrap(), 0);
        });
    }
}
