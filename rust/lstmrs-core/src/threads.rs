//! The rayon pool every computation runs in.
//!
//! The core owns its pool instead of using rayon's global one so the thread count can change at run
//! time (`set_num_threads`) and the same input at the same thread count gives the same bits.
//! Default: `LSTMRS_NUM_THREADS` when set, else all cores.
//!
//! Large products (input projections, weight gradients) split inside the `gemm` crate. The time
//! loop of a sweep runs on a [`team`]: pool threads that each own a block of hidden units for the
//! whole sweep and meet at one barrier per step; the two directions of a layer each get half the
//! pool. Every unit's sums run in the same order whatever the team, so results do not depend on
//! how many threads joined it.

use crate::error::{Error, Result};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

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

/// Queues `f` on the core's pool without waiting for it (see `handoff`).
pub(crate) fn spawn(f: impl FnOnce() + Send + 'static) {
    pool().spawn(f)
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

/// How long a member spins at a barrier before it sleeps. A partner that is running arrives
/// within the skew of a step (microseconds); waking a sleeping thread costs about ten, so spin
/// a little longer than that, but not through an OS time slice: on a busy machine the partner
/// may be descheduled, and sleeping hands the core to it.
const BARRIER_SPIN: Duration = Duration::from_micros(50);

/// A barrier for the fixed team of one sweep (see [`team`]): an atomic counter and a generation
/// number; waiting spins for [`BARRIER_SPIN`], then sleeps on a condition variable.
pub(crate) struct Barrier {
    n: usize,
    count: AtomicUsize,
    generation: AtomicUsize,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    poisoned: AtomicBool,
}

impl Barrier {
    fn new(n: usize) -> Self {
        Barrier {
            n,
            count: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            poisoned: AtomicBool::new(false),
        }
    }

    /// Returns once every member of the team has called `wait` as often as this one; all writes
    /// made before it by any member are visible after it.
    pub fn wait(&self) {
        if self.n == 1 {
            return;
        }
        let gen = self.generation.load(Ordering::Acquire);
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            // Reset before releasing: a member leaving sees the reset through its Acquire load.
            self.count.store(0, Ordering::Relaxed);
            // SeqCst store, then SeqCst load of `sleepers`, against the sleeper's SeqCst
            // increment, then load of `generation`: one of the two sees the other.
            self.generation.store(gen.wrapping_add(1), Ordering::SeqCst);
            if self.sleepers.load(Ordering::SeqCst) > 0 {
                let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                self.wake.notify_all();
            }
            return;
        }
        let start = Instant::now();
        'spin: loop {
            for _ in 0..16 {
                if self.generation.load(Ordering::Acquire) != gen {
                    return;
                }
                std::hint::spin_loop();
            }
            self.check_poison();
            if start.elapsed() > BARRIER_SPIN {
                break 'spin;
            }
        }
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        while self.generation.load(Ordering::SeqCst) == gen {
            self.check_poison();
            // The timeout only bounds how late a poisoned barrier is noticed.
            guard = self
                .wake
                .wait_timeout(guard, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(guard);
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
    }

    /// A member that panicked never arrives: fail instead of waiting forever.
    fn check_poison(&self) {
        if self.poisoned.load(Ordering::Relaxed) {
            panic!("another worker of this sweep panicked");
        }
    }
}

/// Marks the barrier poisoned when its member unwinds.
struct PoisonOnPanic<'a>(&'a Barrier);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poisoned.store(true, Ordering::Relaxed);
        }
    }
}

/// How many threads one sweep may occupy: the pool's size inside a parallel call, one inside a
/// serial call (see [`install_for`]).
pub(crate) fn team_capacity() -> usize {
    if parallel_allowed() {
        rayon::current_num_threads().max(1)
    } else {
        1
    }
}

/// How long the first member waits for the others to pick up their jobs before it starts
/// without them. An idle pool thread wakes within tens of microseconds; one busy elsewhere (the
/// other direction's sweep, or another process on a loaded machine) may take far longer, and
/// waiting for it would stall the whole sweep.
pub(crate) const JOIN_WAIT: Duration = Duration::from_micros(300);

/// [`JOIN_WAIT`] while a team size is forced (`bench::set_team_override`): long enough for a pool
/// thread to get a time slice on a loaded machine (its scheduler's slices are milliseconds), so
/// that a test's forced team forms; still bounded, so a team never waits on a busy thread forever.
const FORCED_JOIN_WAIT: Duration = Duration::from_millis(50);

static FORCED: AtomicBool = AtomicBool::new(false);

