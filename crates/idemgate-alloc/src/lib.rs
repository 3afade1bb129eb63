//! The gateway's global allocator: mimalloc, asked through `mi_malloc` for every allocation
//! whose alignment plain malloc already guarantees.
//!
//! The `mimalloc` crate sends every allocation through `mi_malloc_aligned`. In mimalloc 3 that
//! takes the fast path only while the size class's free list is non-empty; otherwise it goes
//! through a generic aligned path (and, for small blocks that come out misaligned, an
//! over-allocation) that callgrind counted at ~180 instructions a call on the gateway's replay
//! path, where `mi_malloc` refills the list in its ordinary slow path. Rust asks for alignment 8
//! or less almost always; `mi_malloc` returns blocks aligned to at least 8 bytes, so those go
//! straight to it, and only larger alignments use the aligned entry points.

#![allow(unsafe_code)]

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;

use libmimalloc_sys as ffi;

/// Alignment every `mi_malloc` block has, whatever its size (its smallest size class is 8 bytes).
const PLAIN_ALIGN: usize = 8;

/// mimalloc as the global allocator (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct MiMalloc;

// SAFETY: every method forwards to the mimalloc entry point for the same operation, with an
// alignment argument wherever the layout asks for more than `mi_malloc` guarantees; mimalloc's
// `mi_free`/`mi_realloc*` accept blocks from any of its allocation functions.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= PLAIN_ALIGN {
                ffi::mi_malloc(layout.size()).cast()
            } else {
                ffi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= PLAIN_ALIGN {
                ffi::mi_zalloc(layout.size()).cast()
            } else {
                ffi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: see the impl.
        unsafe { ffi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= PLAIN_ALIGN {
                ffi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                ffi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_layout_gets_its_alignment_and_keeps_its_bytes() {
        let a = MiMalloc;
        for align in [1usize, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [1usize, 7, 8, 9, 24, 48, 100, 1000, 5000, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero-sized layout; each pointer is freed once with its layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xab, size);
                    let q = a.realloc(p, layout, size * 3);
                    assert_eq!(q as usize % align, 0, "realloc size {size} align {align}");
                    assert!((0..size).all(|i| *q.add(i) == 0xab));
                    a.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
