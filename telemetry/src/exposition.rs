//! The Prometheus text format (version 0.0.4), written family by family.

use std::fmt::Write;

#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a metric family; its samples follow.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        self
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{key}=\"{}\"", escape(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_value(value));
        self
    }

    /// One family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    pub fn finish(self) -> String {
        self.text
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_labelled_samples_in_the_text_format() {
        let mut out = Exposition::new();
        out.family("atelier_jobs", "gauge", "Jobs by state.")
            .sample("atelier_jobs", &[("state", "running")], 2.0)
            .sample("atelier_jobs", &[("state", "we\"ird")], 0.5);
        out.single("atelier_up", "gauge", "Up.", 1.0);
        assert_eq!(
            out.finish(),
            "# HELP atelier_jobs Jobs by state.\n# TYPE atelier_jobs gauge\n\
             atelier_jobs{state=\"running\"} 2\natelier_jobs{state=\"we\\\"ird\"} 0.5\n\
             # HELP atelier_up Up.\n# TYPE atelier_up gauge\natelier_up 1\n"
        );
    }
}
