//! The rayon pool every computation runs in.
//!
//! The core owns its pool instead of using rayon's global one so the thread count can change at run
//! time (`set_num_threads`) and the same input at the same thread count gives the same bits.
//! Default: `LSTMRS_NUM_THREADS` when set, else all cores.

use crate::error::{Error, Result};
use std::cell::Cell;
use std::sync::{Arc, RwLock};

/// The pool and the id of the process that built it: a forked child sees another id and builds
/// its own, since the parent's worker threads do not exist in it.
static POOL: RwLock<Option<(u32, Arc<rayon::ThreadPool>)>> = RwLock::new(None);

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
    let pid = std::process::id();
    if let Ok(slot) = POOL.try_read() {
        if let Some((owner, p)) = slot.as_ref() {
            if *owner == pid {
                return p.clone();
            }
        }
    }
    let fresh = || {
        build(default_threads())
            .or_else(|_| build(1))
            .expect("a one-thread pool")
    };
    match POOL.try_write() {
        Ok(mut slot) => {
            if let Some((owner, p)) = slot.as_ref() {
                if *owner == pid {
                    return p.clone();
                }
            }
            // A pool inherited through fork() has no threads: leak it rather than join them.
            if let Some((_, old)) = slot.take() {
                std::mem::forget(old);
            }
            let p = fresh();
            *slot = Some((pid, p.clone()));
            p
        }
        // Another thread holds the lock right now, or (in a forked child) held it at fork time
        // and never will release it: never wait on it.
        Err(std::sync::TryLockError::WouldBlock) => match POOL.try_read() {
            Ok(slot) if slot.as_ref().is_some_and(|(o, _)| *o == pid) => {
                slot.as_ref().expect("checked").1.clone()
            }
            _ => fresh(),
        },
        Err(std::sync::TryLockError::Poisoned(e)) => {
            let mut slot = e.into_inner();
            let p = fresh();
            *slot = Some((pid, p.clone()));
            p
        }
    }
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
    *POOL.write().unwrap_or_else(|e| e.into_inner()) = Some((std::process::id(), new));
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
/// parent's worker threads do not exist in it. (The process-id check in `pool` covers a fork
/// without this call too.)
pub fn reset_after_fork() {
    if let Ok(mut slot) = POOL.try_write() {
        if let Some((_, p)) = slot.take() {
            std::mem::forget(p);
        }
    }
}

/// Calls estimated below this many multiply-adds run on the calling thread: handing work to the
/// pool and waking its threads costs tens of microseconds, more than such a call computes.
pub const SERIAL_MAX_WORK: usize = 1 << 21;

thread_local! {
    static SERIAL: Cell<bool> = const { Cell::new(false) };
}

/// Whether the running call may split work across threads (false inside a serial call).
pub fn parallel_allowed() -> bool {
    !SERIAL.with(Cell::get)
}

/// Runs `f` in the pool, or on the calling thread without any splitting when `work` (estimated
/// multiply-adds) is below [`SERIAL_MAX_WORK`]: the single-thread fast path for small models.
pub fn install_for<R: Send>(work: usize, f: impl FnOnce() -> R + Send) -> R {
    if work >= SERIAL_MAX_WORK {
        return install(f);
    }
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SERIAL.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SERIAL.with(|s| s.replace(true)));
    f()
}

/// `rayon::join`, or the two closures one after the other inside a serial call.
pub fn join<A: Send, B: Send>(
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B + Send,
) -> (A, B) {
    if parallel_allowed() {
        rayon::join(a, b)
    } else {
        (a(), b())
    }
}
