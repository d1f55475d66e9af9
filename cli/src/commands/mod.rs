pub mod catalog;
pub mod local;
pub mod pipeline;
pub mod plot;
pub mod tag;
pub mod test;
pub mod train;
