//! Numeric accumulators shared by the training-set kernel (`plan::kernel`) and online
//! serving (`online::record`), so both compute sums, means and standard deviations with
//! the same arithmetic, bit for bit, and convert decimals the same way.
//!
//! - [`DdSum`]: a double-double sum with add *and* remove (sliding windows), counting
//!   NaN and infinities apart. Finite values of magnitude `>= 2^500` are kept in a
//!   second sum scaled by `2^-600`, so a window whose running sum once overflowed
//!   returns to a finite value when the large values leave it (a plain running sum
//!   stays at ±inf forever).
//! - [`Moments`]: count, Σx and Σx² as [`DdSum`]s (squares taken exactly with FMA), so
//!   the sample standard deviation is O(1) per added or removed row, and the result is
//!   the same whether rows were added in one pass or slid through a window.
//! - [`decimal_to_f64`]: Arrow's own decimal-to-float conversion, which the kernel
//!   gets through `cast` and serving calls directly.

use arrow::datatypes::Decimal128Type;

/// `2^k` as f64 (for `|k| < 1023`).
fn pow2(k: i32) -> f64 {
    f64::from_bits(((1023 + k) as u64) << 52)
}

/// Values at least this large go to the scaled sum.
fn big_threshold() -> f64 {
    pow2(500)
}

/// Values squared at least this large go to the scaled sum of squares.
fn big_sq_threshold() -> f64 {
    pow2(250)
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
}

/// A double-double sum with removal; see the module docs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct DdSum {
    small: Dd,
    /// Sum of `x · 2^-600` for the large values.
    big: Dd,
    nan: u32,
    pos_inf: u32,
    neg_inf: u32,
}

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
            let counter = if x.is_nan() {
                &mut self.nan
            } else if x > 0.0 {
                &mut self.pos_inf
            } else {
                &mut self.neg_inf
            };
            *counter = counter.wrapping_add_signed(sign);
            return;
        }
        let x = if sign < 0 { -x } else { x };
        if x.abs() >= big_threshold() {
            self.big.add(x * pow2(-600));
        } else {
            self.small.add(x);
        }
    }

    /// The state as plain numbers, for storage: small (hi, lo), big (hi, lo), and the
    /// NaN, +inf and −inf counts.
    pub(crate) fn to_parts(self) -> ([f64; 4], [u32; 3]) {
        (
            [self.small.hi, self.small.lo, self.big.hi, self.big.lo],
            [self.nan, self.pos_inf, self.neg_inf],
        )
    }

    /// The state [`to_parts`](Self::to_parts) gave.
    pub(crate) fn from_parts(f: [f64; 4], c: [u32; 3]) -> Self {
        Self {
            small: Dd { hi: f[0], lo: f[1] },
            big: Dd { hi: f[2], lo: f[3] },
            nan: c[0],
            pos_inf: c[1],
            neg_inf: c[2],
        }
    }

    /// Fold in another sum.
    pub(crate) fn combine(&mut self, other: &DdSum) {
        self.small.add(other.small.hi);
        self.small.add(other.small.lo);
        self.big.add(other.big.hi);
        self.big.add(other.big.lo);
        self.nan = self.nan.wrapping_add(other.nan);
        self.pos_inf = self.pos_inf.wrapping_add(other.pos_inf);
        self.neg_inf = self.neg_inf.wrapping_add(other.neg_inf);
    }

    /// Add `x²`, computed exactly (for [`Moments`]).
    fn add_square(&mut self, x: f64, sign: i32) {
        if !x.is_finite() {
            // The square of NaN is NaN; of ±inf, +inf.
            self.apply(if x.is_nan() { x } else { f64::INFINITY }, sign);
            return;
        }
        let s = if sign < 0 { -1.0 } else { 1.0 };
        if x.abs() >= big_sq_threshold() {
            let y = x * pow2(-300);
            let p = y * y;
            self.big.add(s * p);
            self.big.add(s * y.mul_add(y, -p));
        } else {
            let p = x * x;
            self.small.add(s * p);
            self.small.add(s * x.mul_add(x, -p));
        }
    }

    /// Whether a NaN or an infinity is in the sum.
    fn non_finite(&self) -> bool {
        self.nan > 0 || self.pos_inf > 0 || self.neg_inf > 0
    }

    /// The finite part as a double-double `(hi, lo)`; hi may overflow to ±inf.
    fn finite_dd(&self) -> (f64, f64) {
        if self.big == Dd::default() {
            return (self.small.hi, self.small.lo);
        }
        let scale = pow2(600);
        let (bh, bl) = (self.big.hi * scale, self.big.lo * scale);
        if !bh.is_finite() {
            return (bh, 0.0);
        }
        let mut d = Dd { hi: bh, lo: bl };
        d.add(self.small.hi);
        d.add(self.small.lo);
        (d.hi, d.lo)
    }

    /// The sum, rounded to f64: NaN if a NaN (or both infinities) was added, ±inf if
    /// one infinity was or the finite sum overflows.
    pub(crate) fn value(&self) -> f64 {
        if self.nan > 0 || (self.pos_inf > 0 && self.neg_inf > 0) {
            f64::NAN
        } else if self.pos_inf > 0 {
            f64::INFINITY
        } else if self.neg_inf > 0 {
            f64::NEG_INFINITY
        } else {
            let (hi, lo) = self.finite_dd();
            hi + lo
        }
    }
}

