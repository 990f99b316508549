//! A builder for one scrape's worth of Prometheus text: each metric with its `# HELP` and
//! `# TYPE` lines.

use std::fmt::Write as _;

use crate::Histogram;

/// One scrape's text, built metric by metric.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// A gauge without labels.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) -> &mut Self {
        self.header(name, "gauge", help);
        let _ = writeln!(self.out, "{name} {value}");
        self
    }

    /// A counter without labels (`name` should end in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> &mut Self {
        self.header(name, "counter", help);
        let _ = writeln!(self.out, "{name} {value}");
        self
    }

    /// A counter with one label, one series per `(label value, count)`.
    pub fn labelled_counter<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        series: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> &mut Self {
        self.header(name, "counter", help);
        for (value, n) in series {
            let _ = writeln!(self.out, "{name}{{{label}=\"{value}\"}} {n}");
        }
        self
    }

    /// A histogram without labels.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) -> &mut Self {
        self.header(name, "histogram", help);
        h.render(&mut self.out, name, "");
        self
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_help_type_and_series() {
        let mut e = Exposition::new();
        e.gauge("a_ratio", "A ratio.", 0.5)
            .counter("b_total", "Bs.", 3)
            .labelled_counter("c_total", "Cs.", "outcome", [("ok", 2), ("error", 1)]);
        let text = e.finish();
        assert_eq!(
            text,
            "# HELP a_ratio A ratio.\n# TYPE a_ratio gauge\na_ratio 0.5\n\
             # HELP b_total Bs.\n# TYPE b_total counter\nb_total 3\n\
             # HELP c_total Cs.\n# TYPE c_total counter\n\
             c_total{outcome=\"ok\"} 2\nc_total{outcome=\"error\"} 1\n"
        );
    }
}
