//! What every atelier binary sets up before its real work: jemalloc as the
//! process's allocator, the log subscriber, the I/O runtime, its listeners
//! and the shutdown signal. Shared
//! by `atelier` and the libtorch-free `atelier-coordinator`, so the two
//! servers start, log and stop alike.

pub mod listen;
pub mod logging;
pub mod memory;
pub mod runtime;
pub mod signal;