/// Count, Σx and Σx² of the non-null values of a window; the sample standard deviation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Moments {
    pub(crate) n: i64,
    s1: DdSum,
    s2: DdSum,
}

impl Moments {
    /// Add one value.
    pub(crate) fn add(&mut self, x: f64) {
        self.n += 1;
        self.s1.add(x);
        self.s2.add_square(x, 1);
    }

    /// Remove a value that was added.
    pub(crate) fn remove(&mut self, x: f64) {
        self.n -= 1;
        self.s1.remove(x);
        self.s2.add_square(x, -1);
    }

    /// Fold in the moments of other rows.
    pub(crate) fn combine(&mut self, other: &Moments) {
        self.n += other.n;
        self.s1.combine(&other.s1);
        self.s2.combine(&other.s2);
    }

    /// The count and the two sums, for storage.
    pub(crate) fn to_parts(self) -> (i64, DdSum, DdSum) {
        (self.n, self.s1, self.s2)
    }

    /// The moments [`to_parts`](Self::to_parts) gave.
    pub(crate) fn from_parts(n: i64, s1: DdSum, s2: DdSum) -> Self {
        Self { n, s1, s2 }
    }

    /// Moments from a count, mean and sum of squared deviations (Welford's state, as
    /// online records of an earlier release stored it): `Σx = n·mean`,
    /// `Σx² = m2 + n·mean²`. Close, not bit-exact; a full rebuild replaces them.
    pub(crate) fn from_welford(n: i64, mean: f64, m2: f64) -> Self {
        let mut s1 = DdSum::default();
        let mut s2 = DdSum::default();
        s1.add(n as f64 * mean);
        s2.add(m2);
        s2.add(n as f64 * mean * mean);
        Self { n, s1, s2 }
    }

    /// Sample standard deviation: null below two values, NaN when a NaN or an
    /// infinity is among them.
    pub(crate) fn stddev(&self) -> Option<f64> {
        if self.n < 2 {
            return None;
        }
        if self.s1.non_finite() || self.s2.non_finite() {
            return Some(f64::NAN);
        }
        let n = self.n as f64;
        let (h1, l1) = self.s1.finite_dd();
        let (h2, l2) = self.s2.finite_dd();
        if !(h1.is_finite() && h2.is_finite()) {
            // Σx² overflows f64: scale both sums down by 2^-600 and back.
            let scaled = |s: &DdSum, k: i32| {
                let (h, l) = (s.big.hi, s.big.lo);
                (h + l) * pow2(k) + (s.small.hi + s.small.lo) * pow2(k - 600)
            };
            let m1 = scaled(&self.s1, 300) / n; // mean · 2^-300
            let m2 = scaled(&self.s2, 0) / n; // E[x²] · 2^-600
            let var = ((m2 - m1 * m1) * n / (n - 1.0)).max(0.0);
            return Some(var.sqrt() * pow2(300));
        }
        // Σ(x − mean)² = Σx² − (Σx)²/n, in double-double.
        let (sq_h, sq_l) = dd_mul((h1, l1), (h1, l1));
        let (q_h, q_l) = dd_div_f64((sq_h, sq_l), n);
        let (d_h, d_l) = dd_sub((h2, l2), (q_h, q_l));
        let ss = (d_h + d_l).max(0.0);
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

/// A Decimal128 value with `scale` as f64, exactly as Arrow's `cast` computes it.
pub(crate) fn decimal_to_f64(value: i128, scale: i8) -> f64 {
    arrow::compute::kernels::cast::single_decimal_to_float_lossy::<Decimal128Type, _>(
        &|x: i128| x as f64,
        value,
        i32::from(scale),
    )
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

    #[test]
    fn decimals_convert_like_arrow_cast() {
        use arrow::array::{AsArray, Decimal128Array};
        use arrow::datatypes::{DataType, Float64Type};
        let raw = [12345i128, -1, 0, 99_999_999_999];
        let arr = Decimal128Array::from(raw.to_vec())
            .with_precision_and_scale(12, 2)
            .unwrap();
        let cast = arrow::compute::cast(&arr, &DataType::Float64).unwrap();
        let cast = cast.as_primitive::<Float64Type>();
        for (i, r) in raw.iter().enumerate() {
            assert_eq!(decimal_to_f64(*r, 2).to_bits(), cast.value(i).to_bits());
        }
        assert_eq!(cast.len(), 4);
    }
}
