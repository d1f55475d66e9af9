//! Libraries bound at run time rather than link time (NCCL here, nvJPEG in the
//! worker): nothing of CUDA is needed to build, and a machine without the
//! library gets an error naming every place tried, never a panic.

use libloading::Library;

/// The first of `candidates` that loads, with the name it loaded under; else
/// an error listing every attempt, then `hint`.
pub fn open_first(
    what: &str,
    candidates: Vec<String>,
    hint: &str,
) -> Result<(Library, String), String> {
    let mut tried = Vec::new();
    for name in candidates {
        // SAFETY: the libraries loaded this way (NCCL, nvJPEG) run only
        // side-effect free initialisers.
        match unsafe { Library::new(&name) } {
            Ok(library) => return Ok((library, name)),
            Err(e) => tried.push(format!("{name}: {e}")),
        }
    }
    Err(format!(
        "no {what} library found (tried {}); {hint}",
        tried.join("; ")
    ))
}

/// The function `name` of `library` (loaded from `path`).
///
/// # Safety
/// `T` must be the function's C prototype.
pub unsafe fn symbol<T: Copy>(library: &Library, path: &str, name: &str) -> Result<T, String> {
    // SAFETY: the caller vouches for `T`.
    unsafe { library.get::<T>(name.as_bytes()) }
        .map(|s| *s)
        .map_err(|e| format!("{path} lacks {name}: {e}"))
}

/// The function `name` as already loaded into this process (the CUDA
/// runtime's, which libtorch brought in), if it is.
///
/// # Safety
/// `T` must be the function's C prototype.
pub unsafe fn in_process<T: Copy>(name: &str) -> Option<T> {
    // SAFETY: looking a symbol up in the running process has no side
    // effects; the caller vouches for `T`.
    unsafe { libloading::os::unix::Library::this().get::<T>(name.as_bytes()) }
        .ok()
        .map(|s| *s)
}
