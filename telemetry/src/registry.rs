//! Counters and gauges that hot paths update with one atomic operation; the
//! registry renders them when scraped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::Exposition;

/// An f64 in an atomic, stored as its bits.
#[derive(Debug, Default)]
struct AtomicF64(AtomicU64);

impl AtomicF64 {
    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }

    fn add(&self, delta: f64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + delta).to_bits())
            });
    }
}

/// Only goes up.
#[derive(Debug, Clone)]
pub struct Counter(Arc<AtomicF64>);

impl Counter {
    pub fn inc(&self) {
        self.0.add(1.0);
    }

    pub fn add(&self, delta: f64) {
        if delta > 0.0 {
            self.0.add(delta);
        }
    }
}

#[derive(Debug, Clone)]
pub struct Gauge(Arc<AtomicF64>);

impl Gauge {
    pub fn set(&self, value: f64) {
        self.0.set(value);
    }

    /// Moves the gauge up or down (several lanes share one busy gauge).
    pub fn add(&self, delta: f64) {
        self.0.add(delta);
    }
}

#[derive(Debug)]
struct Series {
    name: String,
    kind: &'static str,
    help: String,
    labels: Vec<(String, String)>,
    value: Arc<AtomicF64>,
}

#[derive(Debug, Default)]
pub struct Registry {
    series: Mutex<Vec<Series>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    fn register(
        &self,
        name: &str,
        kind: &'static str,
        help: &str,
        labels: &[(&str, &str)],
    ) -> Arc<AtomicF64> {
        let value = Arc::new(AtomicF64::default());
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        series.push(Series {
            name: name.to_string(),
            kind,
            help: help.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value: Arc::clone(&value),
        });
        value
    }

    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        Counter(self.register(name, "counter", help, labels))
    }

    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        Gauge(self.register(name, "gauge", help, labels))
    }

    /// Appends every registered series, grouped by name.
    pub fn render_into(&self, out: &mut Exposition) {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<&str> = Vec::new();
        for s in series.iter() {
            if !names.contains(&s.name.as_str()) {
                names.push(&s.name);
            }
        }
        for name in names {
            let members: Vec<&Series> = series.iter().filter(|s| s.name == name).collect();
            out.family(name, members[0].kind, &members[0].help);
            for s in members {
                let labels: Vec<(&str, &str)> = s
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                out.sample(name, &labels, s.value.get());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_only_go_up_and_render_grouped() {
        let registry = Registry::new();
        let done = registry.counter("items_total", "Items.", &[("outcome", "ok")]);
        let failed = registry.counter("items_total", "Items.", &[("outcome", "error")]);
        let memory = registry.gauge("memory_bytes", "Memory.", &[]);
        done.add(3.0);
        done.add(-1.0);
        failed.inc();
        memory.set(42.0);
        let mut out = Exposition::new();
        registry.render_into(&mut out);
        let text = out.finish();
        assert!(
            text.contains("items_total{outcome=\"ok\"} 3\nitems_total{outcome=\"error\"} 1\n"),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE items_total counter").count(), 1);
        assert!(text.contains("memory_bytes 42\n"));
    }
}
