//! `poolbill-alloc`: the global allocator of the `poolbill` and `poolbill-bench` binaries.
//! The libraries leave the choice to whoever embeds them.
//!
//! It is jemalloc (glibc's allocator kept what long runs freed in its per-thread arenas and
//! spent a quarter of the group commit's samples in `malloc` and `free`: README, Performance),
//! with one change: a large zeroed block asked for right after a block of its size was freed is
//! taken like any other block and zeroed in place. Its options are compiled in from the
//! workspace's `.cargo/config.toml` (freed pages go back to the kernel after 1 s, not 10).
//!
//! Why: jemalloc zeroes a reused large block by handing its pages back to the kernel
//! (`MADV_DONTNEED`), so that each page faults again at its first touch. sled 0.34.7, at each
//! open, writes a freshly zeroed 512 KiB buffer over every free segment of its file, one after
//! the other; at ten million events that is 66 segments, and `explain` as a process spent its
//! time in those 8,000 extra page faults (48 ms against 31 ms with glibc, whose reused blocks are
//! zeroed by `memset`). jemalloc hands the block just freed back, its pages still mapped, and
//! writing zeroes over them costs microseconds. Other large zeroed blocks still come from
//! `calloc`: sled's metrics take thirty of 512 KiB that are never freed and mostly never
//! touched, which pages fresh from the kernel keep free of cost.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};

#[cfg(target_env = "msvc")]
use std::alloc::System as Inner;
#[cfg(not(target_env = "msvc"))]
use tikv_jemallocator::Jemalloc as Inner;

/// Zeroed blocks of this size and up are zeroed in place: jemalloc's first large size class
/// (smaller ones come from slabs that it zeroes with `memset` itself).
const ZERO_IN_PLACE_FROM: usize = 16 << 10;
/// … up to this size: a larger block is likely fresh from the kernel, already zero, and may be
/// touched only in part, so it is left to the allocator's `calloc`.
const ZERO_IN_PLACE_UP_TO: usize = 8 << 20;

/// The size of the last large block freed (0: taken, or none yet). Shared by all threads: a race
/// costs only a block zeroed the slower way, never a block left unzeroed.
static LAST_FREED_LARGE: AtomicUsize = AtomicUsize::new(0);

/// Whether a block of `size` bytes is large enough, and not too large, to be zeroed in place.
fn zero_in_place(size: usize) -> bool {
    (ZERO_IN_PLACE_FROM..=ZERO_IN_PLACE_UP_TO).contains(&size)
}

/// Whether a zeroed block of `size` bytes comes right after the free of a large block of its
/// size (which jemalloc hands back, its pages mapped). Takes the record either way.
fn follows_a_free_of_its_size(last_freed: &AtomicUsize, size: usize) -> bool {
    zero_in_place(size) && last_freed.swap(0, Ordering::Relaxed) == size
}

/// jemalloc (the system's allocator on MSVC), zeroing large blocks in place.
pub struct Allocator;

// SAFETY: every method hands the caller's layout and pointer to the inner allocator unchanged;
// `alloc_zeroed` writes zeroes only over the `layout.size()` bytes of a block it was just given,
// and returns a zeroed block whichever way it takes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { Inner.alloc(layout) }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if zero_in_place(layout.size()) {
            LAST_FREED_LARGE.store(layout.size(), Ordering::Relaxed);
        }
        unsafe { Inner.dealloc(block, layout) }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe { Inner.realloc(block, layout, new_size) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !follows_a_free_of_its_size(&LAST_FREED_LARGE, layout.size()) {
            return unsafe { Inner.alloc_zeroed(layout) };
        }
        let block = unsafe { Inner.alloc(layout) };
        if !block.is_null() {
            unsafe { block.write_bytes(0, layout.size()) };
        }
        block
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(unsafe_code)]
    fn zeroed_after_dirty(size: usize) -> bool {
        let layout = Layout::from_size_align(size, 8).unwrap();
        unsafe {
            // A block written all over and freed, so that the next one of its size may reuse it.
            let dirty = Allocator.alloc(layout);
            assert!(!dirty.is_null());
            dirty.write_bytes(0xA5, size);
            Allocator.dealloc(dirty, layout);
            let block = Allocator.alloc_zeroed(layout);
            assert!(!block.is_null());
            let zeroed = std::slice::from_raw_parts(block, size).iter().all(|&b| b == 0);
            Allocator.dealloc(block, layout);
            zeroed
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_below_within_and_above_the_in_place_range() {
        for size in [1, 4096, ZERO_IN_PLACE_FROM - 1, ZERO_IN_PLACE_FROM, 512 << 10, ZERO_IN_PLACE_UP_TO, ZERO_IN_PLACE_UP_TO + 1, 32 << 20] {
            assert!(zeroed_after_dirty(size), "a zeroed block of {size} bytes");
        }
    }

    #[test]
    fn only_large_blocks_up_to_the_bound_are_zeroed_in_place() {
        let table = [
            (0, false),
            (ZERO_IN_PLACE_FROM - 1, false),
            (ZERO_IN_PLACE_FROM, true),
            (512 << 10, true),
            (ZERO_IN_PLACE_UP_TO, true),
            (ZERO_IN_PLACE_UP_TO + 1, false),
        ];
        for (size, expected) in table {
            assert_eq!(zero_in_place(size), expected, "{size} bytes");
        }
    }

    #[test]
    fn a_zeroed_block_is_zeroed_in_place_only_right_after_a_free_of_its_size() {
        let last_freed = AtomicUsize::new(0);
        assert!(!follows_a_free_of_its_size(&last_freed, 512 << 10), "nothing freed yet");
        last_freed.store(512 << 10, Ordering::Relaxed);
        assert!(!follows_a_free_of_its_size(&last_freed, 256 << 10), "another size");
        last_freed.store(512 << 10, Ordering::Relaxed);
        assert!(follows_a_free_of_its_size(&last_freed, 512 << 10));
        assert!(!follows_a_free_of_its_size(&last_freed, 512 << 10), "the freed block is taken once");
        last_freed.store(4 << 10, Ordering::Relaxed);
        assert!(!follows_a_free_of_its_size(&last_freed, 4 << 10), "small blocks are left to the allocator");
    }

    #[test]
    #[allow(unsafe_code)]
    fn a_reallocated_block_keeps_its_bytes() {
        let layout = Layout::from_size_align(100_000, 8).unwrap();
        unsafe {
            let block = Allocator.alloc_zeroed(layout);
            assert!(!block.is_null());
            for i in 0..layout.size() {
                *block.add(i) = i as u8;
            }
            let grown = Allocator.realloc(block, layout, 3 << 20);
            assert!(!grown.is_null());
            assert!((0..layout.size()).all(|i| *grown.add(i) == i as u8));
            Allocator.dealloc(grown, Layout::from_size_align(3 << 20, 8).unwrap());
        }
    }
}
