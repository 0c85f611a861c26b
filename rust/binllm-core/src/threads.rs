//! The worker pool the kernels split rows over. Default: one thread per core; settable at run
//! time (`set_num_threads`) or with the `BINLLM_THREADS` environment variable. Builds without
//! the `threads` feature (wasm32) run everything on the calling thread.

use crate::error::Result;

#[cfg(feature = "threads")]
mod pool {
    //! A pool built for many small parallel regions (a decoded token makes about a hundred,
    //! some only microseconds long): after a job, workers spin for `SPIN` before they sleep,
    //! so the next job starts without a wake-up through the kernel. The caller works too and
    //! waits only for workers that joined the job: a worker the OS has not scheduled yet finds
    //! the job closed and skips it, so nobody waits on a thread that is not running.
    use crate::error::Result;
    use std::cell::UnsafeCell;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
    use std::sync::{Arc, Condvar, Mutex, OnceLock};
    use std::time::Duration;
    #[cfg(not(target_arch = "wasm32"))]
    use std::time::Instant;

    /// How long an idle worker spins before it sleeps: longer than the gaps between the
    /// parallel regions of one decoded token, shorter than a person notices on a shared machine.
    const SPIN: Duration = Duration::from_micros(300);

    /// When an idle worker has spun long enough. wasm32's std has no clock: there workers spin
    /// a fixed count instead (about `SPIN` on a desktop core).
    #[cfg(not(target_arch = "wasm32"))]
    struct SpinClock(Instant);
    #[cfg(not(target_arch = "wasm32"))]
    impl SpinClock {
        fn start() -> Self {
            SpinClock(Instant::now())
        }
        fn done(&self, _spins: u32) -> bool {
            self.0.elapsed() > SPIN
        }
    }
    #[cfg(target_arch = "wasm32")]
    struct SpinClock;
    #[cfg(target_arch = "wasm32")]
    impl SpinClock {
        fn start() -> Self {
            SpinClock
        }
        fn done(&self, spins: u32) -> bool {
            let _ = SPIN;
            spins >= 1 << 17
        }
    }

    type Job = *const (dyn Fn() + Sync);

    struct Shared {
        /// Bumped for every job; workers watch it.
        generation: AtomicU64,
        /// The current job, valid while `open` (written only under `submit`).
        job: UnsafeCell<Option<Job>>,
        open: AtomicBool,
        /// Workers inside the current job.
        active: AtomicUsize,
        sleepers: AtomicUsize,
        sleep: Mutex<()>,
        wake: Condvar,
        shutdown: AtomicBool,
        /// One job at a time; a caller that finds it taken runs its work alone.
        submit: Mutex<()>,
    }

    // SAFETY: `job` is written by the one caller holding `submit` while no worker reads it
    // (the job is closed and `active` is zero), and read by workers only while it is open.
    unsafe impl Sync for Shared {}
    unsafe impl Send for Shared {}

    /// `threads` workers in all: the calling thread and `threads - 1` pool threads (none for 1).
    pub struct Workers {
        pub threads: usize,
        shared: Arc<Shared>,
    }

    impl Drop for Workers {
        fn drop(&mut self) {
            self.shared.shutdown.store(true, SeqCst);
            let _guard = self.shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
    }

