//! Exact-as-possible floating accumulators with removal, for sliding windows.
//!
//! - [`DdSum`]: a double-double sum with add *and* remove, counting NaN and
//!   infinities apart. Finite values of magnitude `>= 2^500` are kept in a second,
//!   counted sum scaled by `2^-600` and reset to exactly zero when its last value
//!   leaves, so a window whose running sum once overflowed returns to what a fresh sum
//!   of its values gives (a plain running sum stays at ±inf forever).
//! - [`Moments`]: count, Σx and Σx² as [`DdSum`]s (squares taken exactly with FMA), so
//!   the sample standard deviation is O(1) per added or removed row, and the result is
//!   the same whether rows were added in one pass or slid through a window.

/// `2^k` as f64 (for `|k| < 1023`).
fn pow2(k: i32) -> f64 {
    f64::from_bits(((1023 + k) as u64) << 52)
}

/// Error-free sum: `a + b = s + e`.
fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    (s, (a - (s - bb)) + (b - bb))
}

/// A double-double accumulator of finite values.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Dd {
    hi: f64,
    lo: f64,
}

impl Dd {
    fn add(&mut self, x: f64) {
        let (s, e) = two_sum(self.hi, x);
        let lo = self.lo + e;
        let (hi, lo) = two_sum(s, lo);
        self.hi = hi;
        self.lo = lo;
    }

    fn merge(&mut self, other: &Dd) {
        self.add(other.hi);
        self.add(other.lo);
    }
}

/// Two double-double buckets: values below a threshold as they are, larger ones
/// scaled down, each with a count so an emptied bucket is reset to exactly zero (a
/// window that held huge values returns to exactly what a fresh sum of what is left
/// gives), plus counts of NaN and infinities.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Buckets {
    small: Dd,
    big: Dd,
    n_small: i64,
    n_big: i64,
    nan: u32,
    pos_inf: u32,
    neg_inf: u32,
}

impl Buckets {
    fn count_non_finite(&mut self, x: f64, sign: i32) {
        let counter = if x.is_nan() {
            &mut self.nan
        } else if x > 0.0 {
            &mut self.pos_inf
        } else {
            &mut self.neg_inf
        };
        *counter = counter.wrapping_add_signed(sign);
    }

    /// Add (`sign` 1) or remove (−1) the terms of one value in a bucket.
    fn put(&mut self, big: bool, terms: [f64; 2], sign: i32) {
        let (bucket, n) = if big {
            (&mut self.big, &mut self.n_big)
        } else {
            (&mut self.small, &mut self.n_small)
        };
        *n += i64::from(sign);
        if *n == 0 {
            *bucket = Dd::default();
            return;
        }
        for t in terms {
            bucket.add(if sign < 0 { -t } else { t });
        }
    }

    fn non_finite(&self) -> bool {
        self.nan > 0 || self.pos_inf > 0 || self.neg_inf > 0
    }

    fn merge(&mut self, other: &Buckets) {
        self.small.merge(&other.small);
        self.big.merge(&other.big);
        self.n_small += other.n_small;
        self.n_big += other.n_big;
        self.nan = self.nan.wrapping_add(other.nan);
        self.pos_inf = self.pos_inf.wrapping_add(other.pos_inf);
        self.neg_inf = self.neg_inf.wrapping_add(other.neg_inf);
    }

    fn to_parts(self) -> ([f64; 4], [i64; 2], [u32; 3]) {
        (
            [self.small.hi, self.small.lo, self.big.hi, self.big.lo],
            [self.n_small, self.n_big],
            [self.nan, self.pos_inf, self.neg_inf],
        )
    }

    fn from_parts(f: [f64; 4], n: [i64; 2], c: [u32; 3]) -> Self {
        Self {
            small: Dd { hi: f[0], lo: f[1] },
            big: Dd { hi: f[2], lo: f[3] },
            n_small: n[0],
            n_big: n[1],
            nan: c[0],
            pos_inf: c[1],
            neg_inf: c[2],
        }
    }
}

/// A double-double sum with removal; see the module docs. Values of magnitude
/// `>= 2^500` are kept as `x · 2^-600`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct DdSum(Buckets);

impl DdSum {
    /// Add `x`.
    pub(crate) fn add(&mut self, x: f64) {
        self.apply(x, 1);
    }

    /// Remove an `x` that was added.
    pub(crate) fn remove(&mut self, x: f64) {
        self.apply(x, -1);
    }

