//! Counting: what each core records per interval, merging across cores,
//! latency percentiles, the text histogram and the JSON report.

use histogram::Histogram;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Histogram precision: 2^7 buckets per power of two, a relative error
/// below 0.8%.
const GROUPING_POWER: u8 = 7;
/// Largest latency recorded: 2^40 ns, about 18 minutes.
const MAX_VALUE_POWER: u8 = 40;

/// An empty latency histogram (nanoseconds).
pub fn new_histogram() -> Histogram {
    Histogram::new(GROUPING_POWER, MAX_VALUE_POWER).expect("valid histogram parameters")
}

/// What one core (or, merged, every core) did during one interval.
#[derive(Clone, Debug)]
pub struct Interval {
    pub reads: u64,
    pub writes: u64,
    pub bytes: u64,
    pub errors: u64,
    pub lat_sum_ns: u64,
    pub lat_min_ns: u64,
    pub lat_max_ns: u64,
    /// Latency of each successful I/O, in nanoseconds.
    pub hist: Histogram,
}

impl Default for Interval {
    fn default() -> Self {
        Interval {
            reads: 0,
            writes: 0,
            bytes: 0,
            errors: 0,
            lat_sum_ns: 0,
            lat_min_ns: u64::MAX,
            lat_max_ns: 0,
            hist: new_histogram(),
        }
    }
}

impl Interval {
    /// Successful I/Os.
    pub fn ios(&self) -> u64 {
        self.reads + self.writes
    }

    /// One successful I/O of `bytes` that took `ns`.
    #[inline]
    pub fn record(&mut self, read: bool, bytes: u64, ns: u64) {
        if read {
            self.reads += 1;
        } else {
            self.writes += 1;
        }
        self.bytes += bytes;
        self.lat_sum_ns = self.lat_sum_ns.saturating_add(ns);
        self.lat_min_ns = self.lat_min_ns.min(ns);
        self.lat_max_ns = self.lat_max_ns.max(ns);
        // Values past the histogram's range (18 minutes) stay in max only.
        let _ = self.hist.increment(ns);
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Interval) {
        self.reads += other.reads;
        self.writes += other.writes;
        self.bytes += other.bytes;
        self.errors += other.errors;
        self.lat_sum_ns = self.lat_sum_ns.saturating_add(other.lat_sum_ns);
        self.lat_min_ns = self.lat_min_ns.min(other.lat_min_ns);
        self.lat_max_ns = self.lat_max_ns.max(other.lat_max_ns);
        // Same configuration on both sides: this cannot fail.
        let _ = self.hist.checked_add_assign(&other.hist);
    }

    /// Latency quantiles (each in 0..=1) in µs: the upper bound of the bucket
    /// holding each, kept within the exact minimum and maximum.
    pub fn quantiles_us(&self, qs: &[f64]) -> Vec<f64> {
        let mut out = vec![None; qs.len()];
        if self.hist.quantile_buckets_into(qs, &mut out).is_err() {
            return vec![0.0; qs.len()];
        }
        out.into_iter()
            .map(|b| match b {
                Some(b) => b.end().clamp(self.lat_min_ns, self.lat_max_ns) as f64 / 1000.0,
                None => 0.0,
            })
            .collect()
    }

    /// p99 in µs (0 when nothing was recorded).
    pub fn p99_us(&self) -> f64 {
        self.quantiles_us(&[0.99])[0]
    }
}

/// Latency figures of a run, in microseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Latency {
    pub mean: f64,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub p9999: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(iv: &Interval) -> Latency {
        let n = iv.ios();
        if n == 0 {
            return Latency::default();
        }
        let q = iv.quantiles_us(&[0.5, 0.9, 0.99, 0.999, 0.9999]);
        Latency {
            mean: iv.lat_sum_ns as f64 / n as f64 / 1000.0,
            min: iv.lat_min_ns as f64 / 1000.0,
            p50: q[0],
            p90: q[1],
            p99: q[2],
            p999: q[3],
            p9999: q[4],
            max: iv.lat_max_ns as f64 / 1000.0,
        }
    }
}

/// One row of a log-scaled histogram: latencies in `[from_us, to_us)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub from_us: f64,
    pub to_us: f64,
    pub count: u64,
}

/// Buckets of `hist` regrouped into `per_octave` rows per power of two of
/// microseconds (from 1 µs; everything below 1 µs is one row from 0), from
/// the first non-empty row to the last.
pub fn log_rows(hist: &Histogram, per_octave: u32) -> Vec<Row> {
    let per_octave = per_octave.max(1);
    let mut counts: BTreeMap<i64, u64> = BTreeMap::new();
    for b in hist.iter().filter(|b| b.count() > 0) {
        let us = b.start() as f64 / 1000.0;
        let idx = if us < 1.0 {
            -1
        } else {
            (us.log2() * f64::from(per_octave)).floor() as i64
        };
        *counts.entry(idx).or_default() += b.count();
    }
    let (Some((&lo, _)), Some((&hi, _))) = (counts.first_key_value(), counts.last_key_value())
    else {
        return Vec::new();
    };
    let edge = |i: i64| 2f64.powf(i as f64 / f64::from(per_octave));
    (lo..=hi)
        .map(|i| Row {
            from_us: if i < 0 { 0.0 } else { edge(i) },
            to_us: if i < 0 { 1.0 } else { edge(i + 1) },
            count: counts.get(&i).copied().unwrap_or(0),
        })
        .collect()
}

