//! Decoding ahead of the training step on worker threads, in order and bounded.
//!
//! Why not `burn::data::dataloader`: its multi-threaded loader splits the dataset into one
//! part per thread and yields items in whatever order the threads finish (and shuffles per
//! part), so the sequence of samples depends on the worker count and on timing; it cannot
//! start in the middle of an epoch, builds tensors in the workers, and needs the `dataset`
//! feature (the `burn-dataset` crate). A run here must see the same samples for a seed
//! whatever the worker count, and resume mid-epoch bit-exactly; the jobs are numbered, any
//! worker may take the next one, and the consumer receives them strictly in job order.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use burn::config::Config;

use crate::error::{Error, Result};

/// How the input pipeline reads ahead.
#[derive(Config, Debug)]
pub struct LoaderConfig {
    /// Worker threads decoding the next steps while the current one computes; 0 decodes on
    /// the training thread when a step needs its data. Results never depend on it.
    #[config(default = 2)]
    pub workers: usize,
    /// At most this many steps are decoded ahead of the one training (the queue's bound, so
    /// memory is that of this many steps' frames).
    #[config(default = 2)]
    pub prefetch: usize,
}

impl LoaderConfig {
    /// Errors name the setting: a queue of zero steps with workers.
    pub fn validate(&self) -> Result<()> {
        if self.workers > 0 && self.prefetch == 0 {
            return Err(Error::Config(
                "loader: prefetch must be at least 1 step when there are workers".into(),
            ));
        }
        Ok(())
    }
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self::new()
    }
}

struct State<T> {
    /// Next job a worker takes.
    next: usize,
    /// Next job the consumer takes.
    taken: usize,
    end: usize,
    ready: BTreeMap<usize, Result<T>>,
    stop: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    changed: Condvar,
}

/// A job: its result from its number.
pub type Job<T> = Arc<dyn Fn(usize) -> Result<T> + Send + Sync>;

/// The results of jobs `jobs` (`produce(i)`), computed ahead by the workers of a
/// [`LoaderConfig`] and handed out in job order.
pub struct Prefetcher<T: Send + 'static> {
    shared: Arc<Shared<T>>,
    produce: Job<T>,
    handles: Vec<JoinHandle<()>>,
    waited: Duration,
}

impl<T: Send + 'static> Prefetcher<T> {
    /// Start the workers (dropping the prefetcher stops them once their current job is done,
    /// and waits for that).
    pub fn spawn(cfg: &LoaderConfig, jobs: Range<usize>, produce: Job<T>) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next: jobs.start,
                taken: jobs.start,
                end: jobs.end,
                ready: BTreeMap::new(),
                stop: false,
            }),
            changed: Condvar::new(),
        });
        let ahead = cfg.prefetch.max(1);
        let handles = (0..cfg.workers)
            .map(|_| {
                let (shared, produce) = (shared.clone(), produce.clone());
                std::thread::spawn(move || work(&shared, ahead, produce.as_ref()))
            })
            .collect();
        Prefetcher {
            shared,
            produce,
            handles,
            waited: Duration::ZERO,
        }
    }

    /// The next job's result, waiting for it; `None` after the last job.
    pub fn next_result(&mut self) -> Option<Result<T>> {
        let t0 = Instant::now();
        let out = if self.handles.is_empty() {
            let i = {
                let mut s = lock(&self.shared);
                if s.taken >= s.end {
                    return None;
                }
                s.taken += 1;
                s.taken - 1
            };
            (self.produce)(i)
        } else {
            let mut s = lock(&self.shared);
            if s.taken >= s.end {
                return None;
            }
            let i = s.taken;
            while !s.ready.contains_key(&i) {
                s = self
                    .shared
                    .changed
                    .wait(s)
                    .unwrap_or_else(|e| e.into_inner());
            }
            s.taken += 1;
            self.shared.changed.notify_all();
            s.ready.remove(&i).expect("checked above")
        };
        self.waited += t0.elapsed();
        Some(out)
    }

    /// Time [`Prefetcher::next_result`] has spent waiting for data so far.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl<T: Send + 'static> Drop for Prefetcher<T> {
    fn drop(&mut self) {
        lock(&self.shared).stop = true;
        self.shared.changed.notify_all();
        for h in self.handles.drain(..) {
            // A worker that panicked has nothing left to hand over.
            let _ = h.join();
        }
    }
}

