//! Prometheus's text exposition format (version 0.0.4): a `# HELP` and
//! `# TYPE` line per family, then its samples.

use std::fmt::Write;

use super::histogram::HistogramSnapshot;

/// The content type of the format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The text of a scrape, built family by family.
#[derive(Debug, Default)]
pub(crate) struct Exposition {
    text: String,
    /// The family being written: its samples carry its name.
    family: String,
}

impl Exposition {
    /// Starts a family: its help and type lines.
    pub(crate) fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        name.clone_into(&mut self.family);
        self
    }

    /// A sample of the family just started.
    pub(crate) fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        let name = std::mem::take(&mut self.family);
        self.line(&name, labels, value);
        self.family = name;
        self
    }

    /// A histogram's buckets, sum and count, in the family just started.
    pub(crate) fn histogram(&mut self, labels: &[(&str, &str)], histogram: &HistogramSnapshot) {
        let name = self.family.clone();
        for (bound, count) in &histogram.buckets {
            let le = if bound.is_infinite() { "+Inf".to_owned() } else { bound.to_string() };
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.line(&format!("{name}_bucket"), &with_le, count_value(*count));
        }
        self.line(&format!("{name}_sum"), labels, histogram.sum);
        self.line(&format!("{name}_count"), labels, count_value(histogram.count));
    }

    /// The text.
    pub(crate) fn finish(self) -> String {
        self.text
    }

    fn line(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            let labels: Vec<String> =
                labels.iter().map(|(key, value)| format!("{key}=\"{}\"", escape(value))).collect();
            let _ = write!(self.text, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(self.text, " {}", format_value(value));
    }
}

/// A count as a sample value (exact below 2^53, plenty for a counter).
#[allow(clippy::cast_precision_loss)]
pub(crate) fn count_value(count: u64) -> f64 {
    count as f64
}

fn format_value(value: f64) -> String {
    if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else if value.is_nan() {
        "NaN".to_owned()
    } else {
        value.to_string()
    }
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_histograms_render_in_the_text_format() {
        let mut out = Exposition::default();
        out.family("mesh_things_total", Kind::Counter, "Things.").sample(&[("kind", "a\"b")], 3.0);
        let histogram = HistogramSnapshot { buckets: vec![(0.5, 1), (f64::INFINITY, 2)], sum: 1.25, count: 2 };
        out.family("mesh_wait_seconds", Kind::Histogram, "Waits.").histogram(&[], &histogram);
        assert_eq!(
            out.finish(),
            "# HELP mesh_things_total Things.\n# TYPE mesh_things_total counter\nmesh_things_total{kind=\"a\\\"b\"} 3\n\
             # HELP mesh_wait_seconds Waits.\n# TYPE mesh_wait_seconds histogram\n\
             mesh_wait_seconds_bucket{le=\"0.5\"} 1\nmesh_wait_seconds_bucket{le=\"+Inf\"} 2\n\
             mesh_wait_seconds_sum 1.25\nmesh_wait_seconds_count 2\n"
        );
    }
}