    fn worker(shared: Arc<Shared>) {
        let mut seen = shared.generation.load(SeqCst);
        loop {
            let start = SpinClock::start();
            let mut spins = 0u32;
            loop {
                if shared.shutdown.load(SeqCst) {
                    return;
                }
                if shared.generation.load(SeqCst) != seen {
                    break;
                }
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(64) && start.done(spins) {
                    let guard = shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
                    shared.sleepers.fetch_add(1, SeqCst);
                    let guard = if shared.generation.load(SeqCst) == seen && !shared.shutdown.load(SeqCst) {
                        shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner())
                    } else {
                        guard
                    };
                    shared.sleepers.fetch_sub(1, SeqCst);
                    drop(guard);
                }
                if spins.is_multiple_of(256) {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
            seen = shared.generation.load(SeqCst);
            shared.active.fetch_add(1, SeqCst);
            if shared.open.load(SeqCst) {
                // SAFETY: the job is open and we are counted in `active`, so the caller has
                // not returned and the closure `job` points to is alive.
                if let Some(job) = unsafe { *shared.job.get() } {
                    // A panic must not leave the worker counted in `active` forever.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe { (*job)() }));
                }
            }
            shared.active.fetch_sub(1, SeqCst);
        }
    }

    impl Workers {
        /// Runs `work` on the calling thread and on every pool thread that is free to join;
        /// returns when all who joined are done. `work` must split its own work (each call
        /// takes what is left).
        pub fn run(&self, work: &(dyn Fn() + Sync)) {
            let shared = &*self.shared;
            let Ok(_one_job) = shared.submit.try_lock() else {
                work();
                return;
            };
            // SAFETY: the lifetime is erased only for the duration of this call: the job is
            // closed and no worker is inside it when we return (below).
            let job: Job = unsafe { std::mem::transmute::<&(dyn Fn() + Sync), &'static (dyn Fn() + Sync)>(work) };
            // SAFETY: we hold `submit`, the previous job is closed and `active` was zero.
            unsafe { *shared.job.get() = Some(job) };
            shared.open.store(true, SeqCst);
            shared.generation.fetch_add(1, SeqCst);
            if shared.sleepers.load(SeqCst) > 0 {
                let _guard = shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
                shared.wake.notify_all();
            }
            // Closes the job and waits for the workers inside it, also if `work` panics.
            struct Close<'a>(&'a Shared);
            impl Drop for Close<'_> {
                fn drop(&mut self) {
                    self.0.open.store(false, SeqCst);
                    let mut spins = 0u32;
                    while self.0.active.load(SeqCst) > 0 {
                        // A worker inside the job may have lost its core to another process.
                        spins += 1;
                        if spins.is_multiple_of(256) {
                            std::thread::yield_now();
                        } else {
                            std::hint::spin_loop();
                        }
                    }
                    // SAFETY: closed with nobody inside: no worker reads the job any more.
                    unsafe { *self.0.job.get() = None };
                }
            }
            let _close = Close(shared);
            work();
        }
    }

    static WORKERS: OnceLock<Mutex<Arc<Workers>>> = OnceLock::new();

    fn build(n: usize) -> Result<Arc<Workers>> {
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            open: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
            submit: Mutex::new(()),
        });
        // wasm32 cannot start threads itself: the host starts n - 1 Web Workers that share the
        // module's memory and each call `run_worker` (the wasm crate's `binllm_thread_main`).
        // Until they arrive the caller does the work alone (a job waits only for who joined).
        #[cfg(not(target_arch = "wasm32"))]
        for i in 0..n.saturating_sub(1) {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("binllm-worker-{i}"))
                .spawn(move || worker(shared))
                .map_err(|e| crate::error::Error::InvalidArgument(format!("cannot start {n} threads: {e}")))?;
        }
        Ok(Arc::new(Workers { threads: n, shared }))
    }

    fn default_threads() -> usize {
        // A bad BINLLM_THREADS is reported by `threads_from_env` (the bindings call it first);
        // here, where nothing can be reported, it falls back to every core.
        super::threads_from_env().ok().flatten().unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
    }

    pub fn current() -> Arc<Workers> {
        let cell = WORKERS.get_or_init(|| {
            let n = default_threads();
            Mutex::new(build(n).or_else(|_| build(1)).expect("one worker needs no pool"))
        });
        cell.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs one pool worker on the calling thread until the pool is replaced (wasm32: the
    /// host's Web Workers call this).
    #[cfg(target_arch = "wasm32")]
    pub fn run_worker() {
        let shared = current().shared.clone();
        worker(shared);
    }

    pub fn set(n: usize) -> Result<()> {
        let new = build(n)?;
        let cell = WORKERS.get_or_init(|| Mutex::new(new.clone()));
        *cell.lock().unwrap_or_else(|e| e.into_inner()) = new;
        Ok(())
    }
}

/// wasm32 builds with threads (atomics and shared memory): runs one pool worker on the calling
/// thread (a Web Worker the host started) until the pool is replaced.
#[cfg(all(feature = "threads", target_arch = "wasm32"))]
pub fn run_worker() {
    pool::run_worker()
}

/// `BINLLM_THREADS` as a thread count: `None` when unset or empty, an error naming the value
/// when it is not a whole number from 1 to 1024.
pub fn threads_from_env() -> Result<Option<usize>> {
    match std::env::var("BINLLM_THREADS") {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(v)) => crate::bail!(InvalidArgument, "BINLLM_THREADS={v:?} is not a thread count (1 to 1024)"),
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => Ok(Some(n)),
            _ => crate::bail!(InvalidArgument, "BINLLM_THREADS={v} is not a thread count (1 to 1024)"),
        },
    }
}

