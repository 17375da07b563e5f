//! Sharing one short call with one other thread, the calling thread never sleeping.
//!
//! `threads::install` + `join` hands the whole call to the pool and puts the caller to sleep
//! until it ends: two thread wake-ups (a pool thread's, then the caller's) on the critical path
//! of every call, which a streamed step of tens of microseconds cannot afford. Here the caller
//! queues the other half, computes its own, and then either finds the other half taken (and
//! spins until it is done) or takes it back and runs it itself, so a helper that wakes late, or
//! is busy with other work, costs at most the time a serial call would take.
//!
//! The other half goes to the *partner*: one thread that spins for [`PARTNER_SPIN`] after each
//! half it ran and sleeps after that. A pool thread picks a queued job up only after its
//! `yield_now` rounds return (a system call each) or after a futex wake-up: about the time a
//! half of a 3 µs step computes, so a streamed step at batch 1 lost more than it gained by
//! splitting. A spinning partner sees the job within the cache line's trip between cores. Calls
//! from the partner itself (a split in more than two parts) queue on the pool as before.

use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

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

/// Runs `mine` on this thread while `theirs` runs on the partner (a pool thread when called
/// from the partner), or on this thread afterwards if nobody has started it by then, or right
/// after `mine` while the partner backs off. Returns when both are done.
///
/// `theirs` must be `'static` for the pool; callers that hand it raw pointers into their own
/// buffers rely on this function not returning (nor unwinding) before `theirs` has finished.
pub(crate) fn beside(mine: impl FnOnce(), theirs: impl FnOnce() + Send + 'static) {
    let partner = match route() {
        Route::Serial => {
            mine();
            theirs();
            return;
        }
        Route::Partner(p) => Some(p),
        Route::Pool => None,
    };
    let shared = Arc::new(Shared {
        state: AtomicU8::new(PENDING),
        job: Mutex::new(Some(theirs)),
    });
    /// Waits for the other half however this frame is left (a panic in `mine` included), so
    /// that the buffers it writes outlive it; tells the partner's mailbox how the hand-off went.
    struct Wait<'a, B: FnOnce()> {
        shared: &'a Shared<B>,
        /// The partner's mailbox, and whether the partner was awake when the half was posted.
        posted: Option<(&'a Mailbox, bool)>,
    }
    impl<B: FnOnce()> Drop for Wait<'_, B> {
        fn drop(&mut self) {
            if self.shared.take() {
                if let Some((mb, true)) = self.posted {
                    // An awake partner sees a post within a cache line's trip: it was not
                    // running.
                    mb.missed();
                }
                return;
            }
            let mut spins = 0u32;
            while self.shared.state.load(Ordering::Acquire) == TAKEN {
                // A running partner ends within microseconds; a descheduled one needs the core.
                if spins < 1 << 12 {
                    std::hint::spin_loop();
                    spins += 1;
                } else {
                    if spins == 1 << 12 {
                        if let Some((mb, _)) = self.posted {
                            mb.back_off();
                        }
                        spins += 1;
                    }
                    std::thread::yield_now();
                }
            }
            if let Some((mb, _)) = self.posted.filter(|_| spins < 1 << 12) {
                mb.served();
            }
        }
    }
    {
        let mb = partner.as_ref().map(|p| &*p.mailbox);
        // The guard exists before the job is queued, so no way out of this frame skips it.
        let mut wait = Wait {
            shared: &shared,
            posted: None,
        };
        match &partner {
            Some(p) => wait.posted = mb.map(|mb| (mb, p.post(shared.clone()))),
            None => {
                let queued = shared.clone();
                crate::threads::spawn(move || {
                    queued.take();
                });
            }
        }
        mine();
        drop(wait);
    }
    if shared.state.load(Ordering::Acquire) == PANICKED {
        resume_unwind(Box::new(
            "a pool thread panicked in its half of a shared call",
        ));
    }
}

/// Who runs the other half of a [`beside`] call.
enum Route {
    Partner(Arc<Partner>),
    /// The partner's own calls, or no partner to be had.
    Pool,
    /// The partner is backing off (the cores are busy): this thread runs both halves.
    Serial,
}

/// 0: not read yet; 1: off; 2: on. See [`partner_enabled`].
static PARTNER_ON: AtomicU8 = AtomicU8::new(0);

