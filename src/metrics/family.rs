//! Metric families built by hand at scrape time.
//!
//! Unit, host and GPU series exist only while their subject does (a unit
//! removed by a reload, a GPU without a fan), so they are not kept in
//! registered `GaugeVec`s that would have to be pruned: each scrape builds
//! them fresh from what it read, and an absent reading is simply no series.

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

/// One metric family being filled during a scrape.
pub struct Family {
    inner: MetricFamily,
}

impl Family {
    pub fn gauge(name: &str, help: &str) -> Family {
        Family::new(name, help, MetricType::GAUGE)
    }

    pub fn counter(name: &str, help: &str) -> Family {
        Family::new(name, help, MetricType::COUNTER)
    }

    fn new(name: &str, help: &str, kind: MetricType) -> Family {
        let mut inner = MetricFamily::default();
        inner.set_name(name.to_string());
        inner.set_help(help.to_string());
        inner.set_field_type(kind);
        Family { inner }
    }

    /// Adds one series. Non-finite values are dropped: Prometheus would take
    /// them, but a NaN utilisation from a driver quirk is noise, not data.
    pub fn add(&mut self, labels: &[(&str, &str)], value: f64) {
        if !value.is_finite() {
            return;
        }
        let pairs = labels
            .iter()
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name(name.to_string());
                pair.set_value(value.to_string());
                pair
            })
            .collect();
        let mut metric = Metric::from_label(pairs);
        match self.inner.get_field_type() {
            MetricType::COUNTER => {
                let mut counter = Counter::default();
                counter.set_value(value);
                metric.set_counter(counter);
            }
            _ => {
                let mut gauge = Gauge::default();
                gauge.set_value(value);
                metric.set_gauge(gauge);
            }
        }
        self.inner.mut_metric().push(metric);
    }

    /// Adds a series when there is a reading.
    pub fn add_some(&mut self, labels: &[(&str, &str)], value: Option<f64>) {
        if let Some(value) = value {
            self.add(labels, value);
        }
    }

    /// Appends the family to `out` unless it is empty: the text encoder
    /// rejects a family with no series.
    pub fn finish_into(self, out: &mut Vec<MetricFamily>) {
        if !self.inner.get_metric().is_empty() {
            out.push(self.inner);
        }
    }
}
