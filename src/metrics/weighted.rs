//! A histogram family whose series take weighted observations: `n` observations of one
//! value in one step. The messages of a chunk share their receipt time, and the calls of
//! a quick pass share one mean; observed one by one, as prometheus's own histogram
//! takes them, the bucket search and adds cost about 130 instructions a message, a
//! quarter of the in-memory pipeline's. The exposition is prometheus's histogram's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, LabelPair, Metric, MetricFamily, MetricType};

/// The most bucket bounds a family may have: a local tally is a fixed array, made with
/// no allocation on every pass.
const MAX_BOUNDS: usize = 15;

/// A histogram family: series by label values, each counting into its buckets under a
/// lock taken once per [`Tally::flush`].
#[derive(Clone, Debug)]
pub(crate) struct WeightedHistogramVec(Arc<Family>);

#[derive(Debug)]
struct Family {
    desc: Desc,
    labels: Vec<String>,
    bounds: Arc<[f64]>,
    series: Mutex<HashMap<Vec<String>, WeightedHistogram>>,
}

/// One series of a [`WeightedHistogramVec`]. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct WeightedHistogram(Arc<Series>);

#[derive(Debug)]
struct Series {
    bounds: Arc<[f64]>,
    counts: Mutex<Counts>,
}

/// Per bucket (the last past every bound), then the count and sum.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    buckets: [u64; MAX_BOUNDS + 1],
    count: u64,
    sum: f64,
}

impl Counts {
    fn add(&mut self, bucket: usize, n: u64, sum: f64) {
        self.buckets[bucket] += n;
        self.count += n;
        self.sum += sum;
    }
}

impl WeightedHistogramVec {
    /// A family named `name` with `labels`, its buckets bounded by `bounds` (ascending,
    /// at most 15; past the last, `+Inf`).
    pub(crate) fn new(name: &str, help: &str, labels: &[&str], bounds: Vec<f64>) -> Self {
        assert!(bounds.len() <= MAX_BOUNDS, "at most {MAX_BOUNDS} bucket bounds");
        assert!(bounds.is_sorted_by(|a, b| a < b), "bucket bounds ascend");
        let labels: Vec<String> = labels.iter().map(|&l| l.to_owned()).collect();
        let desc = Desc::new(name.to_owned(), help.to_owned(), labels.clone(), HashMap::new())
            .expect("a valid metric name and labels");
        WeightedHistogramVec(Arc::new(Family {
            desc,
            labels,
            bounds: bounds.into(),
            series: Mutex::new(HashMap::new()),
        }))
    }

    /// The series of these label values, made on first use.
    pub(crate) fn with_label_values(&self, values: &[&str]) -> WeightedHistogram {
        assert_eq!(values.len(), self.0.labels.len(), "one value per label");
        let key: Vec<String> = values.iter().map(|&v| v.to_owned()).collect();
        lock(&self.0.series)
            .entry(key)
            .or_insert_with(|| {
                WeightedHistogram(Arc::new(Series {
                    bounds: self.0.bounds.clone(),
                    counts: Mutex::new(Counts::default()),
                }))
            })
            .clone()
    }
}

impl WeightedHistogram {
    /// A tally of observations, added to the series at once by [`Tally::flush`] (or when
    /// dropped).
    pub(crate) fn tally(&self) -> Tally<'_> {
        Tally {
            series: &self.0,
            counts: Counts::default(),
        }
    }

    /// The observations so far: count and sum.
    #[cfg(test)]
    pub(crate) fn count_and_sum(&self) -> (u64, f64) {
        let counts = lock(&self.0.counts);
        (counts.count, counts.sum)
    }

    /// The observations so far in each bucket (the last past every bound).
    #[cfg(test)]
    pub(crate) fn buckets(&self) -> Vec<u64> {
        let counts = lock(&self.0.counts);
        counts.buckets[..=self.0.bounds.len()].to_vec()
    }
}

/// Observations not yet added to their series.
#[derive(Debug)]
pub(crate) struct Tally<'a> {
    series: &'a Series,
    counts: Counts,
}