    fn apply(&mut self, x: f64, sign: i32) {
        if !x.is_finite() {
            self.0.count_non_finite(x, sign);
        } else if x.abs() >= pow2(500) {
            self.0.put(true, [x * pow2(-600), 0.0], sign);
        } else {
            self.0.put(false, [x, 0.0], sign);
        }
    }

    /// Fold in another sum.
    pub(crate) fn combine(&mut self, other: &DdSum) {
        self.0.merge(&other.0);
    }

    /// The state as plain numbers, for storage.
    pub(crate) fn to_parts(self) -> ([f64; 4], [i64; 2], [u32; 3]) {
        self.0.to_parts()
    }

    /// The state [`to_parts`](Self::to_parts) gave.
    pub(crate) fn from_parts(f: [f64; 4], n: [i64; 2], c: [u32; 3]) -> Self {
        Self(Buckets::from_parts(f, n, c))
    }

    /// The finite part as a double-double `(hi, lo)`; hi may overflow to ±inf.
    fn finite_dd(&self) -> (f64, f64) {
        let b = &self.0;
        if b.big == Dd::default() {
            return (b.small.hi, b.small.lo);
        }
        let (bh, bl) = (b.big.hi * pow2(600), b.big.lo * pow2(600));
        if !bh.is_finite() {
            return (bh, 0.0);
        }
        let mut d = Dd { hi: bh, lo: bl };
        d.merge(&b.small);
        (d.hi, d.lo)
    }

    /// The sum, rounded to f64: NaN if a NaN (or both infinities) was added, ±inf if
    /// one infinity was or the finite sum overflows.
    pub(crate) fn value(&self) -> f64 {
        let b = &self.0;
        if b.nan > 0 || (b.pos_inf > 0 && b.neg_inf > 0) {
            f64::NAN
        } else if b.pos_inf > 0 {
            f64::INFINITY
        } else if b.neg_inf > 0 {
            f64::NEG_INFINITY
        } else {
            let (hi, lo) = self.finite_dd();
            hi + lo
        }
    }
}

/// Count, Σx and Σx² of the non-null values of a window; the sample standard deviation.
/// Squares are exact (FMA); those of `|x| >= 2^250` are kept as `(x · 2^-550)²`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Moments {
    pub(crate) n: i64,
    s1: DdSum,
    s2: Buckets,
}

impl Moments {
    /// Add one value.
    pub(crate) fn add(&mut self, x: f64) {
        self.apply(x, 1);
    }

    /// Remove a value that was added.
    pub(crate) fn remove(&mut self, x: f64) {
        self.apply(x, -1);
    }

    fn apply(&mut self, x: f64, sign: i32) {
        self.n += i64::from(sign);
        self.s1.apply(x, sign);
        if !x.is_finite() {
            self.s2
                .count_non_finite(if x.is_nan() { x } else { f64::INFINITY }, sign);
        } else if x.abs() >= pow2(250) {
            let y = x * pow2(-550);
            let p = y * y;
            self.s2.put(true, [p, y.mul_add(y, -p)], sign);
        } else {
            let p = x * x;
            self.s2.put(false, [p, x.mul_add(x, -p)], sign);
        }
    }

    /// Fold in the moments of other rows.
    pub(crate) fn combine(&mut self, other: &Moments) {
        self.n += other.n;
        self.s1.combine(&other.s1);
        self.s2.merge(&other.s2);
    }

    /// The count and the two sums, for storage.
    pub(crate) fn to_parts(self) -> (i64, DdSum, DdSum) {
        (self.n, self.s1, DdSum(self.s2))
    }

    /// The moments [`to_parts`](Self::to_parts) gave.
    pub(crate) fn from_parts(n: i64, s1: DdSum, s2: DdSum) -> Self {
        Self { n, s1, s2: s2.0 }
    }

    /// Moments from a count, mean and sum of squared deviations (Welford's state, as
    /// online records of an earlier release stored it): `Σx = n·mean`,
    /// `Σx² = m2 + n·mean²`. Close, not bit-exact; a full rebuild replaces them.
    pub(crate) fn from_welford(n: i64, mean: f64, m2: f64) -> Self {
        let mut s1 = Buckets {
            n_small: n,
            ..Buckets::default()
        };
        s1.small.add(n as f64 * mean);
        let mut s2 = Buckets {
            n_small: n,
            ..Buckets::default()
        };
        s2.small.add(m2);
        s2.small.add(n as f64 * mean * mean);
        Self {
            n,
            s1: DdSum(s1),
            s2,
        }
    }