/// Whether split calls hand their other half to the partner; otherwise to the pool, as before
/// the partner existed. Off unless the environment sets `LSTMRS_STEP_PARTNER=1`: on the shared
/// 2-core VM it was measured to take the LSTM B=1 H=128 step from 3.4 to 2.5 µs in some runs
/// and to make it slower in others (see `SPLIT_MIN_WORK`), so it waits for a decision on an
/// idle machine.
pub(crate) fn partner_enabled() -> bool {
    match PARTNER_ON.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var("LSTMRS_STEP_PARTNER").is_ok_and(|v| v.trim() == "1");
            PARTNER_ON.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
        v => v == 2,
    }
}

/// Overrides `LSTMRS_STEP_PARTNER` for this process (tests).
#[cfg(test)]
pub(crate) fn set_partner_enabled(on: bool) {
    PARTNER_ON.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

/// False while the partner backs off (the machine's cores are busy): a caller that would split
/// a short call in two then runs it whole, as one thread would.
pub(crate) fn partner_ready() -> bool {
    !partner_enabled()
        || !PARTNER
            .try_lock()
            .ok()
            .and_then(|p| p.as_ref().map(|p| p.mailbox.backing_off()))
            .unwrap_or(false)
}

fn route() -> Route {
    if !partner_enabled() {
        return Route::Pool;
    }
    match partner() {
        Some(p) if p.mailbox.backing_off() => Route::Serial,
        Some(p) => Route::Partner(p),
        None => Route::Pool,
    }
}

/// How long the partner spins for the next half after running one, before it sleeps: a stream
/// of back-to-back steps (a few µs apart) finds it awake, while a process that stopped stepping
/// gets its core back within this time.
pub(crate) const PARTNER_SPIN: Duration = Duration::from_micros(100);

/// A half queued for another thread, its type erased.
trait Take: Send + Sync {
    /// See [`Shared::take`].
    fn take(&self) -> bool;
}

impl<B: FnOnce() + Send> Take for Shared<B> {
    fn take(&self) -> bool {
        Shared::take(self)
    }
}

/// Where callers leave halves for the partner. One slot: a second caller that posts before the
/// partner took the first caller's half replaces it, and the first caller takes its half back.
struct Mailbox {
    /// Bumped by every post, so the partner tells a new half from one it has seen.
    posted: AtomicU64,
    job: Mutex<Option<Arc<dyn Take>>>,
    /// Set by the partner just before it parks (and until its thread first runs, so that the
    /// halves posted while it starts do not count as misses).
    sleeping: AtomicBool,
    /// When the last half was posted (ns since `epoch()`).
    last_post: AtomicU64,
    /// Halves in a row that callers took back although the partner was awake when they were
    /// posted.
    misses: AtomicU32,
    /// Until when (ns since `epoch()`) callers run both halves themselves; see [`BACKOFF`].
    backoff_until: AtomicU64,
    /// Back-offs since the partner last served [`CLEAN_RUN`] halves in a row: each one lasts
    /// twice the one before, up to [`BACKOFF`] `<< MAX_LEVEL`.
    level: AtomicU32,
    /// Halves served since the last back-off.
    served: AtomicU32,
}

/// The signs that the machine's cores are busy with other work, so that a spinning partner only
/// takes time from the caller (or from whoever else wants the core) and a half it took may wait
/// for a core: a partner that finds itself descheduled for more than this between two looks at
/// its mailbox, a caller that waits for a taken half past its spin budget, or [`MAX_MISSES`]
/// halves in a row the awake partner did not pick up. Then the partner sleeps and callers run
/// both halves for [`BACKOFF`]: a busy machine gets the serial step's time, not worse.
const DESCHEDULED: Duration = Duration::from_micros(50);
const MAX_MISSES: u32 = 3;
pub(crate) const BACKOFF: Duration = Duration::from_millis(20);
/// A machine that stays busy makes every retry after a back-off cost a few hand-offs that wait
/// for a core (milliseconds each): the back-offs double, to 20 ms << 6 (1.3 s), and each run of
/// this many halves served in a row takes one doubling back.
const MAX_LEVEL: u32 = 6;
const CLEAN_RUN: u32 = 10_000;

impl Mailbox {
    fn backing_off(&self) -> bool {
        let until = self.backoff_until.load(Ordering::Relaxed);
        until != 0 && now_ns() < until
    }

    fn back_off(&self) {
        self.misses.store(0, Ordering::Relaxed);
        self.served.store(0, Ordering::Relaxed);
        let level = self.level.load(Ordering::Relaxed);
        self.level
            .store((level + 1).min(MAX_LEVEL), Ordering::Relaxed);
        self.backoff_until.store(
            now_ns() + ((BACKOFF.as_nanos() as u64) << level),
            Ordering::Relaxed,
        );
    }

    /// A half the partner ran without a sign of busy cores.
    fn served(&self) {
        self.misses.store(0, Ordering::Relaxed);
        if self.served.fetch_add(1, Ordering::Relaxed) + 1 >= CLEAN_RUN {
            // One level at a time: on a machine that stays busy the partner does get runs of
            // clean halves between the spells that make it wait.
            self.served.store(0, Ordering::Relaxed);
            let level = self.level.load(Ordering::Relaxed);
            self.level.store(level.saturating_sub(1), Ordering::Relaxed);
        }
    }

    fn missed(&self) {
        if self.misses.fetch_add(1, Ordering::Relaxed) + 1 >= MAX_MISSES {
            self.back_off();
        }
    }
}

struct Partner {
    mailbox: Arc<Mailbox>,
    thread: Thread,
}

/// This process's partner; `None` until the first post, and again after a fork (the parent's
/// thread does not exist in the child; see [`reset_after_fork`]).
static PARTNER: Mutex<Option<Arc<Partner>>> = Mutex::new(None);

thread_local! {
    static IS_PARTNER: Cell<bool> = const { Cell::new(false) };
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// The partner, started on first use; `None` on the partner itself, while another thread holds
/// the slot (never wait for it: a lock held at fork time stays held in the child), or if the
/// system cannot start a thread.
fn partner() -> Option<Arc<Partner>> {
    if IS_PARTNER.with(Cell::get) {
        return None;
    }
    let mut slot = PARTNER.try_lock().ok()?;
    if let Some(p) = slot.as_ref() {
        return Some(p.clone());
    }
    let mailbox = Arc::new(Mailbox {
        posted: AtomicU64::new(0),
        job: Mutex::new(None),
        sleeping: AtomicBool::new(true),
        last_post: AtomicU64::new(0),
        misses: AtomicU32::new(0),
        backoff_until: AtomicU64::new(0),
        level: AtomicU32::new(0),
        served: AtomicU32::new(0),
    });
    let served = mailbox.clone();
    let handle = std::thread::Builder::new()
        .name("lstmrs-partner".into())
        .spawn(move || serve(&served))
        .ok()?;
    let p = Arc::new(Partner {
        mailbox,
        thread: handle.thread().clone(),
    });
    *slot = Some(p.clone());
    Some(p)
}

/// The partner's loop: run each posted half, spin [`PARTNER_SPIN`] for the next, then park
/// until a post wakes it.
fn serve(mb: &Mailbox) {
    IS_PARTNER.with(|c| c.set(true));
    mb.sleeping.store(false, Ordering::SeqCst);
    let mut seen = 0u64;
    loop {
        let mut idle_since = Instant::now();
        let mut looked = idle_since;
        let mut spins = 0u32;
        while !mb.backing_off() {
            let posted = mb.posted.load(Ordering::Acquire);
            if posted != seen {
                seen = posted;
                let job = mb.job.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(job) = job {
                    // A half its caller took back already is a no-op here.
                    job.take();
                }
                idle_since = Instant::now();
                looked = idle_since;
                continue;
            }
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) {
                let now = Instant::now();
                if now - looked > DESCHEDULED {
                    mb.back_off();
                    break;
                }
                if now - idle_since > PARTNER_SPIN {
                    break;
                }
                looked = now;
            }
        }
        mb.sleeping.store(true, Ordering::SeqCst);
        // A post between the last look and `sleeping` is seen here (both sides SeqCst: either
        // this load sees the post, or the poster sees `sleeping`).
        if mb.posted.load(Ordering::SeqCst) == seen {
            std::thread::park();
        }
        mb.sleeping.store(false, Ordering::SeqCst);
    }
}

impl Partner {
    /// Leaves `job` for the partner; returns whether the partner was awake (not parking).
    ///
    /// A sleeping partner is woken only when the previous post came within [`PARTNER_SPIN`]: a
    /// stream of steps wakes it at its second step and finds it spinning after that, while
    /// steps far apart (a real-time loop at a few kHz or less) never pay a wake-up system call
    /// for a half that their caller would take back before the partner ran.
    fn post(&self, job: Arc<dyn Take>) -> bool {
        let mb = &self.mailbox;
        *mb.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job);
        mb.posted.fetch_add(1, Ordering::SeqCst);
        let now = now_ns();
        let last = mb.last_post.swap(now, Ordering::Relaxed);
        let asleep = mb.sleeping.load(Ordering::SeqCst);
        if asleep && now.saturating_sub(last) < PARTNER_SPIN.as_nanos() as u64 {
            self.thread.unpark();
        }
        !asleep
    }
}

