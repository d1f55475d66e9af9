//! The dozen NCCL functions atelier calls, bound at run time. The torch wheel
//! ships `libnccl.so.2` and `libtorch_cuda.so` loads it, so asking the dynamic
//! loader for that soname finds the copy already in the process; nothing is
//! needed at build time, and a machine without it gets an error, not a panic.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::{Arc, OnceLock};

use libloading::Library;

use crate::error::{CollectiveError, Result};
use atelier_cuda::{open_first, Stream};

pub const UNIQUE_ID_BYTES: usize = 128;

/// `ncclUniqueId`: rank 0 makes it and every rank needs it to join.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NcclUniqueId {
    pub internal: [c_char; UNIQUE_ID_BYTES],
}

impl std::fmt::Debug for NcclUniqueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NcclUniqueId(..)")
    }
}

impl NcclUniqueId {
    pub fn to_bytes(&self) -> Vec<u8> {
        self.internal.iter().map(|&c| c as u8).collect()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != UNIQUE_ID_BYTES {
            return Err(CollectiveError::Setup(format!(
                "an NCCL unique id has {UNIQUE_ID_BYTES} bytes, got {}",
                bytes.len()
            )));
        }
        let mut internal = [0 as c_char; UNIQUE_ID_BYTES];
        for (dst, &src) in internal.iter_mut().zip(bytes) {
            *dst = src as c_char;
        }
        Ok(Self { internal })
    }
}

pub type Comm = *mut c_void;
type NcclResult = c_int;

// ncclDataType_t and ncclRedOp_t values from nccl.h.
pub const NCCL_FLOAT32: c_int = 7;
pub const NCCL_FLOAT64: c_int = 8;
pub const NCCL_SUM: c_int = 0;

type GetVersion = unsafe extern "C" fn(*mut c_int) -> NcclResult;
type GetUniqueId = unsafe extern "C" fn(*mut NcclUniqueId) -> NcclResult;
type CommInitRank = unsafe extern "C" fn(*mut Comm, c_int, NcclUniqueId, c_int) -> NcclResult;
type CommDestroy = unsafe extern "C" fn(Comm) -> NcclResult;
type CommAbort = unsafe extern "C" fn(Comm) -> NcclResult;
type CommGetAsyncError = unsafe extern "C" fn(Comm, *mut NcclResult) -> NcclResult;
type GetErrorString = unsafe extern "C" fn(NcclResult) -> *const c_char;
type AllReduce = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    c_int,
    c_int,
    Comm,
    Stream,
) -> NcclResult;
type Broadcast = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    c_int,
    c_int,
    Comm,
    Stream,
) -> NcclResult;

/// NCCL's entry points, resolved once per process.
#[derive(Debug)]
pub struct NcclLibrary {
    pub(crate) get_version: GetVersion,
    pub(crate) get_unique_id: GetUniqueId,
    pub(crate) comm_init_rank: CommInitRank,
    pub(crate) comm_destroy: CommDestroy,
    pub(crate) comm_abort: CommAbort,
    pub(crate) comm_get_async_error: CommGetAsyncError,
    pub(crate) get_error_string: GetErrorString,
    pub(crate) all_reduce: AllReduce,
    pub(crate) broadcast: Broadcast,
    path: String,
    _library: Library,
}

/// Where to look, in order: an explicit path, the soname torch loads, then
/// the unversioned development name.
fn candidates() -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(path) = std::env::var("ATELIER_NCCL_LIBRARY") {
        names.push(path);
    }
    names.extend(["libnccl.so.2".to_string(), "libnccl.so".to_string()]);
    names
}

impl NcclLibrary {
    /// Loads NCCL once; later calls share it (or the same error).
    pub fn load() -> Result<Arc<Self>> {
        static LOADED: OnceLock<std::result::Result<Arc<NcclLibrary>, String>> = OnceLock::new();
        LOADED
            .get_or_init(|| Self::open().map(Arc::new))
            .clone()
            .map_err(CollectiveError::NcclUnavailable)
    }

    fn open() -> std::result::Result<Self, String> {
        let (library, path) = open_first(
            "NCCL",
            candidates(),
            "install the torch wheel's nvidia-nccl package or set ATELIER_NCCL_LIBRARY",
        )?;
        Self::bind(library, path)
    }

    fn bind(library: Library, path: String) -> std::result::Result<Self, String> {
        fn symbol<T: Copy>(
            library: &Library,
            path: &str,
            name: &str,
        ) -> std::result::Result<T, String> {
            // SAFETY: each type above is the prototype nccl.h declares for `name`.
            unsafe { atelier_cuda::symbol(library, path, name) }
        }
        Ok(Self {
            get_version: symbol(&library, &path, "ncclGetVersion")?,
            get_unique_id: symbol(&library, &path, "ncclGetUniqueId")?,
            comm_init_rank: symbol(&library, &path, "ncclCommInitRank")?,
            comm_destroy: symbol(&library, &path, "ncclCommDestroy")?,
            comm_abort: symbol(&library, &path, "ncclCommAbort")?,
            comm_get_async_error: symbol(&library, &path, "ncclCommGetAsyncError")?,
            get_error_string: symbol(&library, &path, "ncclGetErrorString")?,
            all_reduce: symbol(&library, &path, "ncclAllReduce")?,
            broadcast: symbol(&library, &path, "ncclBroadcast")?,
            path,
            _library: library,
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// NCCL's version as a number, e.g. 22703 for 2.27.3.
    pub fn version(&self) -> Result<i32> {
        let mut version = 0;
        // SAFETY: ncclGetVersion writes one int.
        self.check("ncclGetVersion", unsafe {
            (self.get_version)(&mut version)
        })?;
        Ok(version)
    }

    /// A fresh id for a new communicator (rank 0 calls this).
    pub fn unique_id(&self) -> Result<NcclUniqueId> {
        let mut id = NcclUniqueId {
            internal: [0; UNIQUE_ID_BYTES],
        };
        // SAFETY: ncclGetUniqueId fills the 128-byte struct.
        self.check("ncclGetUniqueId", unsafe { (self.get_unique_id)(&mut id) })?;
        Ok(id)
    }

    pub(crate) fn check(&self, call: &'static str, code: NcclResult) -> Result<()> {
        if code == 0 {
            return Ok(());
        }
        Err(CollectiveError::Nccl {
            call,
            code,
            message: self.error_string(code),
        })
    }

    pub(crate) fn error_string(&self, code: NcclResult) -> String {
        // SAFETY: ncclGetErrorString returns a static C string for any code.
        let text = unsafe { (self.get_error_string)(code) };
        if text.is_null() {
            return format!("error {code}");
        }
        // SAFETY: non-null, NUL-terminated, static.
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    }
}