    /// Sample standard deviation: null below two values, NaN when a NaN or an
    /// infinity is among them.
    pub(crate) fn stddev(&self) -> Option<f64> {
        if self.n < 2 {
            return None;
        }
        if self.s1.0.non_finite() || self.s2.non_finite() {
            return Some(f64::NAN);
        }
        let n = self.n as f64;
        if self.s2.n_big > 0 {
            // Some |x| >= 2^250: work on x · 2^-550 in plain f64.
            let b1 = &self.s1.0;
            let m1 =
                ((b1.small.hi + b1.small.lo) * pow2(-550) + (b1.big.hi + b1.big.lo) * pow2(50)) / n;
            let s2 = &self.s2;
            let m2 = ((s2.small.hi + s2.small.lo) * pow2(-550) * pow2(-550)
                + (s2.big.hi + s2.big.lo))
                / n;
            let var = (m2 - m1 * m1) * n / (n - 1.0);
            let var = if var < 0.0 { 0.0 } else { var };
            return Some(var.sqrt() * pow2(550));
        }
        // Σ(x − mean)² = Σx² − (Σx)²/n, in double-double (every |x| < 2^250).
        let (h1, l1) = (self.s1.0.small.hi, self.s1.0.small.lo);
        let (h2, l2) = (self.s2.small.hi, self.s2.small.lo);
        let sq = dd_mul((h1, l1), (h1, l1));
        let q = dd_div_f64(sq, n);
        let (d_h, d_l) = dd_sub((h2, l2), q);
        let ss = d_h + d_l;
        let ss = if ss < 0.0 { 0.0 } else { ss };
        Some((ss / (n - 1.0)).sqrt())
    }
}

fn dd_mul(a: (f64, f64), b: (f64, f64)) -> (f64, f64) {
    let p = a.0 * b.0;
    let e = a.0.mul_add(b.0, -p);
    let e = e + (a.0 * b.1 + a.1 * b.0);
    two_sum(p, e)
}

fn dd_div_f64(a: (f64, f64), b: f64) -> (f64, f64) {
    let q1 = a.0 / b;
    let p = q1 * b;
    let e = q1.mul_add(b, -p);
    let r = (a.0 - p - e) + a.1;
    two_sum(q1, r / b)
}

fn dd_sub(a: (f64, f64), b: (f64, f64)) -> (f64, f64) {
    let (s, e) = two_sum(a.0, -b.0);
    let e = e + (a.1 - b.1);
    two_sum(s, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sum_that_overflowed_recovers_when_the_values_leave() {
        let mut s = DdSum::default();
        s.add(1.5e308);
        s.add(1.5e308);
        assert_eq!(s.value(), f64::INFINITY);
        s.add(2.0);
        s.remove(1.5e308);
        s.remove(1.5e308);
        assert_eq!(s.value(), 2.0);
        // Real infinities are counted, and leave too.
        s.add(f64::INFINITY);
        assert_eq!(s.value(), f64::INFINITY);
        s.remove(f64::INFINITY);
        assert_eq!(s.value(), 2.0);
    }

    #[test]
    fn sums_are_exact_where_plain_floats_are_not() {
        let mut s = DdSum::default();
        for x in [1e16, 1.0, -1e16, 1.0] {
            s.add(x);
        }
        assert_eq!(s.value(), 2.0);
    }

    #[test]
    fn stddev_slides_and_matches_two_passes() {
        let xs: Vec<f64> = (0..200)
            .map(|i| 1e6 + ((i * 7919) % 101) as f64 * 0.01)
            .collect();
        let two_pass = |v: &[f64]| {
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
        };
        let mut m = Moments::default();
        for (i, x) in xs.iter().enumerate() {
            m.add(*x);
            if i >= 10 {
                m.remove(xs[i - 10]);
            }
            if i >= 10 {
                let want = two_pass(&xs[i - 9..=i]);
                let got = m.stddev().unwrap();
                assert!(
                    (got - want).abs() <= 1e-9 * want.max(1.0),
                    "{i}: {got} vs {want}"
                );
            }
        }
        let mut one = Moments::default();
        one.add(3.0);
        assert_eq!(one.stddev(), None);
        one.add(f64::NAN);
        assert!(one.stddev().unwrap().is_nan());
        // Huge values do not overflow the squares.
        let mut big = Moments::default();
        big.add(1e200);
        big.add(3e200);
        let got = big.stddev().unwrap();
        assert!((got / (2f64.sqrt() * 1e200) - 1.0).abs() < 1e-12, "{got}");
    }
}
