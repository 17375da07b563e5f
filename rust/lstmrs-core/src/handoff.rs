//! Sharing one short call with one pool thread, the calling thread never sleeping.
//!
//! `threads::install` + `join` hands the whole call to the pool and puts the caller to sleep
//! until it ends: two thread wake-ups (a pool thread's, then the caller's) on the critical path
//! of every call, which a streamed step of tens of microseconds cannot afford. Here the caller
//! queues the other half, computes its own, and then either finds the other half taken (and
//! spins until it is done) or takes it back and runs it itself, so a pool thread that wakes
//! late, or a pool busy with other work, costs at most the time a serial call would take.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

const PENDING: u8 = 0;
const TAKEN: u8 = 1;
const DONE: u8 = 2;
const PANICKED: u8 = 3;

/// The queued half and who runs it.
struct Shared<B> {
    state: AtomicU8,
    job: Mutex<Option<B>>,
}

impl<B: FnOnce()> Shared<B> {
    /// Runs the job if nobody has taken it yet; true if this call ran it.
    fn take(&self) -> bool {
        if self
            .state
            .compare_exchange(PENDING, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        let job = self.job.lock().unwrap_or_else(|e| e.into_inner()).take();
        let r = catch_unwind(AssertUnwindSafe(|| job.map(|f| f())));
        let end = if r.is_ok() { DONE } else { PANICKED };
        self.state.store(end, Ordering::Release);
        true
    }
}

/// Runs `mine` on this thread while `theirs` runs on a pool thread (or on this one afterwards,
/// if no pool thread has started it by then). Returns when both are done.
///
/// `theirs` must be `'static` for the pool; callers that hand it raw pointers into their own
/// buffers rely on this function not returning (nor unwinding) before `theirs` has finished.
pub(crate) fn beside(mine: impl FnOnce(), theirs: impl FnOnce() + Send + 'static) {
    let shared = Arc::new(Shared {
        state: AtomicU8::new(PENDING),
        job: Mutex::new(Some(theirs)),
    });
    /// Waits for the other half however this frame is left (a panic in `mine` included), so
    /// that the buffers it writes outlive it.
    struct Wait<'a, B: FnOnce()>(&'a Shared<B>);
    impl<B: FnOnce()> Drop for Wait<'_, B> {
        fn drop(&mut self) {
            if self.0.take() {
                return;
            }
            let mut spins = 0u32;
            while self.0.state.load(Ordering::Acquire) == TAKEN {
                // A running partner ends within microseconds; a descheduled one needs the core.
                if spins < 1 << 12 {
                    std::hint::spin_loop();
                    spins += 1;
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }
    {
        // The guard exists before the job is queued, so no way out of this frame skips it.
        let _wait = Wait(&shared);
        let queued = shared.clone();
        crate::threads::spawn(move || {
            queued.take();
        });
        mine();
    }
    if shared.state.load(Ordering::Acquire) == PANICKED {
        resume_unwind(Box::new(
            "a pool thread panicked in its half of a shared call",
        ));
    }
}

/// [`beside`] for a `theirs` that borrows from the caller's frame (a scoped hand-off, without
/// raw pointers at every call site).
pub(crate) fn beside_scoped<'a>(mine: impl FnOnce(), theirs: impl FnOnce() + Send + 'a) {
    let theirs: Box<dyn FnOnce() + Send + 'a> = Box::new(theirs);
    // SAFETY: only the lifetime changes. `beside` neither returns nor unwinds before `theirs`
    // has finished (run by a pool thread, or taken back and run here, a panic in `mine`
    // included), so nothing it borrows ends while it can still run; a queued job that finds it
    // taken drops an empty slot.
    let theirs: Box<dyn FnOnce() + Send + 'static> = unsafe { std::mem::transmute(theirs) };
    beside(mine, theirs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn both_halves_run_exactly_once() {
        for _ in 0..200 {
            let count = Arc::new(AtomicUsize::new(0));
            let theirs = count.clone();
            let mut mine = 0;
            beside(
                || mine += 1,
                move || {
                    theirs.fetch_add(1, Ordering::SeqCst);
                },
            );
            assert_eq!((mine, count.load(Ordering::SeqCst)), (1, 1));
        }
    }

    #[test]
    fn a_scoped_half_writes_the_callers_buffer() {
        for _ in 0..200 {
            let mut buf = [0u32; 2];
            let (a, b) = buf.split_at_mut(1);
            beside_scoped(|| a[0] = 1, || b[0] = 2);
            assert_eq!(buf, [1, 2]);
        }
    }

    #[test]
    fn a_panic_in_the_queued_half_reaches_the_caller() {
        let r = catch_unwind(|| beside(|| {}, || panic!("boom")));
        assert!(r.is_err());
    }
}
