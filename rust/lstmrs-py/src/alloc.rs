//! The extension's allocator: mimalloc, keeping freed memory for a moment before giving it back.
//!
//! A forward or training call allocates its work buffers afresh (the input projection of
//! `(64, 128, 128, 256)` alone is 32 MiB, the tape several times that). glibc serves blocks over
//! 32 MiB with `mmap` and unmaps them on free, so every call faulted its buffers in again and the
//! kernel zeroed every page: with glibc's `mmap` turned off (`MALLOC_MMAP_MAX_=0`) the same
//! inference ran in 80 ms instead of 127, a training step in 235 instead of 310. mimalloc reuses
//! freed memory instead, and returns it to the system after `PURGE_DELAY_MS` (its default, 10 ms,
//! is shorter than the gap between two training steps). Only the extension's Rust allocations go
//! through it; Python and NumPy keep their own allocator.
//!
//! Blocks of 1 MiB and more (tapes, gradients, layer buffers) bypass mimalloc: `big_blocks`
//! places them first-fit in one range, so the pages a training step touches stay the same from
//! step to step (mimalloc placed them per thread, and a step's resident memory varied by 30 MiB
//! between processes).

use crate::big_blocks;
use mimalloc::MiMalloc;
use std::alloc::{GlobalAlloc, Layout};

/// mimalloc, with large blocks from [`big_blocks`].
struct Allocator;

fn is_big(layout: Layout) -> bool {
    layout.size() >= big_blocks::MIN_SIZE && layout.align() <= big_blocks::GRANULE
}

// SAFETY: every block comes from mimalloc or `big_blocks` and goes back to the one that made it
// (`big_blocks::owns` tells them apart by address); both honour the layout's size and alignment.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_big(layout) {
            if let Some(p) = big_blocks::alloc(layout.size(), false) {
                return p;
            }
        }
        // SAFETY: the caller's layout, passed on.
        unsafe { MiMalloc.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_big(layout) {
            if let Some(p) = big_blocks::alloc(layout.size(), true) {
                return p;
            }
        }
        // SAFETY: the caller's layout, passed on.
        unsafe { MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if big_blocks::owns(p) {
            big_blocks::free(p, layout.size());
        } else {
            // SAFETY: a block mimalloc made with this layout.
            unsafe { MiMalloc.dealloc(p, layout) }
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !big_blocks::owns(p) && new_size < big_blocks::MIN_SIZE {
            // SAFETY: a mimalloc block staying in mimalloc, the caller's arguments passed on.
            return unsafe { MiMalloc.realloc(p, layout, new_size) };
        }
        // Into or out of the range: a new block, the contents copied.
        // SAFETY: the caller guarantees `new_size` with the old alignment is a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a non-zero size (the caller's contract).
        let q = unsafe { self.alloc(new_layout) };
        if !q.is_null() {
            // SAFETY: both blocks are valid for the smaller size and do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                self.dealloc(p, layout);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Allocator = Allocator;

/// How long freed memory stays reserved for reuse (milliseconds).
const PURGE_DELAY_MS: std::os::raw::c_long = 1000;

/// `mi_option_purge_delay`. libmimalloc-sys does not export it; in mimalloc.h (v2 and v3) it is
/// the option declared right before `mi_option_use_numa_nodes`.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = libmimalloc_sys::mi_option_use_numa_nodes - 1;

/// `mi_option_allow_thp` (mimalloc v3, the version the crate builds): the fourth option before
/// `_mi_option_last` in mimalloc.h, as above not exported by libmimalloc-sys.
const ALLOW_THP: libmimalloc_sys::mi_option_t = libmimalloc_sys::_mi_option_last - 4;

/// `mi_option_purge_decommits` (mimalloc v3, as above): the option right before
/// `mi_option_allow_large_os_pages` (`mi_option_large_os_pages` in libmimalloc-sys).
const PURGE_DECOMMITS: libmimalloc_sys::mi_option_t = libmimalloc_sys::mi_option_large_os_pages - 1;

/// Sets the purge delay, and makes a purge hand memory back with `MADV_FREE` instead of
/// `MADV_DONTNEED`. mimalloc purges lazily, inside its next allocation after the delay, so a call
/// made after more than the delay of idle purged the previous call's buffers and then faulted
/// them straight back in, each page zeroed by the kernel: LSTM (64,128,128,256) inference after
/// 1.2 s of idle took 46-55 ms with 10,784 minor faults against 24-29 ms back to back (issue 16).
/// Pages freed with `MADV_FREE` stay mapped until the kernel needs the memory, so reusing them
/// costs no fault (the same call: 0 faults, 30-36 ms); the kernel may still reclaim them, but
/// until it does they count in the process's resident size.
///
/// Also keeps mimalloc from asking for transparent huge pages: it `madvise`s its whole arena
/// `MADV_HUGEPAGE`, so every 2 MiB region a thread's small blocks or a buffer's tail touch
/// becomes resident in full. That made a training step of LSTM (32,100,8,64) add 20 MiB of
/// resident memory for a 6 MiB tape (10.6 MiB without THP; issue 16). Only mimalloc's own
/// requests change: the process's THP setting, which NumPy and PyTorch use, stays. Called once
/// when the module loads, before the arena is reserved.
pub(crate) fn configure() {
    // SAFETY: mi_option_set only stores the value; mimalloc reads options at any time.
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, PURGE_DELAY_MS);
        libmimalloc_sys::mi_option_set(ALLOW_THP, 0);
        libmimalloc_sys::mi_option_set(PURGE_DECOMMITS, 0);
    }
}
