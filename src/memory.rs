//! Peak memory measurement: a counting allocator on CPU backends, the device's memory pools on
//! CubeCL backends, behind one function ([`measure_on`]).
//!
//! Flex and NdArray report no memory usage of their own, so benches install
//! [`CountingAllocator`] as the global allocator and read its counters:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: e2e_tal::memory::CountingAllocator = e2e_tal::memory::CountingAllocator;
//! ```
//! Without it, [`measure`] reports `None`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use burn::tensor::Device;

/// A counter alone on its cache lines: every allocation of every thread writes `CURRENT`, and
/// a line shared with the peak or the flag would bounce between the cores on their reads too.
#[repr(align(128))]
struct Line<T>(T);

static CURRENT: Line<AtomicUsize> = Line(AtomicUsize::new(0));
static PEAK: Line<AtomicUsize> = Line(AtomicUsize::new(0));
static ACTIVE: Line<AtomicBool> = Line(AtomicBool::new(false));

/// The system allocator, counting live bytes and their peak.
pub struct CountingAllocator;

fn grew(n: usize) {
    let now = CURRENT.0.fetch_add(n, Ordering::Relaxed) + n;
    // A read first: the read-modify-write (a locked compare-exchange loop) only when the peak
    // moves, which is rare after warm-up.
    if now > PEAK.0.load(Ordering::Relaxed) {
        PEAK.0.fetch_max(now, Ordering::Relaxed);
    }
}

/// Marks the allocator as installed (a write only the first time).
fn activate() {
    if !ACTIVE.0.load(Ordering::Relaxed) {
        ACTIVE.0.store(true, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        activate();
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        activate();
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.0.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                CURRENT
                    .0
                    .fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

/// Keeps the memory the process frees for its next allocations instead of handing it back to
/// the operating system: glibc's allocator with one arena, a 32 MiB mmap threshold (tensors
/// below it come from the heap) and no trimming. Elsewhere (other C libraries, other systems)
/// it does nothing.
///
/// A training step frees its activations at its end and allocates them again in the next one.
/// By default glibc gives back the pages of its per-thread heaps as they empty and trims the
/// top of the main one, so every step faults its activations in again: 470-660 thousand page
/// faults in the plain-autodiff rows of `benches/reversible.rs` at 1568 tokens, 3-4% of the
/// deep step's time (measured on a 2-core Xeon, `docs/performance.md`). With this, the resident
/// size stays at its peak once reached: what the next step needs anyway. The peaks this
/// module measures ([`measure`]) count live bytes and do not change.
///
/// One arena, although two threads of a step on two cores then queue on its lock for the
/// autodiff graph's small allocations: two arenas raised the main job from 180.7-180.8% to
/// 182.7-183.0% CPU, but a second arena hands back its extra heaps as they empty, whatever
/// the trim setting, so the deep plain bench rows faulted 330-650 thousand pages instead of
/// 280 thousand and ran 1.5-2.5% slower, and the main job's resident peak grew by 25-70 MiB.
///
/// Call it first thing in `main`, before other threads allocate; the CLI, the benches and the
/// examples do.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets the allocator's parameters; nothing is allocated yet by other
    // threads (the documented contract), and glibc serialises the call anyway.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Bytes currently allocated (0 without the counting allocator).
pub fn current_bytes() -> usize {
    CURRENT.0.load(Ordering::Relaxed)
}

/// Run `f` and return its result with the peak of allocated bytes *above* the level at the
/// start (the memory `f` needed), or `None` when the counting allocator is not installed.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, Option<usize>) {
    let base = CURRENT.0.load(Ordering::Relaxed);
    PEAK.0.store(base, Ordering::Relaxed);
    let out = f();
    let peak = PEAK.0.load(Ordering::Relaxed);
    let active = ACTIVE.0.load(Ordering::Relaxed);
    (out, active.then(|| peak.saturating_sub(base)))
}

/// Run `f` on `device` and return its result with the peak memory it needed, on every backend:
///
/// - CPU backends (Flex, NdArray report no pool usage): the counting allocator, as
///   [`measure`]; `None` when [`CountingAllocator`] is not the global allocator.
/// - CubeCL backends (wgpu, cuda): the device's memory pools. Pools keep a lifetime high-water
///   mark of their pages, so the reading is that mark after `f` minus the bytes in use before
///   it: exact when `f` sets a new peak, an upper bound when an earlier workload was larger.
///   Measure configurations from the cheapest to the most expensive, or one per process.
pub fn measure_on<T>(device: &Device, f: impl FnOnce() -> T) -> (T, Option<usize>) {
    if device.memory_pool_usage().is_none() {
        return measure(f);
    }
    let _ = device.sync();
    let in_use = device.memory_pool_usage().map_or(0, |u| u.bytes_in_use);
    let out = f();
    let _ = device.sync();
    let high_water: u64 = device
        .memory_pool_report()
        .unwrap_or_default()
        .iter()
        .map(|p| p.page_size * p.pages_peak)
        .sum();
    let reserved = device.memory_pool_usage().map_or(0, |u| u.bytes_reserved);
    let peak = high_water.max(reserved).saturating_sub(in_use);
    (out, Some(peak as usize))
}

/// Bytes in use now on `device`: its pools' usage on CubeCL backends, the counting allocator's
/// live bytes on CPU backends (`None` when neither reports).
pub fn in_use_on(device: &Device) -> Option<usize> {
    if let Some(u) = device.memory_pool_usage() {
        let _ = device.sync();
        return Some(u.bytes_in_use as usize);
    }
    ACTIVE
        .0
        .load(Ordering::Relaxed)
        .then(|| CURRENT.0.load(Ordering::Relaxed))
}

/// `bytes` as MiB with one decimal.
pub fn mib(bytes: usize) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

/// The process's peak resident memory so far, in bytes (Linux's `VmHWM`; `None` elsewhere):
/// everything the process touched, allocator, decoder buffers and threads included.
pub fn peak_rss() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The CPU's model name (Linux's `/proc/cpuinfo`; "unknown CPU" elsewhere): benchmarks print it
/// beside every table, since figures move between machines.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The memory the system can still give (Linux's `MemAvailable`), in bytes (`None` elsewhere).
pub fn available_memory() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
