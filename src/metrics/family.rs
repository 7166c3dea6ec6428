//! Metric families built by hand at scrape time, written straight as text.
//!
//! Unit, host and GPU series exist only while their subject does (a unit
//! removed by a reload, a GPU without a fan), so they are not kept in
//! registered `GaugeVec`s that would have to be pruned: each scrape builds
//! them fresh from what it read, and an absent reading is simply no series.
//!
//! Each series goes into the family's text as it is added (issue 15: a
//! scrape of 100 units built ~2,000 protobuf metrics, each with its label
//! strings, only to encode them as text and drop them).

use std::fmt::Write as _;

use prometheus::proto::MetricFamily;
use prometheus::TextEncoder;

/// One family in the text exposition format, ready to be sorted by name
/// with the others and concatenated.
pub struct Written {
    name: String,
    pub text: String,
}

impl Written {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A registry's family (its histograms and counters), encoded by the prometheus crate.
    pub fn encoded(family: &MetricFamily) -> prometheus::Result<Written> {
        let mut text = String::new();
        TextEncoder::new().encode_utf8(std::slice::from_ref(family), &mut text)?;
        Ok(Written { name: family.name().to_string(), text })
    }
}

/// One metric family being filled during a scrape.
pub struct Family {
    name: String,
    /// `# HELP` and `# TYPE` lines.
    head: String,
    /// One line per series.
    body: String,
}

impl Family {
    pub fn gauge(name: &str, help: &str) -> Family {
        Family::new(name, help, "gauge")
    }

    pub fn counter(name: &str, help: &str) -> Family {
        Family::new(name, help, "counter")
    }

    fn new(name: &str, help: &str, kind: &str) -> Family {
        let mut head = String::with_capacity(name.len() * 2 + help.len() + 24);
        head.push_str("# HELP ");
        head.push_str(name);
        head.push(' ');
        escape_into(&mut head, help, false);
        head.push_str("\n# TYPE ");
        head.push_str(name);
        head.push(' ');
        head.push_str(kind);
        head.push('\n');
        Family { name: name.to_string(), head, body: String::new() }
    }

    /// Adds one series. Non-finite values are dropped: Prometheus would take
    /// them, but a NaN utilisation from a driver quirk is noise, not data.
    pub fn add(&mut self, labels: &[(&str, &str)], value: f64) {
        if !value.is_finite() {
            return;
        }
        let body = &mut self.body;
        body.push_str(&self.name);
        for (i, (name, value)) in labels.iter().enumerate() {
            body.push(if i == 0 { '{' } else { ',' });
            body.push_str(name);
            body.push_str("=\"");
            escape_into(body, value, true);
            body.push('"');
        }
        if !labels.is_empty() {
            body.push('}');
        }
        // f64's Display, as the prometheus crate writes values (250, 0.5, 1980000000).
        let _ = writeln!(body, " {value}");
    }

    /// Adds a series when there is a reading.
    pub fn add_some(&mut self, labels: &[(&str, &str)], value: Option<f64>) {
        if let Some(value) = value {
            self.add(labels, value);
        }
    }

    /// Appends the family to `out` unless it has no series (a family
    /// without any is not written at all, as the text encoder required).
    pub fn finish_into(self, out: &mut Vec<Written>) {
        if self.body.is_empty() {
            return;
        }
        let mut text = self.head;
        text.push_str(&self.body);
        out.push(Written { name: self.name, text });
    }
}

/// The text format's escapes: `\` and newline always, `"` in label values.
fn escape_into(out: &mut String, text: &str, quote: bool) {
    if !text.contains(['\\', '\n', '"']) {
        out.push_str(text);
        return;
    }
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written text is what the prometheus crate's encoder writes
    /// for the same family (escapes, value format, no braces without labels).
    #[test]
    fn writes_what_the_prometheus_encoder_writes() {
        use prometheus::proto::{Gauge, LabelPair, Metric, MetricType};
        let series: [(&[(&str, &str)], f64); 4] = [
            (&[("unit", "a"), ("kind", "service")], 1.0),
            (&[("unit", "we\"ird\\na\nme")], 0.5),
            (&[], 1_980_000_000.0),
            (&[("gpu", "0")], 25_276_502_016.0),
        ];
        let mut ours = Family::gauge("x_bytes", "Help with a \\ and a\nnewline.");
        let mut theirs = MetricFamily::default();
        theirs.set_name("x_bytes".into());
        theirs.set_help("Help with a \\ and a\nnewline.".into());
        theirs.set_field_type(MetricType::GAUGE);
        for (labels, value) in series {
            ours.add(labels, value);
            let pairs = labels
                .iter()
                .map(|(n, v)| {
                    let mut p = LabelPair::default();
                    p.set_name(n.to_string());
                    p.set_value(v.to_string());
                    p
                })
                .collect();
            let mut m = Metric::from_label(pairs);
            let mut g = Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
            theirs.mut_metric().push(m);
        }
        ours.add(&[("dropped", "nan")], f64::NAN);
        let mut out = Vec::new();
        ours.finish_into(&mut out);
        Family::counter("empty_total", "No series.").finish_into(&mut out);
        assert_eq!(out.len(), 1, "a family without series is not written");
        assert_eq!(out[0].text, Written::encoded(&theirs).unwrap().text);
    }
}
