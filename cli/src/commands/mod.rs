pub mod catalog;
pub mod cluster;
pub mod doctor;
pub mod jobs;
pub mod local;
pub mod local_cluster;
pub mod pipeline;
pub mod plot;
pub mod score_line;
pub mod similar;
pub mod stages;
pub mod tag;
pub mod tag_accuracy;
pub mod test;
pub mod train;
pub mod watch;

/// Every core of this machine, the default for decode threads.
pub fn all_cores() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}
