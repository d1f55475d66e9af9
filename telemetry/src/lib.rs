//! Prometheus metrics for the coordinator and the workers: counters and
//! gauges in a small registry, the text exposition format, and a GET
//! /metrics endpoint on an already-bound listener.

mod exposition;
mod registry;
mod server;

pub use exposition::Exposition;
pub use registry::{Counter, Gauge, Registry};
pub use server::{serve_metrics, Render};