/// Makes teams wait [`FORCED_JOIN_WAIT`] (true) or [`JOIN_WAIT`] for their members.
pub(crate) fn set_forced_join_wait(forced: bool) {
    FORCED.store(forced, Ordering::Relaxed);
}

const PENDING: u8 = 0;
const JOINED: u8 = 1;
const ABSENT: u8 = 2;

/// Runs `f(rank, size, &barrier)` on a team of up to `max` threads of the pool: the calling
/// thread is rank 0, and the pool threads that pick up their job within [`JOIN_WAIT`] take
/// ranks `1..size`; the jobs picked up later return at once. Returns when all have returned.
///
/// A sweep synchronises its team at every time step, so the team is fixed for the sweep and
/// each member keeps its part of the weight in its core's cache. Waiting only for members that
/// have joined means a team can never wait on a thread that is busy with something else (two
/// sweeps at once, or a nested call), so it cannot deadlock. `f` must give the same results for
/// every `size` (the sweeps split work by units and every unit's sums run the same way).
///
/// Returns the size of the team that formed (also counted in [`teams_formed`]).
pub(crate) fn team<F: Fn(usize, usize, &Barrier) + Sync>(max: usize, f: F) -> usize {
    team_waiting(max, JOIN_WAIT, f)
}

/// [`team`] whose first member waits at most `wait` (instead of [`JOIN_WAIT`]) for the others:
/// for a sweep so short that a team formed later than that would not pay for itself.
pub(crate) fn team_waiting<F: Fn(usize, usize, &Barrier) + Sync>(
    max: usize,
    wait: Duration,
    f: F,
) -> usize {
    if max <= 1 || !parallel_allowed() {
        count_formed(1);
        f(0, 1, &Barrier::new(1));
        return 1;
    }
    let state: Vec<AtomicU8> = (0..max).map(|_| AtomicU8::new(PENDING)).collect();
    let barrier: OnceLock<Barrier> = OnceLock::new();
    let formed = AtomicUsize::new(0);
    let (state, barrier, formed, f) = (&state, &barrier, &formed, &f);
    rayon::scope(|s| {
        for member in 1..max {
            s.spawn(move |_| {
                if state[member]
                    .compare_exchange(PENDING, JOINED, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    return;
                }
                // Rank 0 decides the team within JOIN_WAIT of starting.
                let mut size = formed.load(Ordering::Acquire);
                while size == 0 {
                    std::hint::spin_loop();
                    size = formed.load(Ordering::Acquire);
                }
                let rank = 1
                    + (1..member)
                        .filter(|&k| state[k].load(Ordering::Acquire) == JOINED)
                        .count();
                let b = barrier.get().expect("set before the team is formed");
                let _poison = PoisonOnPanic(b);
                f(rank, size, b)
            });
        }
        let start = Instant::now();
        let wait = if FORCED.load(Ordering::Relaxed) {
            FORCED_JOIN_WAIT
        } else {
            wait
        };
        let joined = || {
            state[1..]
                .iter()
                .filter(|m| m.load(Ordering::Acquire) == JOINED)
                .count()
        };
        while joined() < max - 1 && start.elapsed() < wait {
            std::hint::spin_loop();
        }
        for m in &state[1..] {
            let _ = m.compare_exchange(PENDING, ABSENT, Ordering::AcqRel, Ordering::Acquire);
        }
        let size = 1 + joined();
        let b = barrier.get_or_init(|| Barrier::new(size));
        formed.store(size, Ordering::Release);
        count_formed(size);
        if size < max {
            SHORT.fetch_add(1, Ordering::Relaxed);
        }
        let _poison = PoisonOnPanic(b);
        f(0, size, b);
    });
    formed.load(Ordering::Acquire)
}

/// Teams formed so far in this process, by size (index `n`: teams of `n` threads; the last
/// entry counts every larger team).
static FORMED: [AtomicUsize; 9] = [const { AtomicUsize::new(0) }; 9];

/// Teams that formed with fewer threads than asked for (a pool thread busy elsewhere).
static SHORT: AtomicUsize = AtomicUsize::new(0);

/// How many teams so far formed with fewer threads than they asked for.
pub(crate) fn teams_short() -> usize {
    SHORT.load(Ordering::Relaxed)
}

fn count_formed(size: usize) {
    FORMED[size.min(FORMED.len() - 1)].fetch_add(1, Ordering::Relaxed);
}

/// How many teams of each size have formed in this process (see [`FORMED`]): a test that forces
/// a team (`bench::set_team_override`) compares two snapshots to learn whether the team it
/// asked for actually formed, since a pool thread busy elsewhere is left out of it.
pub(crate) fn teams_formed() -> Vec<usize> {
    FORMED.iter().map(|n| n.load(Ordering::Relaxed)).collect()
}
