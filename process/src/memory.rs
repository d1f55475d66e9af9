//! How atelier's processes use the C heap.
//!
//! Every binary that links this crate uses jemalloc as its `malloc`, for
//! libtorch's tensors as much as for Rust's allocations (the
//! `unprefixed_malloc_on_supported_platforms` build of tikv-jemalloc-sys).
//! glibc's malloc serves every block above its mmap threshold (32 MB at
//! most) with a fresh `mmap` and unmaps it on free; a batch's activations are
//! such blocks, so every step faulted in and zeroed hundreds of megabytes
//! again (ResNet-50 at 224 px, batch 32, on 2 cores spent two thirds of its
//! time in the kernel). Keeping glibc's freed blocks in its heap fixed the
//! speed but fragmented: tagging peaked 40% above glibc's defaults. jemalloc
//! reuses freed extents by size class, which keeps the peak near what is
//! alive; PyTorch's CPU tuning guide recommends it for the same reasons
//! (BENCHMARKS.md has the figures).

use std::ffi::CStr;

/// Compute processes keep freed pages for reuse rather than returning them
/// to the kernel: jemalloc otherwise purges them after 10 s of decay, and at
/// once for blocks over 8 MiB (its oversize arena), which brings the faults
/// back. Call before threads start, so that every arena is made with the
/// setting. Does nothing when `ATELIER_MALLOC_DEFAULT` is set. Returns
/// whether the setting took.
pub fn keep_freed_memory() -> bool {
    if std::env::var_os("ATELIER_MALLOC_DEFAULT").is_some() {
        return false;
    }
    apply()
}

#[cfg(all(target_os = "linux", not(target_env = "musl")))]
fn apply() -> bool {
    const NEVER: isize = -1;
    // The default for arenas made from now on (the oversize arena, those of
    // new threads) and the arenas made already.
    let mut kept = set_isize(c"arenas.dirty_decay_ms", NEVER);
    for index in 0..arena_count() {
        let name = format!("arena.{index}.dirty_decay_ms\0");
        if let Ok(name) = CStr::from_bytes_with_nul(name.as_bytes()) {
            // Indices of arenas not made yet refuse; the default covers them.
            let _ = set_isize(name, NEVER);
        }
    }
    kept &= read::<isize>(c"arenas.dirty_decay_ms") == Some(NEVER);
    kept
}

#[cfg(not(all(target_os = "linux", not(target_env = "musl"))))]
fn apply() -> bool {
    false
}

fn arena_count() -> u32 {
    read(c"arenas.narenas").unwrap_or(0)
}

fn set_isize(name: &CStr, value: isize) -> bool {
    let mut value = value;
    // SAFETY: the decay settings are ssize_t; new points at one, with its size.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            (&mut value as *mut isize).cast(),
            std::mem::size_of::<isize>(),
        ) == 0
    }
}

/// A jemalloc setting or statistic of type `T` (`arenas.narenas` is an
/// unsigned int, the decay settings ssize_t).
fn read<T: Copy + Default>(name: &CStr) -> Option<T> {
    let mut value = T::default();
    let mut len = std::mem::size_of::<T>();
    // SAFETY: old points at a `T` with its size; mallctl refuses (non-zero)
    // a size that does not match the setting's type.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            (&mut value as *mut T).cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    (rc == 0).then_some(value)
}

#[cfg(all(test, target_os = "linux", not(target_env = "musl")))]
mod tests {
    #[test]
    fn shared_libraries_get_jemalloc_as_malloc() {
        // libtorch is a shared library: its `malloc` binds to the first
        // definition the dynamic linker finds, which must be jemalloc's in
        // the executable, ahead of glibc's.
        // SAFETY: dlsym only looks symbols up.
        let (first, next) = unsafe {
            (
                libc::dlsym(libc::RTLD_DEFAULT, c"malloc".as_ptr()),
                libc::dlsym(libc::RTLD_NEXT, c"malloc".as_ptr()),
            )
        };
        assert_eq!(
            first as usize,
            tikv_jemalloc_sys::malloc as *const () as usize
        );
        assert!(!next.is_null(), "glibc's malloc is further down");
        assert_ne!(first, next);
    }

    #[test]
    fn freed_memory_is_kept_once_applied() {
        assert!(super::apply());
        assert_eq!(super::read::<isize>(c"arenas.dirty_decay_ms"), Some(-1));
        assert_eq!(super::read::<isize>(c"arena.0.dirty_decay_ms"), Some(-1));
    }
}
