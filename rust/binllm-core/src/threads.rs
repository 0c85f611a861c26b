//! The worker pool the kernels split rows over. Default: one thread per core; settable at run
//! time (`set_num_threads`) or with the `BINLLM_THREADS` environment variable. Builds without
//! the `threads` feature (wasm32) run everything on the calling thread.

use crate::error::Result;

#[cfg(feature = "threads")]
mod pool {
    use crate::error::{Error, Result};
    use std::sync::{Arc, Mutex, OnceLock};

    /// `threads` workers in all: the calling thread and `threads - 1` pool threads (none for 1).
    pub struct Workers {
        pub threads: usize,
        pub pool: Option<rayon::ThreadPool>,
    }

    static WORKERS: OnceLock<Mutex<Arc<Workers>>> = OnceLock::new();

    fn build(n: usize) -> Result<Arc<Workers>> {
        let pool = if n > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n - 1)
                    .thread_name(|i| format!("binllm-worker-{i}"))
                    .build()
                    .map_err(|e| Error::InvalidArgument(format!("cannot start {n} threads: {e}")))?,
            )
        } else {
            None
        };
        Ok(Arc::new(Workers { threads: n, pool }))
    }

    fn default_threads() -> usize {
        std::env::var("BINLLM_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
    }

    pub fn current() -> Arc<Workers> {
        let cell = WORKERS.get_or_init(|| {
            let n = default_threads();
            Mutex::new(build(n).or_else(|_| build(1)).expect("one worker needs no pool"))
        });
        cell.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(n: usize) -> Result<()> {
        let new = build(n)?;
        let cell = WORKERS.get_or_init(|| Mutex::new(new.clone()));
        *cell.lock().unwrap_or_else(|e| e.into_inner()) = new;
        Ok(())
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

/// Calls `f(chunk_index, chunk)` for consecutive chunks of `items_per_chunk` items of `out`.
/// Chunks are disjoint, so `f` may write its chunk freely. The calling thread works too: it and
/// the pool's threads take chunks from a shared counter until none are left, so a call with
/// as many chunks as threads wakes the pool once and nobody idles while work remains.
pub fn for_each_chunk<T: Send>(out: &mut [T], items_per_chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let items_per_chunk = items_per_chunk.max(1);
    #[cfg(feature = "threads")]
    {
        let workers = pool::current();
        if let (Some(pool), true) = (&workers.pool, out.len() > items_per_chunk) {
            use std::sync::atomic::{AtomicUsize, Ordering};
            use std::sync::Mutex;
            let parts: Vec<Mutex<Option<(usize, &mut [T])>>> =
                out.chunks_mut(items_per_chunk).enumerate().map(|p| Mutex::new(Some(p))).collect();
            let next = AtomicUsize::new(0);
            let work = || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(slot) = parts.get(i) else { break };
                if let Some((index, chunk)) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    f(index, chunk);
                }
            };
            let helpers = (workers.threads - 1).min(parts.len() - 1);
            pool.in_place_scope(|scope| {
                for _ in 0..helpers {
                    scope.spawn(|_| work());
                }
                work();
            });
            return;
        }
    }
    for (i, c) in out.chunks_mut(items_per_chunk).enumerate() {
        f(i, c);
    }
}
