//! Input threads that yield the cores to the step's compute threads.
//!
//! [`super::InSequence`]'s producer and its pool are threads beside the compute pool's one
//! thread per core. At the same priority Linux treats a core running one of them as busy: a
//! compute thread woken for the step's next parallel operation queues behind the other
//! compute thread on its core instead of taking the input thread's, and the load balancer
//! leaves the freed core idle for milliseconds before it moves a task that ran recently.
//! Sampled on the main job's pretraining loop (`docs/performance.md`, session 7): both
//! compute threads time-sharing one core for 10-12 ms while the other core idled, the loop
//! at 167-172% CPU. In the background class (`SCHED_IDLE`) an input thread runs on the time
//! the step leaves, a waking compute thread takes its core at once, and when the step waits
//! for its next item the producer's threads have both cores.
//!
//! The [`super::Prefetcher`]'s workers stay in the ordinary class: moved to this one, the main
//! job's training loop (whose frames are decoded well ahead) took as long as before and
//! spent more CPU time for it.

/// Lower the calling thread to the background class (`SCHED_IDLE` on Linux; elsewhere
/// nothing changes). Returns whether the class was set; failing is harmless (the thread runs
/// at its ordinary priority).
pub(crate) fn background() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `sched_setscheduler` on the calling thread (0) with a valid parameter.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    #[test]
    fn a_background_thread_runs_in_the_idle_class() {
        let class = std::thread::spawn(|| {
            assert!(super::background());
            // SAFETY: queries the calling thread.
            unsafe { libc::sched_getscheduler(0) }
        })
        .join()
        .unwrap();
        assert_eq!(class, libc::SCHED_IDLE);
        // The caller's own thread is untouched.
        assert_ne!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_IDLE);
    }
}
