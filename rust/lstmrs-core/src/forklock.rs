//! A read-write lock that a forked child can always take.
//!
//! `fork()` copies the memory of a process but only the calling thread. A `std::sync::RwLock`
//! held by another thread at that moment (a forward pass running beside `os.fork()` in Python,
//! or multiprocessing's default start method on Linux) stays held in the child forever, so the
//! child's first write (`load_state_dict`, `fit`) blocks with no way out, not even Ctrl-C.
//!
//! [`ForkRwLock`] stamps its state with a fork generation: [`after_fork_in_child`] (registered with
//! `pthread_atfork` by the bindings, beside the thread pool's reset) starts a new generation, and
//! a lock word from an older generation reads as free, since the threads that held it do not
//! exist in the child. A guard taken before the fork and dropped after it leaves the fresh state
//! alone. Waiters spin briefly, then sleep with back-off: the lock guards whole forward passes
//! and training steps (milliseconds), not tight loops.

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// The fork generation of this process: bumped in the child of every fork.
static GENERATION: AtomicU32 = AtomicU32::new(0);

/// Starts a new fork generation: every [`ForkRwLock`] reads as free afterwards. Call it only
/// from a `pthread_atfork` child handler (the child has one thread then); it is a single atomic
/// operation, so it is async-signal-safe.
pub fn after_fork_in_child() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
}

// Lock word: generation in the high 32 bits; the state in the low 32.
const WRITER: u32 = 1 << 31;
const WRITER_WAITING: u32 = 1 << 30;
const READERS: u32 = WRITER_WAITING - 1;

fn join(generation: u32, state: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(state)
}

/// The state of `word` in generation `generation` (free when the word is from an older one).
fn state_in(word: u64, generation: u32) -> u32 {
    if (word >> 32) as u32 == generation {
        word as u32
    } else {
        0
    }
}

