//! The rayon pool every computation runs in.
//!
//! The core owns its pool instead of using rayon's global one so the thread count can change at run
//! time (`set_num_threads`) and the same input at the same thread count gives the same bits.
//! Default: `LSTMRS_NUM_THREADS` when set, else all cores.

use crate::error::{Error, Result};
use std::sync::{Arc, RwLock};

static POOL: RwLock<Option<Arc<rayon::ThreadPool>>> = RwLock::new(None);

fn default_threads() -> usize {
    std::env::var("LSTMRS_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

fn build(n: usize) -> Result<Arc<rayon::ThreadPool>> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("lstmrs-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| Error::Value {
            arg: "num_threads",
            expected: "a thread count the system can start".into(),
            got: format!("{n} ({e})"),
        })
}

fn pool() -> Arc<rayon::ThreadPool> {
    if let Some(p) = POOL.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return p.clone();
    }
    let mut slot = POOL.write().unwrap_or_else(|e| e.into_inner());
    slot.get_or_insert_with(|| {
        build(default_threads())
            .or_else(|_| build(1))
            .expect("a one-thread pool")
    })
    .clone()
}

/// Sets the number of worker threads for all later calls.
pub fn set_num_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::Value {
            arg: "num_threads",
            expected: "an integer >= 1".into(),
            got: "0".into(),
        });
    }
    let new = build(n)?;
    *POOL.write().unwrap_or_else(|e| e.into_inner()) = Some(new);
    Ok(())
}

/// The number of worker threads calls run on.
pub fn num_threads() -> usize {
    pool().current_num_threads()
}

/// Runs `f` inside the core's pool.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    pool().install(f)
}

/// Drops the pool so that the next call builds a fresh one; a forked child calls this, since the
/// parent's worker threads do not exist in it.
pub fn reset_after_fork() {
    if let Ok(mut slot) = POOL.try_write() {
        // The parent's threads are gone in the child: leak the handle instead of joining them.
        if let Some(p) = slot.take() {
            std::mem::forget(p);
        }
    } else {
        // The lock was held at fork time and can never be released in the child.
        std::mem::forget(POOL.try_write());
    }
}
