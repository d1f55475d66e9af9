//! The worker: takes shards from the coordinator and runs the models on them.
//! Not built yet; see the README's roadmap.

pub use atelier_proto::PROTOCOL_VERSION;
