//! What the bridge's and the workers' Prometheus registries share: label
//! sets, the duration buckets, and a registry that remembers the sample
//! names it will expose (an empty family writes nothing, yet dashboards and
//! alert rules may name it; a test checks them against these names).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::TypedMetric;
use prometheus_client::registry::{Metric, Registry};

/// Label pairs of one series.
pub type Labels = Vec<(&'static str, String)>;
/// Histograms of durations in seconds, one per label set.
pub type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// Durations from 50 ms to about 8 days (a 2 KiB AddPiece to a 64 GiB PC1).
pub fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 3.0, 14))
}

/// A family of duration histograms.
pub fn histograms() -> Histograms {
    Histograms::new_with_constructor(seconds as fn() -> Histogram)
}

/// The sample names a metric type writes after its family name.
pub trait Suffixes {
    const SUFFIXES: &'static [&'static str];
}

impl Suffixes for Counter {
    const SUFFIXES: &'static [&'static str] = &["_total"];
}

impl<N, A> Suffixes for Gauge<N, A> {
    const SUFFIXES: &'static [&'static str] = &[""];
}

impl Suffixes for Histogram {
    const SUFFIXES: &'static [&'static str] = &["_bucket", "_sum", "_count"];
}

impl<L, M: Suffixes, C> Suffixes for Family<L, M, C> {
    const SUFFIXES: &'static [&'static str] = M::SUFFIXES;
}

/// A registry with a prefix that lists the sample names it can expose.
pub struct NamedRegistry {
    pub registry: Registry,
    prefix: &'static str,
    names: Vec<String>,
}

impl NamedRegistry {
    pub fn new(prefix: &'static str) -> Self {
        NamedRegistry { registry: Registry::with_prefix(prefix), prefix, names: Vec::new() }
    }

    /// A registry whose every series also carries `labels` (first in the
    /// label set), e.g. the bridge's `miner`.
    pub fn with_labels(prefix: &'static str, labels: &[(&'static str, String)]) -> Self {
        let labels = labels.iter().map(|(k, v)| (std::borrow::Cow::Borrowed(*k), std::borrow::Cow::Owned(v.clone())));
        NamedRegistry { registry: Registry::with_prefix_and_labels(prefix, labels), prefix, names: Vec::new() }
    }

    /// Registers `metric` as `<prefix>_<name>` and hands it back.
    pub fn add<M: Metric + TypedMetric + Suffixes + Clone>(&mut self, name: &str, help: &str, metric: M) -> M {
        self.registry.register(name, help, metric.clone());
        self.names.extend(M::SUFFIXES.iter().map(|s| format!("{}_{name}{s}", self.prefix)));
        metric
    }

    /// Every sample name this registry exposes once its families have series.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The text exposition (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String");
        text
    }
}

/// The content type of [`NamedRegistry::encode`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