fn trim_num(v: f64) -> String {
    if v >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The text histogram: one row per power of two of microseconds, e.g.
/// `     16-32 µs | ##########################   41.20%  (1,234,567)`.
pub fn text_histogram(hist: &Histogram) -> String {
    const WIDTH: u64 = 40;
    let rows = log_rows(hist, 1);
    let total: u64 = rows.iter().map(|r| r.count).sum();
    let top = rows.iter().map(|r| r.count).max().unwrap_or(0);
    if total == 0 {
        return "    (no I/O recorded)\n".into();
    }
    let labels: Vec<String> = rows
        .iter()
        .map(|r| {
            if r.from_us == 0.0 {
                "< 1 µs".to_string()
            } else {
                format!("{}-{} µs", trim_num(r.from_us), trim_num(r.to_us))
            }
        })
        .collect();
    let lw = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let mut s = String::new();
    for (r, label) in rows.iter().zip(&labels) {
        let mut bar = (r.count * WIDTH).div_ceil(top.max(1)) as usize;
        if r.count > 0 {
            bar = bar.max(1);
        }
        let pct = r.count as f64 * 100.0 / total as f64;
        let pct = if r.count > 0 && pct < 0.01 {
            "<0.01%".to_string()
        } else {
            format!("{pct:.2}%")
        };
        let pad = lw - label.chars().count();
        let _ = writeln!(
            s,
            "    {}{label} | {:<w$} {pct:>7}  ({})",
            " ".repeat(pad),
            "#".repeat(bar),
            grouped(r.count),
            w = WIDTH as usize
        );
    }
    s
}

/// `1234567` → `1,234,567`.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A figure for the JSON report: three decimals are plenty for µs, MiB/s
/// and IOPS; NaN and infinities (nothing measured) become null.
pub fn num(v: f64) -> Value {
    if v.is_finite() {
        json!((v * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

/// Histogram rows as JSON.
pub fn rows_json(rows: &[Row], total: u64) -> Value {
    rows.iter()
        .map(|r| {
            json!({
                "from_us": num(r.from_us),
                "to_us": num(r.to_us),
                "count": r.count,
                "percent": num(r.count as f64 * 100.0 / total.max(1) as f64),
            })
        })
        .collect()
}

/// Latency figures as JSON.
pub fn latency_json(l: &Latency) -> Value {
    json!({
        "mean": num(l.mean),
        "min": num(l.min),
        "p50": num(l.p50),
        "p90": num(l.p90),
        "p99": num(l.p99),
        "p99_9": num(l.p999),
        "p99_99": num(l.p9999),
        "max": num(l.max),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(values_ns: &[u64]) -> Interval {
        let mut iv = Interval::default();
        for &v in values_ns {
            iv.record(true, 4096, v);
        }
        iv
    }

    #[test]
    fn merge_and_percentiles() {
        let mut a = interval(&(1..=500).map(|i| i * 1000).collect::<Vec<_>>());
        let b = interval(&(501..=1000).map(|i| i * 1000).collect::<Vec<_>>());
        a.merge(&b);
        assert_eq!(a.ios(), 1000);
        assert_eq!(a.bytes, 1000 * 4096);
        let l = Latency::of(&a);
        assert!((l.mean - 500.5).abs() < 0.01);
        assert_eq!(l.min, 1.0);
        assert_eq!(l.max, 1000.0);
        // Within the histogram's 0.8% error.
        assert!((l.p50 - 500.0).abs() < 500.0 * 0.01, "{}", l.p50);
        assert!((l.p99 - 990.0).abs() < 990.0 * 0.01, "{}", l.p99);
        assert!(l.p9999 <= l.max);
    }

    #[test]
    fn log_rows_cover_the_data() {
        let iv = interval(&[500, 1_500, 20_000, 20_000, 3_000_000]);
        let rows = log_rows(&iv.hist, 1);
        assert_eq!(rows.first().unwrap().from_us, 0.0);
        assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), 5);
        let r = rows.iter().find(|r| r.from_us == 16.0).unwrap();
        assert_eq!((r.to_us, r.count), (32.0, 2));
        let text = text_histogram(&iv.hist);
        assert!(text.contains("16-32 µs |"), "{text}");
        assert!(text.contains("40.00%"), "{text}");
        assert!(log_rows(&new_histogram(), 1).is_empty());
    }

    #[test]
    fn json_figures_and_grouping() {
        assert_eq!(num(2.12345), json!(2.123));
        assert_eq!(num(f64::NAN), Value::Null);
        assert_eq!(num(f64::INFINITY), Value::Null);
        assert_eq!(grouped(1234567), "1,234,567");
        assert_eq!(grouped(12), "12");
    }
}
