//! Latency histograms (microsecond resolution) and their summaries.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Percentiles of a latency distribution, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest sample.
    pub max: f64,
}

/// A latency recorder: 1 µs to 10 min, 3 significant digits.
#[derive(Debug, Clone)]
pub struct Recorder {
    h: Histogram<u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

const MAX_MICROS: u64 = 600_000_000;

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Self {
        let h = Histogram::new_with_bounds(1, MAX_MICROS, 3)
            .expect("constant histogram bounds are valid");
        Recorder { h }
    }

    /// Records one duration (clamped to the recorder's range).
    pub fn record(&mut self, d: Duration) {
        self.record_micros(d.as_micros().min(MAX_MICROS as u128) as u64);
    }

    /// Records one value in microseconds (clamped to the recorder's range).
    pub fn record_micros(&mut self, us: u64) {
        let _ = self.h.record(us.clamp(1, MAX_MICROS));
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.h.len()
    }

    /// The summary, or `None` if nothing was recorded.
    pub fn summary(&self) -> Option<Latency> {
        if self.h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Latency {
            count: self.h.len(),
            p50: ms(self.h.value_at_quantile(0.50)),
            p90: ms(self.h.value_at_quantile(0.90)),
            p99: ms(self.h.value_at_quantile(0.99)),
            p999: ms(self.h.value_at_quantile(0.999)),
            max: ms(self.h.max()),
        })
    }
}

/// A growable bit set of sequence numbers.
#[derive(Debug, Clone, Default)]
pub struct SeqSet {
    words: Vec<u64>,
}

impl SeqSet {
    /// Inserts `n`; returns whether it was new.
    pub fn insert(&mut self, n: u64) -> bool {
        let (w, b) = ((n / 64) as usize, n % 64);
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        let new = self.words[w] & (1 << b) == 0;
        self.words[w] |= 1 << b;
        new
    }

    /// Whether `n` is in the set.
    pub fn contains(&self, n: u64) -> bool {
        let (w, b) = ((n / 64) as usize, n % 64);
        self.words.get(w).is_some_and(|x| x & (1 << b) != 0)
    }

    /// The numbers in `self` that are not in `other`, ascending.
    pub fn difference(&self, other: &SeqSet) -> Vec<u64> {
        let mut out = Vec::new();
        for (i, w) in self.words.iter().enumerate() {
            let mut d = w & !other.words.get(i).copied().unwrap_or(0);
            while d != 0 {
                let b = d.trailing_zeros() as u64;
                out.push(i as u64 * 64 + b);
                d &= d - 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut r = Recorder::new();
        assert!(r.summary().is_none());
        for i in 1..=1000u64 {
            r.record_micros(i * 1000);
        }
        let s = r.summary().unwrap_or_default();
        assert_eq!(s.count, 1000);
        assert!((s.p50 - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99 - 990.0).abs() < 1.0, "{s:?}");
        assert!((s.max - 1000.0).abs() < 1.0, "{s:?}");
        r.record(Duration::from_secs(100_000));
        assert_eq!(r.count(), 1001);
    }

    #[test]
    fn seq_set() {
        let mut a = SeqSet::default();
        assert!(a.insert(3));
        assert!(!a.insert(3));
        assert!(a.insert(130));
        assert!(a.contains(130) && !a.contains(129));
        let mut b = SeqSet::default();
        b.insert(3);
        assert_eq!(a.difference(&b), vec![130]);
    }
}
