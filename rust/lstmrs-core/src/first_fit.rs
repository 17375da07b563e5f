//! First-fit placement of large blocks in one address range: the bookkeeping of the extension's
//! large-block allocator (`lstmrs-py`'s `big_blocks`), kept apart from its system calls so it can
//! be tested.
//!
//! Why first fit: a training step's buffers (the tape, gradients, workspaces) are freed and
//! allocated again at every step, and the resident memory a process adds is every page its
//! buffers ever touched. Placing each block at the lowest free offset that fits reuses the same
//! pages step after step, whatever thread allocates, so the pages touched stay close to the
//! largest amount of memory live at once. (mimalloc starts each thread's search at its own place
//! in its arena, so which pool thread ran a call moved the tape elsewhere: the same training
//! step of LSTM (64,128,128,256,2) added 172-206 MiB of resident memory in different processes
//! for 146 MiB live at its peak; replaying the recorded allocations first-fit touched 145-152.)
//!
//! Offsets and lengths are in bytes; the caller rounds lengths to its granule. Only memory
//! handed out at least once is tracked: beyond `fresh_from` the range has never been touched
//! (the kernel's zero pages), which is what lets a zeroed allocation skip clearing it.

/// A free run of touched memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeRun {
    pub start: usize,
    pub len: usize,
    /// When it was last freed (the caller's clock, milliseconds).
    pub freed_at: u64,
    /// Whether its pages were handed back to the system since (see [`FirstFit::stale_runs`]).
    pub purged: bool,
}

/// A block placed by [`FirstFit::take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub start: usize,
    /// Bytes at the block's start that were handed out before and may hold old data; the rest
    /// has never been touched and reads as zeros.
    pub used_before: usize,
}

/// Free runs of touched memory (sorted by start, never adjacent) and the untouched remainder.
#[derive(Debug, Clone, Default)]
pub struct FirstFit {
    free: Vec<FreeRun>,
    /// End of the memory handed out so far; `[fresh_from, capacity)` has never been touched.
    fresh_from: usize,
    capacity: usize,
}

impl FirstFit {
    /// An empty tracker (no range yet: every `take` fails until [`FirstFit::with_capacity`]).
    pub const fn empty() -> Self {
        FirstFit {
            free: Vec::new(),
            fresh_from: 0,
            capacity: 0,
        }
    }

    /// A range of `capacity` bytes, all untouched.
    pub fn with_capacity(capacity: usize) -> Self {
        FirstFit {
            capacity,
            ..Self::empty()
        }
    }

    /// The end of the memory handed out so far: the most the range ever had touched.
    pub fn touched(&self) -> usize {
        self.fresh_from
    }

    /// The free runs of touched memory, lowest first.
    pub fn free_runs(&self) -> &[FreeRun] {
        &self.free
    }

    /// Places `len` bytes at the lowest offset where they fit: the first free run long enough,
    /// else the last run if it reaches the untouched remainder (extended into it), else the
    /// remainder. None when the range is full.
    pub fn take(&mut self, len: usize) -> Option<Placed> {
        if let Some(i) = self.free.iter().position(|r| r.len >= len) {
            let run = &mut self.free[i];
            let start = run.start;
            if run.len == len {
                self.free.remove(i);
            } else {
                run.start += len;
                run.len -= len;
            }
            return Some(Placed {
                start,
                used_before: len,
            });
        }
        let (start, used_before) = match self.free.last() {
            Some(last) if last.start + last.len == self.fresh_from => (last.start, last.len),
            _ => (self.fresh_from, 0),
        };
        let end = start.checked_add(len)?;
        if end > self.capacity {
            return None;
        }
        if used_before > 0 {
            self.free.pop();
        }
        self.fresh_from = end;
        Some(Placed { start, used_before })
    }

    /// Returns `[start, start + len)`, placed by `take`, freed at time `now`; merges it with the
    /// free runs it touches.
    pub fn give(&mut self, start: usize, len: usize, now: u64) {
        let i = self.free.partition_point(|r| r.start < start);
        debug_assert!(i == 0 || self.free[i - 1].start + self.free[i - 1].len <= start);
        debug_assert!(i == self.free.len() || start + len <= self.free[i].start);
        let mut run = FreeRun {
            start,
            len,
            freed_at: now,
            purged: false,
        };
        let merge_next = i < self.free.len() && start + len == self.free[i].start;
        if merge_next {
            run.len += self.free.remove(i).len;
        }
        if i > 0 && self.free[i - 1].start + self.free[i - 1].len == start {
            let prev = &mut self.free[i - 1];
            prev.len += run.len;
            prev.freed_at = now;
            prev.purged = false;
        } else {
            self.free.insert(i, run);
        }
    }

