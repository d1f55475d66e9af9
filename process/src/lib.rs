//! What every atelier binary sets up before its real work: jemalloc as the
//! process's allocator, the log subscriber, the I/O runtime, its listeners
//! and the shutdown signal. Shared
//! by `atelier` and the libtorch-free `atelier-coordinator`, so the two
//! servers start, log and stop alike.

mod listen;
mod logging;
mod memory;
mod runtime;
mod signal;

pub use listen::bind_announced;
pub use logging::{LogArgs, LogFormat};
pub use memory::keep_freed_memory;
pub use runtime::io_runtime;
pub use signal::shutdown_signal;