/// Forgets the partner in a forked child (its thread was not copied); the next post starts one.
pub(crate) fn reset_after_fork() {
    if let Ok(mut slot) = PARTNER.try_lock() {
        if let Some(p) = slot.take() {
            // Its `Thread` handle refers to a thread of the parent: never touch it again.
            std::mem::forget(p);
        }
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
    fn the_partner_takes_halves_and_its_own_halves_go_to_the_pool() {
        set_partner_enabled(true);
        // A stream of calls keeps the partner awake: most halves should run on it, and a
        // `beside` inside a half the partner runs queues on the pool instead of on itself.
        let on_partner = Arc::new(AtomicUsize::new(0));
        for _ in 0..2000 {
            let (outer, inner) = (on_partner.clone(), Arc::new(AtomicUsize::new(0)));
            let seen = inner.clone();
            beside(
                || std::hint::black_box(()),
                move || {
                    if IS_PARTNER.with(Cell::get) {
                        outer.fetch_add(1, Ordering::SeqCst);
                    }
                    let nested = inner.clone();
                    beside(
                        || {},
                        move || {
                            nested.fetch_add(1, Ordering::SeqCst);
                        },
                    );
                },
            );
            assert_eq!(seen.load(Ordering::SeqCst), 1);
        }
        // On a machine whose cores are busy the partner may have backed off throughout, so the
        // count is reported, not asserted; every half ran exactly once either way.
        eprintln!(
            "partner ran {} of 2000 halves",
            on_partner.load(Ordering::SeqCst)
        );
    }

    #[test]
    fn callers_on_several_threads_each_get_their_half_run_once() {
        set_partner_enabled(true);
        // They share the partner's one mailbox: a post replaces a half not yet taken, whose
        // caller then runs it itself.
        std::thread::scope(|scope| {
            for t in 0..4u32 {
                scope.spawn(move || {
                    for i in 0..500u32 {
                        let mut buf = [0u32; 2];
                        let (a, b) = buf.split_at_mut(1);
                        beside_scoped(|| a[0] = t, || b[0] = i);
                        assert_eq!(buf, [t, i]);
                    }
                });
            }
        });
    }

    #[test]
    fn a_backing_off_partner_leaves_both_halves_to_the_caller() {
        set_partner_enabled(true);
        let p = partner().expect("a partner thread");
        p.mailbox.back_off();
        assert!(p.mailbox.backing_off());
        assert!(matches!(route(), Route::Serial));
        assert!(!partner_ready());
        let caller = std::thread::current().id();
        let mut ran_on = None;
        beside_scoped(|| {}, || ran_on = Some(std::thread::current().id()));
        // Unless another test's calls ended the back-off early (they cannot: only time does).
        assert_eq!(ran_on, Some(caller));
    }

    #[test]
    fn back_offs_double_up_to_the_cap_and_each_clean_run_halves_them() {
        let mb = Mailbox {
            posted: AtomicU64::new(0),
            job: Mutex::new(None),
            sleeping: AtomicBool::new(false),
            last_post: AtomicU64::new(0),
            misses: AtomicU32::new(0),
            backoff_until: AtomicU64::new(0),
            level: AtomicU32::new(0),
            served: AtomicU32::new(0),
        };
        let lengths: Vec<u64> = (0..MAX_LEVEL + 2)
            .map(|_| {
                let before = now_ns();
                mb.back_off();
                let len = mb.backoff_until.load(Ordering::Relaxed) - before;
                len / BACKOFF.as_nanos() as u64
            })
            .collect();
        // Each at least its nominal length (the clock moved between the two reads).
        assert_eq!(lengths, [1, 2, 4, 8, 16, 32, 64, 64]);
        for _ in 0..MAX_MISSES - 1 {
            mb.missed();
        }
        assert_eq!(mb.level.load(Ordering::Relaxed), MAX_LEVEL);
        for _ in 0..CLEAN_RUN {
            mb.served();
        }
        assert_eq!(mb.level.load(Ordering::Relaxed), MAX_LEVEL - 1);
        for _ in 0..CLEAN_RUN * (MAX_LEVEL - 1) {
            mb.served();
        }
        assert_eq!(mb.level.load(Ordering::Relaxed), 0);
        for _ in 0..MAX_MISSES {
            mb.missed();
        }
        assert_eq!(
            mb.level.load(Ordering::Relaxed),
            1,
            "misses in a row back off"
        );
    }

    #[test]
    fn a_panic_in_the_queued_half_reaches_the_caller() {
        let r = catch_unwind(|| beside(|| {}, || panic!("boom")));
        assert!(r.is_err());
    }
}
