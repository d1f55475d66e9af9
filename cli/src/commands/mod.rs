pub mod catalog;
pub mod local;
pub mod pipeline;