fn lock<T>(shared: &Shared<T>) -> std::sync::MutexGuard<'_, State<T>> {
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// A worker: take the next job while it is at most `ahead` jobs past the consumer.
fn work<T>(shared: &Shared<T>, ahead: usize, produce: &(dyn Fn(usize) -> Result<T> + Sync)) {
    loop {
        let i = {
            let mut s = lock(shared);
            loop {
                if s.stop || s.next >= s.end {
                    return;
                }
                if s.next < s.taken + ahead {
                    break;
                }
                s = shared.changed.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            s.next += 1;
            s.next - 1
        };
        // A job that panics must still hand in a result: the consumer waits for every job.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| produce(i)))
            .unwrap_or_else(|_| {
                Err(Error::Config(format!(
                    "the input pipeline's worker panicked preparing step {i}"
                )))
            });
        let mut s = lock(shared);
        if s.stop {
            return;
        }
        s.ready.insert(i, r);
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn collect(workers: usize, prefetch: usize, jobs: Range<usize>) -> Vec<Result<usize>> {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (r, m) = (running.clone(), most.clone());
        let produce: Job<usize> = Arc::new(move |i: usize| {
            let (running, most) = (&r, &m);
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            // Later jobs finish first: order must still hold.
            std::thread::sleep(Duration::from_millis(((7 * i) % 5) as u64));
            running.fetch_sub(1, Ordering::SeqCst);
            if i == 13 {
                Err(Error::Config("job 13".into()))
            } else {
                Ok(i * i)
            }
        });
        let cfg = LoaderConfig::new()
            .with_workers(workers)
            .with_prefetch(prefetch);
        let mut p = Prefetcher::spawn(&cfg, jobs, produce);
        let out = std::iter::from_fn(|| p.next_result()).collect::<Vec<_>>();
        assert!(most.load(Ordering::SeqCst) <= workers.max(1));
        out
    }

    #[test]
    fn results_arrive_in_job_order_whatever_the_workers() {
        let want: Vec<String> = (3..20)
            .map(|i| match i {
                13 => "err".to_string(),
                i => (i * i).to_string(),
            })
            .collect();
        for (w, p) in [(0, 1), (1, 1), (2, 2), (4, 3)] {
            let got: Vec<String> = collect(w, p, 3..20)
                .into_iter()
                .map(|r| r.map_or("err".into(), |v| v.to_string()))
                .collect();
            assert_eq!(got, want, "{w} workers");
        }
    }

    #[test]
    fn a_panicking_job_is_an_error_not_a_hang() {
        let produce: Job<usize> = Arc::new(|i| if i == 2 { panic!("boom") } else { Ok(i) });
        let cfg = LoaderConfig::new().with_workers(2).with_prefetch(2);
        let mut p = Prefetcher::spawn(&cfg, 0..4, produce);
        let got: Vec<String> = std::iter::from_fn(|| p.next_result())
            .map(|r| r.map_or_else(|e| e.to_string(), |v| v.to_string()))
            .collect();
        assert_eq!(got[..2], ["0", "1"]);
        assert!(got[2].contains("panicked preparing step 2"), "{got:?}");
        assert_eq!(got[3], "3");
    }

    #[test]
    fn stopping_early_ends_the_workers() {
        let produce: Job<usize> = Arc::new(Ok);
        let cfg = LoaderConfig::new().with_workers(3).with_prefetch(2);
        let mut p = Prefetcher::spawn(&cfg, 0..1_000_000, produce);
        assert_eq!(p.next_result().unwrap().unwrap(), 0);
        drop(p);
        assert!(LoaderConfig::new().with_prefetch(0).validate().is_err());
    }
}