impl Tally<'_> {
    /// `n` observations of `value`.
    pub(crate) fn observe_n(&mut self, value: f64, n: u64) {
        // The first bucket whose bound is at least the value (prometheus's `le`); NaN is
        // in no bucket but `+Inf`, as prometheus counts it.
        let bucket = match value.is_nan() {
            true => self.series.bounds.len(),
            false => self.series.bounds.partition_point(|&bound| bound < value),
        };
        self.counts.add(bucket, n, value * n as f64);
    }

    /// Adds the observations to the series.
    pub(crate) fn flush(&mut self) {
        if self.counts.count == 0 {
            return;
        }
        let mut counts = lock(&self.series.counts);
        for (bucket, &n) in self.counts.buckets.iter().enumerate() {
            counts.buckets[bucket] += n;
        }
        counts.count += self.counts.count;
        counts.sum += self.counts.sum;
        drop(counts);
        self.counts = Counts::default();
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

impl Collector for WeightedHistogramVec {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.0.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let series: Vec<(Vec<String>, Counts)> = lock(&self.0.series)
            .iter()
            .map(|(values, series)| (values.clone(), *lock(&series.0.counts)))
            .collect();
        let metrics = series
            .into_iter()
            .map(|(values, counts)| {
                let mut labels: Vec<LabelPair> = self
                    .0
                    .labels
                    .iter()
                    .zip(values)
                    .map(|(name, value)| {
                        let mut pair = LabelPair::default();
                        pair.set_name(name.clone());
                        pair.set_value(value);
                        pair
                    })
                    .collect();
                labels.sort_by(|a, b| a.name().cmp(b.name()));
                let mut cumulative = 0;
                let buckets = self
                    .0
                    .bounds
                    .iter()
                    .zip(counts.buckets)
                    .map(|(&bound, n)| {
                        cumulative += n;
                        let mut bucket = Bucket::default();
                        bucket.set_cumulative_count(cumulative);
                        bucket.set_upper_bound(bound);
                        bucket
                    })
                    .collect();
                let mut histogram = prometheus::proto::Histogram::default();
                histogram.set_sample_count(counts.count);
                histogram.set_sample_sum(counts.sum);
                histogram.set_bucket(buckets);
                let mut metric = Metric::default();
                metric.set_label(labels);
                metric.set_histogram(histogram);
                metric
            })
            .collect();
        let mut family = MetricFamily::default();
        family.set_name(self.0.desc.fq_name.clone());
        family.set_help(self.0.desc.help.clone());
        family.set_field_type(MetricType::HISTOGRAM);
        family.set_metric(metrics);
        vec![family]
    }
}

/// A lock whose holder never panics while holding it; poisoned or not, its counts hold.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exposition(registry: &prometheus::Registry) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("encodes")
    }

    /// Values on a bound, and just either side of it, fall where prometheus puts them.
    #[test]
    fn bounds_are_inclusive_as_prometheus_les_are() {
        let bounds = prometheus::exponential_buckets(0.0001, 2.5, 15).unwrap();
        let ours = WeightedHistogramVec::new("edge_seconds", "A test.", &["p"], bounds.clone());
        let theirs = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new("edge_seconds", "A test.").buckets(bounds.clone()),
            &["p"],
        )
        .unwrap();
        let (ours_registry, theirs_registry) = (prometheus::Registry::new(), prometheus::Registry::new());
        ours_registry.register(Box::new(ours.clone())).unwrap();
        theirs_registry.register(Box::new(theirs.clone())).unwrap();
        let series = ours.with_label_values(&["p"]);
        let mut tally = series.tally();
        for value in bounds
            .iter()
            .flat_map(|&b| [b.next_down(), b, b.next_up()])
            .chain([-1.0, 1e9, f64::INFINITY, f64::NAN])
        {
            tally.observe_n(value, 1);
            theirs.with_label_values(&["p"]).observe(value);
        }
        drop(tally);
        assert_eq!(exposition(&ours_registry), exposition(&theirs_registry));
    }

    proptest! {
        /// Weighted observations expose what as many single ones into prometheus's own
        /// histogram do. Values are multiples of 1/1024, so that sums are exact.
        #[test]
        fn exposes_what_prometheus_histograms_do(
            observations in proptest::collection::vec((0usize..2, 0u32..40_000, 1u64..70), 0..60),
            flush_every in 1usize..8,
        ) {
            let bounds = prometheus::exponential_buckets(0.0001, 2.5, 15).unwrap();
            let (name, help, labels) = ("test_seconds", "A test.", ["pipeline", "outcome"]);
            let ours = WeightedHistogramVec::new(name, help, &labels, bounds.clone());
            let theirs = prometheus::HistogramVec::new(
                prometheus::HistogramOpts::new(name, help).buckets(bounds),
                &labels,
            )
            .unwrap();
            let (ours_registry, theirs_registry) = (prometheus::Registry::new(), prometheus::Registry::new());
            ours_registry.register(Box::new(ours.clone())).unwrap();
            theirs_registry.register(Box::new(theirs.clone())).unwrap();
            let values = [["p", "successful"], ["p", "failed"]];
            let series = values.map(|v| ours.with_label_values(&v));
            for v in values {
                theirs.with_label_values(&v);
            }
            let mut tallies: Vec<Tally<'_>> = series.iter().map(WeightedHistogram::tally).collect();
            for (i, &(at, k, n)) in observations.iter().enumerate() {
                let value = f64::from(k) / 1024.0;
                tallies[at].observe_n(value, n);
                for _ in 0..n {
                    theirs.with_label_values(&values[at]).observe(value);
                }
                if i % flush_every == 0 {
                    tallies[at].flush();
                }
            }
            drop(tallies);
            prop_assert_eq!(exposition(&ours_registry), exposition(&theirs_registry));
        }
    }
}
