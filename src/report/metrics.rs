//! Writing the Prometheus text exposition format (version 0.0.4): one
//! `# HELP` and `# TYPE` line per family, then its samples, label values
//! escaped. Small enough to own; the integration tests check the output
//! with Prometheus's own Python parser.

use std::fmt::Write as _;

/// The kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets when the daemon restarts).
    Counter,
    /// Any value.
    Gauge,
}

/// A metrics page being written.
#[derive(Debug, Default)]
pub struct MetricsText {
    text: String,
}

impl MetricsText {
    /// An empty page.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family: its help text and kind. Counter names end in `_total`.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        self
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", number(value));
        self
    }

    /// The finished page.
    pub fn finish(self) -> String {
        self.text
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

fn number(value: f64) -> String {
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
    fn families_samples_and_escaping() {
        let mut page = MetricsText::new();
        page.family("x_total", Kind::Counter, "Things.\nMore")
            .sample("x_total", &[("device", "a\"b\\c\nd")], 3.0)
            .sample("x_total", &[], 0.5);
        page.family("y", Kind::Gauge, "Y.")
            .sample("y", &[], f64::INFINITY);
        assert_eq!(
            page.finish(),
            "# HELP x_total Things.\\nMore\n# TYPE x_total counter\n\
             x_total{device=\"a\\\"b\\\\c\\nd\"} 3\nx_total 0.5\n\
             # HELP y Y.\n# TYPE y gauge\ny +Inf\n"
        );
    }
}