    /// The free runs not yet purged that were freed at least `delay` before `now`, marked purged
    /// (the caller hands their pages back). A run freed more recently waits: its pages are likely
    /// wanted again by the next call.
    pub fn stale_runs(&mut self, now: u64, delay: u64) -> Vec<(usize, usize)> {
        self.free
            .iter_mut()
            .filter(|r| !r.purged && now.saturating_sub(r.freed_at) >= delay)
            .map(|r| {
                r.purged = true;
                (r.start, r.len)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_placed_at_the_lowest_offset_that_fits() {
        let mut f = FirstFit::with_capacity(100);
        let a = f.take(10).unwrap();
        let b = f.take(20).unwrap();
        let c = f.take(30).unwrap();
        assert_eq!((a.start, b.start, c.start), (0, 10, 30));
        assert_eq!(f.touched(), 60);
        f.give(b.start, 20, 1);
        // Too long for the hole: placed after the touched memory.
        assert_eq!(f.take(25).unwrap().start, 60);
        // Fits the hole: reused, and it may hold old data.
        let d = f.take(15).unwrap();
        assert_eq!(
            d,
            Placed {
                start: 10,
                used_before: 15
            }
        );
        assert_eq!(f.free_runs()[0].start, 25);
    }

    #[test]
    fn freed_neighbours_merge_and_a_last_run_extends_into_the_untouched_rest() {
        let mut f = FirstFit::with_capacity(100);
        let blocks: Vec<_> = [10, 10, 10].iter().map(|&n| f.take(n).unwrap()).collect();
        f.give(blocks[0].start, 10, 1);
        f.give(blocks[2].start, 10, 2);
        assert_eq!(f.free_runs().len(), 2);
        f.give(blocks[1].start, 10, 3);
        assert_eq!(
            f.free_runs(),
            &[FreeRun {
                start: 0,
                len: 30,
                freed_at: 3,
                purged: false
            }]
        );
        // Longer than every run: the last run, which ends where the untouched memory begins,
        // grows into it instead of leaving a hole.
        assert_eq!(
            f.take(45).unwrap(),
            Placed {
                start: 0,
                used_before: 30
            }
        );
        assert_eq!(f.touched(), 45);
        assert!(f.free_runs().is_empty());
    }

    #[test]
    fn a_full_range_refuses_and_stays_intact() {
        let mut f = FirstFit::with_capacity(50);
        let a = f.take(40).unwrap();
        assert_eq!(f.take(11), None);
        assert_eq!(f.take(usize::MAX), None);
        f.give(a.start, 40, 0);
        assert_eq!(
            f.take(50).unwrap(),
            Placed {
                start: 0,
                used_before: 40
            }
        );
        assert_eq!(FirstFit::empty().take(1), None);
    }

    #[test]
    fn only_runs_idle_for_the_delay_are_purged_once() {
        let mut f = FirstFit::with_capacity(100);
        let (a, _, c) = (
            f.take(10).unwrap(),
            f.take(10).unwrap(),
            f.take(10).unwrap(),
        );
        f.give(a.start, 10, 100);
        f.give(c.start, 10, 900);
        assert_eq!(f.stale_runs(1100, 1000), vec![(0, 10)]);
        assert!(f.stale_runs(1100, 1000).is_empty());
        assert_eq!(f.stale_runs(1900, 1000), vec![(20, 10)]);
        // Freeing next to a purged run makes the merged run wait again.
        let b = 10;
        f.give(b, 10, 2000);
        assert_eq!(f.free_runs().len(), 1);
        assert!(f.stale_runs(2500, 1000).is_empty());
        assert_eq!(f.stale_runs(3000, 1000), vec![(0, 30)]);
    }

    /// A training step's pattern: the same sizes freed and taken again, in a different order,
    /// touch no new memory after the first step.
    #[test]
    fn a_repeated_step_reuses_the_same_memory() {
        let mut f = FirstFit::with_capacity(1 << 20);
        let sizes = [64, 512, 129, 129, 128, 128, 512, 129, 129, 128, 128];
        let mut touched = Vec::new();
        for step in 0..4u64 {
            let mut live: Vec<_> = sizes
                .iter()
                .map(|&n| (f.take(n).unwrap().start, n))
                .collect();
            if step % 2 == 1 {
                live.reverse();
            }
            for (s, n) in live {
                f.give(s, n, step);
            }
            touched.push(f.touched());
        }
        assert_eq!(touched[0], sizes.iter().sum::<usize>());
        assert!(touched.windows(2).all(|w| w[0] == w[1]), "{touched:?}");
    }
}