/// A readers-writer lock (writers wait for readers, new readers wait for a waiting writer) that a
/// forked child finds free.
pub struct ForkRwLock<T> {
    word: AtomicU64,
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&T` to several threads only while no `&mut T` exists, and `&mut T`
// to one thread at a time, as std's RwLock does; so the same bounds apply.
unsafe impl<T: Send> Send for ForkRwLock<T> {}
unsafe impl<T: Send + Sync> Sync for ForkRwLock<T> {}

/// Spins, then yields, then sleeps up to a millisecond between tries.
struct Backoff(u32);

impl Backoff {
    fn wait(&mut self) {
        self.0 = self.0.saturating_add(1);
        match self.0 {
            0..=63 => std::hint::spin_loop(),
            64..=127 => std::thread::yield_now(),
            n => std::thread::sleep(Duration::from_micros(u64::from((n - 127).min(20)) * 50)),
        }
    }
}

impl<T> ForkRwLock<T> {
    pub const fn new(value: T) -> Self {
        ForkRwLock {
            word: AtomicU64::new(0),
            data: UnsafeCell::new(value),
        }
    }

    fn try_read_in(&self, generation: u32) -> Option<ReadGuard<'_, T>> {
        let word = self.word.load(Ordering::Acquire);
        let state = state_in(word, generation);
        if state & (WRITER | WRITER_WAITING) != 0 || state & READERS == READERS {
            return None;
        }
        self.word
            .compare_exchange_weak(
                word,
                join(generation, state + 1),
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .ok()
            .map(|_| ReadGuard {
                lock: self,
                generation,
            })
    }

    fn try_write_in(&self, generation: u32, waiting: bool) -> Option<WriteGuard<'_, T>> {
        let word = self.word.load(Ordering::Acquire);
        let state = state_in(word, generation);
        if state & !WRITER_WAITING == 0 {
            if self
                .word
                .compare_exchange_weak(
                    word,
                    join(generation, WRITER),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                return Some(WriteGuard {
                    lock: self,
                    generation,
                });
            }
        } else if waiting && state & WRITER_WAITING == 0 {
            // Announce the writer so new readers hold back; losing this race only delays it.
            let _ = self.word.compare_exchange_weak(
                word,
                join(generation, state | WRITER_WAITING),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        None
    }

    /// Shared access, waiting while a writer holds or waits for the lock.
    pub fn read(&self) -> ReadGuard<'_, T> {
        let mut backoff = Backoff(0);
        loop {
            if let Some(g) = self.try_read_in(GENERATION.load(Ordering::Acquire)) {
                return g;
            }
            backoff.wait();
        }
    }

    /// Exclusive access, waiting for the readers and writer of this generation.
    pub fn write(&self) -> WriteGuard<'_, T> {
        let mut backoff = Backoff(0);
        loop {
            if let Some(g) = self.try_write_in(GENERATION.load(Ordering::Acquire), true) {
                return g;
            }
            backoff.wait();
        }
    }

    /// Shared access if it is free now (a few retries absorb contention on the word itself).
    pub fn try_read(&self) -> Option<ReadGuard<'_, T>> {
        (0..8).find_map(|_| self.try_read_in(GENERATION.load(Ordering::Acquire)))
    }

    /// Exclusive access if it is free now.
    pub fn try_write(&self) -> Option<WriteGuard<'_, T>> {
        (0..8).find_map(|_| self.try_write_in(GENERATION.load(Ordering::Acquire), false))
    }

    /// The value, when the lock is owned (no guard can exist).
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }

    /// Releases in `generation` with `update` applied to the state; nothing when the process
    /// forked since (the child's lock word is already free).
    fn release(&self, generation: u32, update: impl Fn(u32) -> u32) {
        let mut word = self.word.load(Ordering::Relaxed);
        loop {
            if (word >> 32) as u32 != generation {
                return;
            }
            let next = join(generation, update(word as u32));
            match self
                .word
                .compare_exchange_weak(word, next, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(w) => word = w,
            }
        }
    }
}

impl<T: Default> Default for ForkRwLock<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

/// A mutex a forked child finds free: a [`ForkRwLock`] that only hands out exclusive access,
/// so (like `std::sync::Mutex`) it is `Sync` for any `Send` value.
pub struct ForkMutex<T>(ForkRwLock<T>);

// SAFETY: only `WriteGuard`s are handed out, one at a time, so no `&T` is ever shared between
// threads: `T: Send` suffices, as for `std::sync::Mutex`.
unsafe impl<T: Send> Sync for ForkMutex<T> {}

impl<T> ForkMutex<T> {
    pub const fn new(value: T) -> Self {
        ForkMutex(ForkRwLock::new(value))
    }

    /// Exclusive access, waiting for the holder of this generation.
    pub fn lock(&self) -> WriteGuard<'_, T> {
        self.0.write()
    }

    /// Exclusive access if it is free now.
    pub fn try_lock(&self) -> Option<WriteGuard<'_, T>> {
        self.0.try_write()
    }
}

/// Shared access; released on drop.
pub struct ReadGuard<'a, T> {
    lock: &'a ForkRwLock<T>,
    generation: u32,
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: a read guard exists only while the state counts it and no writer holds the lock.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> Drop for ReadGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.release(self.generation, |s| s - 1);
    }
}

/// Exclusive access; released on drop.
pub struct WriteGuard<'a, T> {
    lock: &'a ForkRwLock<T>,
    generation: u32,
}

impl<T> Deref for WriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the write guard is the only access while it lives.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as above.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for WriteGuard<'_, T> {
    fn drop(&mut self) {
        // Waiting writers announce themselves again on their next try.
        self.lock.release(self.generation, |_| 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// The generation is process-wide: the test that bumps it must not overlap the others.
    static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn readers_share_and_writers_exclude() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let l = ForkRwLock::new(5);
        let a = l.read();
        let b = l.read();
        assert_eq!(*a + *b, 10);
        assert!(l.try_write().is_none());
        drop((a, b));
        let mut w = l.write();
        *w = 7;
        assert!(l.try_read().is_none());
        drop(w);
        assert_eq!(*l.read(), 7);
    }

    #[test]
    fn a_new_generation_frees_a_lock_held_in_the_old_one() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let l = ForkRwLock::new(0);
        let held = l.write();
        // What a forked child sees: the holder's thread is gone, the word still says "held".
        after_fork_in_child();
        assert!(
            l.try_write().is_some(),
            "the child must be able to take the lock"
        );
        // The stale guard's release must not disturb the new generation.
        let r = l.read();
        drop(held);
        assert!(l.try_write().is_none(), "the child's reader still holds it");
        drop(r);
        assert!(l.try_write().is_some());
    }

    #[test]
    fn many_threads_count_exactly() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let l = Arc::new(ForkRwLock::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let l = l.clone();
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        if i % 2 == 0 {
                            *l.write() += 1;
                        } else {
                            let v = *l.read();
                            assert!(v <= 4000);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*l.read(), 4000);
    }
}
