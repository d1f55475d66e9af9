//! The async runtime every binary serves its I/O on.

/// A multi-threaded tokio runtime whose threads are named `atelier-io`
/// (profiles and the scale benchmark tell them from the compute threads by
/// that name).
pub fn io_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("atelier-io")
        .build()
}
