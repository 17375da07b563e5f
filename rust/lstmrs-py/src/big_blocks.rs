//! Blocks of 1 MiB and more, placed first-fit in one reserved address range (see
//! `lstmrs_core::first_fit` for why), so a training step's tape and gradients land on the same
//! pages at every step whichever pool thread allocates them. Freed pages stay mapped, as with
//! mimalloc's delayed purge (`alloc.rs`): reusing them costs no page fault. A run left free for
//! [`PURGE_DELAY_MS`] is handed back with `MADV_FREE` (kept until the kernel needs the memory) at
//! the next allocation or free.
//!
//! Where the range cannot be reserved (an address-space limit, strict overcommit) or is full,
//! the caller falls back to mimalloc.

use lstmrs_core::first_fit::FirstFit;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Blocks from this size up are placed here.
pub(crate) const MIN_SIZE: usize = 1 << 20;

/// Alignment of every block (its size is rounded up to it too).
pub(crate) const GRANULE: usize = 64 << 10;

/// Address space reserved (not memory: pages are only backed once touched).
const RESERVE: usize = 64 << 30;

/// How long a free run stays resident before it is handed back.
pub(crate) const PURGE_DELAY_MS: u64 = 1000;

/// The range's start and length; `len` is 0 until reserved (or when it could not be).
static BASE: AtomicUsize = AtomicUsize::new(0);
static LEN: AtomicUsize = AtomicUsize::new(0);

/// The bookkeeping, behind a spin lock: it is held for microseconds, cannot allocate through
/// this module (its runs vector stays far below `MIN_SIZE`), and a fork handler can release it in
/// the child, which a `std::sync::Mutex` guard would not allow.
struct State {
    fit: FirstFit,
    /// Whether reserving the range was tried already.
    tried: bool,
    last_purge: u64,
}

static LOCKED: AtomicBool = AtomicBool::new(false);
static mut STATE: State = State {
    fit: FirstFit::empty(),
    tried: false,
    last_purge: 0,
};

fn lock() {
    while LOCKED
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::thread::yield_now();
    }
}

fn unlock() {
    LOCKED.store(false, Ordering::Release);
}

/// Runs `f` on the state under the lock.
fn with_state<R>(f: impl FnOnce(&mut State) -> R) -> R {
    lock();
    // SAFETY: the lock gives this thread the only access to STATE until `unlock`.
    let r = f(unsafe { &mut *std::ptr::addr_of_mut!(STATE) });
    unlock();
    r
}

extern "C" fn before_fork() {
    lock();
}

extern "C" fn after_fork() {
    unlock();
}

/// Milliseconds of a monotonic clock.
fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Reserves the range once: readable and writable without committing memory, no transparent
/// huge pages (as mimalloc's, `alloc.rs`), and a fork handler for the lock. Skipped under an
/// address-space limit, which 64 GiB of reservation would eat into.
fn reserve(st: &mut State) {
    st.tried = true;
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid out-pointer for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut rl) } != 0
        || rl.rlim_cur != libc::RLIM_INFINITY
    {
        return;
    }
    // SAFETY: a fresh anonymous private mapping; nothing else refers to it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            RESERVE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return;
    }
    // Align the start to the granule; the few pages before it are never touched.
    let start = (p as usize).next_multiple_of(GRANULE);
    let len = RESERVE - (start - p as usize);
    // SAFETY: advice on the mapping just made; a failure only leaves the process's THP setting.
    unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_NOHUGEPAGE) };
    // SAFETY: plain functions with no captured state, taking and releasing this module's lock.
    let _ = unsafe { libc::pthread_atfork(Some(before_fork), Some(after_fork), Some(after_fork)) };
    st.fit = FirstFit::with_capacity(len);
    BASE.store(start, Ordering::Release);
    LEN.store(len, Ordering::Release);
}

/// Hands back the runs free for longer than the delay, at most once per delay.
fn purge_stale(st: &mut State, now: u64) {
    if now.saturating_sub(st.last_purge) < PURGE_DELAY_MS {
        return;
    }
    st.last_purge = now;
    let base = BASE.load(Ordering::Relaxed);
    for (start, len) in st.fit.stale_runs(now, PURGE_DELAY_MS) {
        // SAFETY: a free run inside the range: no block handed out overlaps it, and the lock
        // keeps it from being handed out before the advice is given.
        unsafe { libc::madvise((base + start) as *mut libc::c_void, len, libc::MADV_FREE) };
    }
}

/// A block of `size` bytes (`size >= MIN_SIZE`) aligned to [`GRANULE`], zeroed if asked; None
/// where the range is unavailable or full.
pub(crate) fn alloc(size: usize, zeroed: bool) -> Option<*mut u8> {
    let len = size.checked_next_multiple_of(GRANULE)?;
    let placed = with_state(|st| {
        if !st.tried {
            reserve(st);
        }
        purge_stale(st, now_ms());
        st.fit.take(len)
    })?;
    let p = (BASE.load(Ordering::Acquire) + placed.start) as *mut u8;
    if zeroed {
        // Only the part handed out before can hold data: the rest is untouched zero pages.
        // SAFETY: the block is this caller's alone, `placed.used_before <= len` bytes from p.
        unsafe { std::ptr::write_bytes(p, 0, placed.used_before.min(size)) };
    }
    Some(p)
}

/// Whether `p` lies in the range (and so came from [`alloc`]).
pub(crate) fn owns(p: *mut u8) -> bool {
    (p as usize).wrapping_sub(BASE.load(Ordering::Acquire)) < LEN.load(Ordering::Acquire)
}

/// Returns a block from [`alloc`] of `size` bytes.
pub(crate) fn free(p: *mut u8, size: usize) {
    let start = p as usize - BASE.load(Ordering::Acquire);
    let len = size.next_multiple_of(GRANULE);
    let now = now_ms();
    with_state(|st| {
        st.fit.give(start, len, now);
        purge_stale(st, now);
    });
}
