//! The coordinator: plans catalogue-wide jobs into shards and leases them to
//! workers over gRPC. Not built yet; see the README's roadmap.

pub use atelier_proto::PROTOCOL_VERSION;
