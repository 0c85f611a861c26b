//! The worker pool the kernels split rows over. Default: one thread per core; settable at run
//! time (`set_num_threads`) or with the `BINLLM_THREADS` environment variable. Builds without
//! the `threads` feature (wasm32) run everything on the calling thread.

use crate::error::Result;

#[cfg(feature = "threads")]
mod pool {
    use crate::error::{Error, Result};
    use std::sync::{Arc, Mutex, OnceLock};

    static POOL: OnceLock<Mutex<Arc<rayon::ThreadPool>>> = OnceLock::new();

    fn build(n: usize) -> Result<Arc<rayon::ThreadPool>> {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("binllm-worker-{i}"))
            .build()
            .map(Arc::new)
            .map_err(|e| Error::InvalidArgument(format!("cannot start {n} threads: {e}")))
    }

    fn default_threads() -> usize {
        std::env::var("BINLLM_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
    }

    pub fn current() -> Arc<rayon::ThreadPool> {
        let cell = POOL.get_or_init(|| {
            let n = default_threads();
            Mutex::new(build(n).or_else(|_| build(1)).expect("a one-thread pool can always start"))
        });
        cell.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(n: usize) -> Result<()> {
        let new = build(n)?;
        let cell = POOL.get_or_init(|| Mutex::new(new.clone()));
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
    return pool::current().current_num_threads();
    #[cfg(not(feature = "threads"))]
    1
}

/// Calls `f(chunk_index, chunk)` for consecutive chunks of `items_per_chunk` items of `out`,
/// spread over the pool. Chunks are disjoint, so `f` may write its chunk freely.
pub fn for_each_chunk<T: Send>(out: &mut [T], items_per_chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let items_per_chunk = items_per_chunk.max(1);
    #[cfg(feature = "threads")]
    {
        let pool = pool::current();
        if pool.current_num_threads() > 1 && out.len() > items_per_chunk {
            use rayon::prelude::*;
            pool.install(|| out.par_chunks_mut(items_per_chunk).enumerate().for_each(|(i, c)| f(i, c)));
            return;
        }
    }
    for (i, c) in out.chunks_mut(items_per_chunk).enumerate() {
        f(i, c);
    }
}
