//! How processes that run models use the C heap.
//!
//! glibc's malloc serves every block above its mmap threshold (32 MB at most)
//! with a fresh `mmap` and unmaps it on free. A batch's activations are such
//! blocks, so every step faulted in and zeroed hundreds of megabytes again:
//! ResNet-50 at 224 px, batch 32, on 2 cores spent two thirds of its time in
//! the kernel (BENCHMARKS.md). Keeping freed memory in the heap lets the next
//! step reuse it; the price is that resident memory stays at its peak.
//! Threads other than the main one allocate from arenas of at most 64 MB,
//! which hand larger blocks to mmap whatever the settings, so there is one
//! arena, the main one; call this before any thread starts.

/// Turns off mmap for large blocks, trimming of the heap and per-thread
/// arenas, unless `ATELIER_MALLOC_DEFAULT` is set. Returns whether the
/// settings took.
pub fn keep_freed_memory() -> bool {
    if std::env::var_os("ATELIER_MALLOC_DEFAULT").is_some() {
        return false;
    }
    apply()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> bool {
    // SAFETY: mallopt only changes allocator parameters; blocks already
    // handed out stay valid whichever way they were allocated.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
            && libc::mallopt(libc::M_ARENA_MAX, 1) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> bool {
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    #[test]
    fn large_blocks_come_from_the_heap_once_applied() {
        assert!(super::apply());
        // A 4 MB block, above the default mmap threshold, no longer gets a
        // mapping of its own (glibc counts those in `hblkhd`). (Blocks over
        // 64 MB on a thread with its own arena still would: the single
        // arena is for threads started afterwards.)
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        let mapped = || unsafe { libc::mallinfo2() }.hblkhd;
        let before = mapped();
        let block = vec![1u8; 4 << 20];
        assert!(mapped() < before + (4 << 20), "{} -> {}", before, mapped());
        drop(block);
    }
}