/// Sets the number of worker threads used by every kernel from now on.
pub fn set_num_threads(n: usize) -> Result<()> {
    if n == 0 || n > 1024 {
        crate::bail!(InvalidArgument, "threads must be between 1 and 1024, got {n}");
    }
    #[cfg(feature = "threads")]
    return pool::set(n);
    #[cfg(not(feature = "threads"))]
    if n != 1 {
        crate::bail!(InvalidArgument, "this build of binllm runs on one thread only");
    } else {
        Ok(())
    }
}

/// Worker threads the kernels use.
pub fn num_threads() -> usize {
    #[cfg(feature = "threads")]
    return pool::current().threads;
    #[cfg(not(feature = "threads"))]
    1
}

/// Rows handed to one task of element-wise work over `rows` rows of `row_len` values (a
/// prompt's norms, activation quantization, activation function, epilogues): about four tasks
/// per thread, none under `MIN_TASK_VALUES` values, so that one row (a decode step) or a few
/// stay on the calling thread: a task must outweigh handing it over (about a microsecond).
pub fn elementwise_rows_per_task(rows: usize, row_len: usize) -> usize {
    const MIN_TASK_VALUES: usize = 16 << 10;
    rows.div_ceil(4 * num_threads()).max(MIN_TASK_VALUES.div_ceil(row_len.max(1))).max(1)
}

/// Calls `f(chunk_index, chunk)` for consecutive chunks of `items_per_chunk` items of `out`.
/// Chunks are disjoint, so `f` may write its chunk freely. The calling thread works too: it and
/// the pool's threads take chunks from a shared counter until none are left, so a call with
/// as many chunks as threads wakes the pool once and nobody idles while work remains.
pub fn for_each_chunk<T: Send>(out: &mut [T], items_per_chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let items_per_chunk = items_per_chunk.max(1);
    // One chunk (a decode step's element-wise work) runs here without asking for the pool.
    #[cfg(feature = "threads")]
    if out.len() > items_per_chunk {
        let workers = pool::current();
        if workers.threads > 1 {
            use std::sync::atomic::{AtomicUsize, Ordering};
            use std::sync::Mutex;
            let parts: Vec<Mutex<Option<(usize, &mut [T])>>> = out.chunks_mut(items_per_chunk).enumerate().map(|p| Mutex::new(Some(p))).collect();
            let next = AtomicUsize::new(0);
            workers.run(&|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(slot) = parts.get(i) else { break };
                if let Some((index, chunk)) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    f(index, chunk);
                }
            });
            return;
        }
    }
    for (i, c) in out.chunks_mut(items_per_chunk).enumerate() {
        f(i, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many small jobs, from several callers at once, on pools of different sizes: every chunk
    /// is visited exactly once and sees its own index.
    #[test]
    fn every_chunk_runs_once_under_many_small_jobs_and_callers() {
        for threads in [1, 2, 3] {
            set_num_threads(threads).unwrap();
            std::thread::scope(|scope| {
                for caller in 0..3 {
                    scope.spawn(move || {
                        for job in 0..300 {
                            let len = 1 + (job * 7 + caller) % 97;
                            let mut out = vec![0usize; len];
                            for_each_chunk(&mut out, 1 + job % 5, |i, chunk| {
                                for v in chunk.iter_mut() {
                                    *v += i + 1;
                                }
                            });
                            let per = 1 + job % 5;
                            assert!(out.iter().enumerate().all(|(j, &v)| v == j / per + 1), "threads {threads} job {job}");
                        }
                    });
                }
            });
        }
    }
}
