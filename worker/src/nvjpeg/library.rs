//! The nvJPEG functions atelier calls, bound at run time as NCCL is: nothing
//! at build time, and a machine without the library or a GPU gets an error,
//! never a panic. torchvision's wheel ships the library under a hashed name
//! (`torchvision.libs/libnvjpeg.<hash>.so.13`), so besides the sonames the
//! search looks beside the libtorch this process loaded.

use std::ffi::{c_int, c_uchar, c_uint, c_void};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use atelier_cuda::open_first;
use libloading::Library;

pub type Handle = *mut c_void;
pub type State = *mut c_void;
pub type Stream = *mut c_void;
pub type Status = c_int;

pub const STATUS_SUCCESS: Status = 0;
/// `nvjpegBackend_t`: the GPUs' JPEG engines (A100, H100/H200), and the
/// default (hybrid CPU Huffman, GPU transform) everywhere else.
pub const BACKEND_DEFAULT: c_int = 0;
pub const BACKEND_HARDWARE: c_int = 3;
/// `nvjpegOutputFormat_t` NVJPEG_OUTPUT_RGBI: interleaved RGB in channel 0.
pub const OUTPUT_RGBI: c_int = 5;
const MAX_COMPONENT: usize = 4;

/// `nvjpegImage_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Image {
    pub channel: [*mut c_uchar; MAX_COMPONENT],
    pub pitch: [usize; MAX_COMPONENT],
}

type CreateEx =
    unsafe extern "C" fn(c_int, *mut c_void, *mut c_void, c_uint, *mut Handle) -> Status;
type Destroy = unsafe extern "C" fn(Handle) -> Status;
type StateCreate = unsafe extern "C" fn(Handle, *mut State) -> Status;
type StateDestroy = unsafe extern "C" fn(State) -> Status;
type GetImageInfo = unsafe extern "C" fn(
    Handle,
    *const c_uchar,
    usize,
    *mut c_int,
    *mut c_int,
    *mut c_int,
    *mut c_int,
) -> Status;
type Decode =
    unsafe extern "C" fn(Handle, State, *const c_uchar, usize, c_int, *mut Image, Stream) -> Status;
type DecodeBatchedInitialize = unsafe extern "C" fn(Handle, State, c_int, c_int, c_int) -> Status;
type DecodeBatched = unsafe extern "C" fn(
    Handle,
    State,
    *const *const c_uchar,
    *const usize,
    *mut Image,
    Stream,
) -> Status;

/// nvJPEG's entry points, resolved once per process.
#[derive(Debug)]
pub struct NvJpegLibrary {
    pub(crate) create_ex: CreateEx,
    pub(crate) destroy: Destroy,
    pub(crate) state_create: StateCreate,
    pub(crate) state_destroy: StateDestroy,
    pub(crate) get_image_info: GetImageInfo,
    pub(crate) decode: Decode,
    pub(crate) decode_batched_initialize: DecodeBatchedInitialize,
    pub(crate) decode_batched: DecodeBatched,
    path: String,
    _library: Library,
}

impl NvJpegLibrary {
    /// Loads nvJPEG once; later calls share it (or the same error).
    pub fn load() -> Result<Arc<Self>, String> {
        static LOADED: OnceLock<Result<Arc<NvJpegLibrary>, String>> = OnceLock::new();
        LOADED.get_or_init(|| Self::open().map(Arc::new)).clone()
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    fn open() -> Result<Self, String> {
        let (library, path) = open_first(
            "nvJPEG",
            candidates(),
            "install torchvision or the nvidia-nvjpeg wheel beside torch, or set ATELIER_NVJPEG_LIBRARY",
        )?;
        Self::bind(library, path)
    }

    fn bind(library: Library, path: String) -> Result<Self, String> {
        fn symbol<T: Copy>(library: &Library, path: &str, name: &str) -> Result<T, String> {
            // SAFETY: each type above is the prototype nvjpeg.h declares for `name`.
            unsafe { atelier_cuda::symbol(library, path, name) }
        }
        Ok(Self {
            create_ex: symbol(&library, &path, "nvjpegCreateEx")?,
            destroy: symbol(&library, &path, "nvjpegDestroy")?,
            state_create: symbol(&library, &path, "nvjpegJpegStateCreate")?,
            state_destroy: symbol(&library, &path, "nvjpegJpegStateDestroy")?,
            get_image_info: symbol(&library, &path, "nvjpegGetImageInfo")?,
            decode: symbol(&library, &path, "nvjpegDecode")?,
            decode_batched_initialize: symbol(&library, &path, "nvjpegDecodeBatchedInitialize")?,
            decode_batched: symbol(&library, &path, "nvjpegDecodeBatched")?,
            path,
            _library: library,
        })
    }
}

/// `nvjpegStatus_t` by name, for error messages.
pub fn status_name(status: Status) -> &'static str {
    match status {
        0 => "NVJPEG_STATUS_SUCCESS",
        1 => "NVJPEG_STATUS_NOT_INITIALIZED",
        2 => "NVJPEG_STATUS_INVALID_PARAMETER",
        3 => "NVJPEG_STATUS_BAD_JPEG",
        4 => "NVJPEG_STATUS_JPEG_NOT_SUPPORTED",
        5 => "NVJPEG_STATUS_ALLOCATOR_FAILURE",
        6 => "NVJPEG_STATUS_EXECUTION_FAILED",
        7 => "NVJPEG_STATUS_ARCH_MISMATCH",
        8 => "NVJPEG_STATUS_INTERNAL_ERROR",
        9 => "NVJPEG_STATUS_IMPLEMENTATION_NOT_SUPPORTED",
        10 => "NVJPEG_STATUS_INCOMPLETE_BITSTREAM",
        _ => "an unknown nvJPEG status",
    }
}

/// Where to look, in order: an explicit path, the sonames of the CUDA
/// toolkit and the nvidia-nvjpeg wheel, then the wheels beside libtorch.
fn candidates() -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(path) = std::env::var("ATELIER_NVJPEG_LIBRARY") {
        names.push(path);
    }
    names.extend(["libnvjpeg.so.13", "libnvjpeg.so.12", "libnvjpeg.so"].map(String::from));
    if let Some(site_packages) = torch_site_packages() {
        for dir in ["torchvision.libs", "nvidia/cu13/lib", "nvidia/nvjpeg/lib"] {
            names.extend(nvjpeg_files(&site_packages.join(dir)));
        }
    }
    names
}

/// The `site-packages` holding the libtorch this process mapped.
fn torch_site_packages() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let library = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.ends_with("/torch/lib/libtorch_cpu.so"))?;
    Path::new(library).ancestors().nth(3).map(Path::to_path_buf)
}

fn nvjpeg_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("libnvjpeg") && name.contains(".so"))
        })
        .map(|path| path.display().to_string())
        .collect();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Binding needs no GPU: every function atelier calls resolves in the
    /// copy torchvision's wheel ships beside torch (setup.sh installs it).
    #[test]
    fn the_copy_beside_torch_is_found_and_binds() {
        let site_packages = torch_site_packages().expect("this test binary maps libtorch");
        if nvjpeg_files(&site_packages.join("torchvision.libs")).is_empty() {
            eprintln!("no torchvision.libs/libnvjpeg beside torch; nothing to bind");
            return;
        }
        let library = NvJpegLibrary::load().unwrap();
        assert!(library.path().contains("libnvjpeg"), "{}", library.path());
    }
}
