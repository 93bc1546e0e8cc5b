//! A small log-linear histogram of microsecond values (about 1.6 % resolution above
//! 128 µs, exact below): fixed size, no allocation per sample, mergeable.

/// Exact buckets below this value.
const LINEAR: u64 = 128;
/// Sub-buckets per power of two above [`LINEAR`] (2^6).
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Powers of two covered: 2^7 .. 2^48 µs (far beyond any latency we can see).
const OCTAVES: u64 = 42;
const BUCKETS: usize = (LINEAR + OCTAVES * SUB) as usize;

/// Latency histogram in microseconds.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    max: u64,
    min: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: Box::new([0; BUCKETS]),
            total: 0,
            max: 0,
            min: u64::MAX,
            sum: 0,
        }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Histogram(n={}, p50={}, p99={}, max={})",
            self.total,
            self.quantile(0.5),
            self.quantile(0.99),
            self.max
        )
    }
}

fn index(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let e = 63 - u64::from(v.leading_zeros()); // floor(log2 v) >= 7
    let octave = (e - 7).min(OCTAVES - 1);
    let sub = (v >> (e - u64::from(SUB_BITS))) & (SUB - 1);
    (LINEAR + octave * SUB + sub) as usize
}

/// Smallest value that lands in bucket `i`.
fn lower_bound(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let octave = (i - LINEAR) / SUB;
    let sub = (i - LINEAR) % SUB;
    let e = octave + 7;
    (1u64 << e) + (sub << (e - u64::from(SUB_BITS)))
}

impl Histogram {
    /// Records one value.
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
        self.min = self.min.min(v);
        self.sum += u128::from(v);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
        self.min = self.min.min(other.min);
        self.sum += other.sum;
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Largest sample (0 when empty).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at quantile `q` (0..=1): the lower bound of the bucket holding it, capped
    /// by the true maximum. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        if rank >= self.total {
            return self.max;
        }
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return lower_bound(i).clamp(self.min, self.max);
            }
        }
        self.max
    }
}

/// Width of a [`Coarse`] bucket, µs.
pub const COARSE_BUCKET_US: u64 = 250;
/// Buckets of a [`Coarse`] histogram; the last one holds everything from 16 ms up.
const COARSE_BUCKETS: usize = 65;

/// A coarse latency histogram (250 µs buckets up to 16 ms) for one second of the window:
/// small enough to keep one per second per subscriber, so a report can say *when* in the
/// window the tail happened (the first second after a change of priority, a keyframe...).
#[derive(Clone, Debug)]
pub struct Coarse {
    counts: [u32; COARSE_BUCKETS],
    max: u64,
}

impl Default for Coarse {
    fn default() -> Self {
        Coarse {
            counts: [0; COARSE_BUCKETS],
            max: 0,
        }
    }
}

impl Coarse {
    /// Adds one sample (µs).
    pub fn record(&mut self, v: u64) {
        let i = ((v / COARSE_BUCKET_US) as usize).min(COARSE_BUCKETS - 1);
        self.counts[i] = self.counts[i].saturating_add(1);
        self.max = self.max.max(v);
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Coarse) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(*b);
        }
        self.max = self.max.max(other.max);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|&c| u64::from(c)).sum()
    }

    /// Largest sample.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Samples of at least `us` (rounded down to a bucket edge).
    pub fn at_least(&self, us: u64) -> u64 {
        let from = ((us / COARSE_BUCKET_US) as usize).min(COARSE_BUCKETS - 1);
        self.counts[from..].iter().map(|&c| u64::from(c)).sum()
    }

    /// Upper edge of the bucket holding quantile `q` (the maximum for the last bucket):
    /// never below the true quantile, at most 250 µs above it.
    pub fn quantile_upper(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return if i == COARSE_BUCKETS - 1 {
                    self.max
                } else {
                    ((i as u64 + 1) * COARSE_BUCKET_US).min(self.max)
                };
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut prev = 0;
        for v in (0..2_000_000u64).step_by(7) {
            let i = index(v);
            assert!(i >= prev);
            prev = i;
            let lb = lower_bound(i);
            assert!(lb <= v, "v={v} lb={lb}");
            assert!(v - lb <= v / 60 + 1, "v={v} lb={lb}");
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        for v in 1..=1000 {
            h.record(v);
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.max(), 1000);
        let p50 = h.quantile(0.5);
        assert!((490..=500).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99);
        assert!((975..=990).contains(&p99), "{p99}");
        let mut g = Histogram::default();
        g.record(5_000_000);
        h.merge(&g);
        assert_eq!(h.max(), 5_000_000);
        assert_eq!(h.quantile(1.0), 5_000_000);
    }

    #[test]
    fn coarse_quantiles_and_tail_counts() {
        let mut c = Coarse::default();
        for v in 0..1000 {
            c.record(v * 10); // 0 .. 9.99 ms
        }
        assert_eq!(c.count(), 1000);
        assert_eq!(c.at_least(5_000), 500);
        let p99 = c.quantile_upper(0.99);
        assert!((9_800..=10_000).contains(&p99), "{p99}");
        let mut d = Coarse::default();
        d.record(40_000);
        c.merge(&d);
        assert_eq!((c.count(), c.max()), (1001, 40_000));
        assert_eq!(c.quantile_upper(1.0), 40_000);
        assert_eq!(c.at_least(16_000), 1);
    }
}
