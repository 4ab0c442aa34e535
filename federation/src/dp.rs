//! Differential privacy: the Rényi-DP accountant of DP-SGD and the privacy budget.
//!
//! The unit of privacy is one customer record inside one bank. Each bank trains with
//! DP-SGD (per-example clipping, Gaussian noise, Poisson subsampling; see
//! [`crate::train`]) and keeps its own [`RdpAccountant`] over every local step of every
//! round: the guarantee holds for that bank's records whatever the coordinator or the
//! other banks do, because the noise is added inside the bank before anything leaves.
//!
//! The accountant is the RDP analysis of the Poisson-subsampled Gaussian mechanism
//! (Mironov, Talwar, Zhang, "Rényi Differential Privacy of the Sampled Gaussian
//! Mechanism", 2019, §3.3), exact for integer and fractional orders, with the RDP to
//! (ε, δ) conversion of Balle et al., "Hypothesis Testing Interpretations and Renyi
//! Differential Privacy", AISTATS 2020, Theorem 21. It reproduces Opacus'
//! published figure (see the tests).
//!
//! Bank-level DP is an option on top ([`crate::aggregate::BankDpEncoding`]): each bank
//! clips its whole update to an L2 norm and adds its share of Skellam noise to the
//! quantized values, so the securely aggregated sum carries noise that no single party
//! chose. Its accountant is [`RdpAccountant::for_skellam`] with
//! [`RdpAccountant::compose_skellam`] (Agarwal, Kairouz, Liu, "The Skellam Mechanism
//! for Differentially Private Federated Learning", NeurIPS 2021, Theorem 3.5).
//!
//! ```
//! use quiver_federation::dp::RdpAccountant;
//!
//! let mut acc = RdpAccountant::new();
//! // 2250 steps at sampling rate 0.04 with noise multiplier 1.5.
//! acc.compose_subsampled_gaussian(0.04, 1.5, 2250).unwrap();
//! let (eps, _order) = acc.epsilon(1e-5).unwrap();
//! assert!((eps - 7.3291).abs() < 1e-3);
//! ```

use serde::{Deserialize, Serialize};

/// Why a privacy computation was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DpError {
    /// A parameter is out of range.
    #[error("differential privacy: {0}")]
    Invalid(String),
    /// One more round would spend more than the budget.
    #[error(
        "privacy budget: one more round would spend {unit} ε = {next:.4} of the budget ε = {budget} (δ = {delta:e}); ε spent so far {spent:.4}"
    )]
    BudgetExhausted {
        /// Which guarantee: `record-level` (DP-SGD) or `bank-level` (Skellam).
        unit: &'static str,
        /// ε spent so far.
        spent: f64,
        /// ε after one more round.
        next: f64,
        /// The budget's ε.
        budget: f64,
        /// The budget's δ.
        delta: f64,
    },
}

/// A privacy budget: training stops before ε would pass `epsilon` at `delta`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Largest ε spent (default 2.5).
    pub epsilon: f64,
    /// δ of the guarantee (default 1e-5; keep it below 1 / records).
    pub delta: f64,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            epsilon: 2.5,
            delta: 1e-5,
        }
    }
}

impl Budget {
    /// Check the ranges: ε > 0 and finite, 0 < δ < 1.
    pub fn validate(&self) -> Result<(), DpError> {
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return Err(DpError::Invalid(format!(
                "budget epsilon {} must be a positive number",
                self.epsilon
            )));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(DpError::Invalid(format!(
                "budget delta {} must be in (0, 1)",
                self.delta
            )));
        }
        Ok(())
    }
}

/// The RDP orders Opacus and TF Privacy use by default: 1.1 to 10.9 by 0.1, then 12
/// to 63.
pub fn default_orders() -> Vec<f64> {
    (1..100)
        .map(|x| 1.0 + f64::from(x) / 10.0)
        .chain((12..64).map(f64::from))
        .collect()
}

/// Rényi-DP accountant over a fixed set of orders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RdpAccountant {
    orders: Vec<f64>,
    rdp: Vec<f64>,
}

impl Default for RdpAccountant {
    fn default() -> Self {
        Self::new()
    }
}

impl RdpAccountant {
    /// An accountant over [`default_orders`] with nothing spent.
    pub fn new() -> Self {
        Self::with_orders(default_orders()).expect("the default orders are valid")
    }

    /// An accountant over `orders` (each > 1 and finite).
    pub fn with_orders(orders: Vec<f64>) -> Result<Self, DpError> {
        if orders.is_empty() || orders.len() > 1000 {
            return Err(DpError::Invalid(format!(
                "{} RDP orders; 1 to 1000",
                orders.len()
            )));
        }
        if let Some(o) = orders.iter().find(|o| !(o.is_finite() && **o > 1.0)) {
            return Err(DpError::Invalid(format!(
                "RDP order {o} must be a finite number above 1"
            )));
        }
        let rdp = vec![0.0; orders.len()];
        Ok(Self { orders, rdp })
    }

    /// Compose `steps` runs of the Gaussian mechanism with noise multiplier `sigma`
    /// (noise standard deviation over L2 sensitivity) on a Poisson sample of rate `q`.
    pub fn compose_subsampled_gaussian(
        &mut self,
        q: f64,
        sigma: f64,
        steps: u64,
    ) -> Result<(), DpError> {
        let curve = subsampled_gaussian_curve(&self.orders, q, sigma)?;
        self.add(&curve, steps);
        Ok(())
    }

    /// Compose `times` runs of a mechanism whose RDP at each order is `curve`.
    fn add(&mut self, curve: &[f64], times: u64) {
        for (r, c) in self.rdp.iter_mut().zip(curve) {
            *r += c * times as f64;
        }
    }

    /// ε at `delta` after `compose` on a copy: what spending would cost, unspent.
    fn epsilon_if(
        &self,
        delta: f64,
        compose: impl FnOnce(&mut Self) -> Result<(), DpError>,
    ) -> Result<f64, DpError> {
        let mut next = self.clone();
        compose(&mut next)?;
        Ok(next.epsilon(delta)?.0)
    }

    /// An accountant over the integer orders 2 to 256, the orders the Skellam bound
    /// holds for.
    pub fn for_skellam() -> Self {
        Self::with_orders((2..=256).map(f64::from).collect()).expect("valid orders")
    }

    /// Compose `releases` runs of the Skellam mechanism: integer noise of variance
    /// `mu` per coordinate on an integer vector of L1 sensitivity `l1` and L2
    /// sensitivity `l2`. Every order of this accountant must be an integer.
    pub fn compose_skellam(
        &mut self,
        l1: f64,
        l2: f64,
        mu: f64,
        releases: u64,
    ) -> Result<(), DpError> {
        let curve = skellam_curve(&self.orders, l1, l2, mu)?;
        self.add(&curve, releases);
        Ok(())
    }

    /// ε at `delta` after `releases` more Skellam releases, without composing them.
    pub fn epsilon_after_skellam(
        &self,
        l1: f64,
        l2: f64,
        mu: f64,
        releases: u64,
        delta: f64,
    ) -> Result<f64, DpError> {
        self.epsilon_if(delta, |a| a.compose_skellam(l1, l2, mu, releases))
    }

    /// The smallest ε over the orders at `delta`, and the order that gives it.
    pub fn epsilon(&self, delta: f64) -> Result<(f64, f64), DpError> {
        epsilon_of(&self.orders, &self.rdp, delta)
    }

    /// ε at `delta` if `steps` more steps at `(q, sigma)` were composed, without
    /// composing them.
    pub fn epsilon_after(
        &self,
        q: f64,
        sigma: f64,
        steps: u64,
        delta: f64,
    ) -> Result<f64, DpError> {
        self.epsilon_if(delta, |a| a.compose_subsampled_gaussian(q, sigma, steps))
    }
}

fn epsilon_of(orders: &[f64], rdp: &[f64], delta: f64) -> Result<(f64, f64), DpError> {
    if !(delta > 0.0 && delta < 1.0) {
        return Err(DpError::Invalid(format!("delta {delta} must be in (0, 1)")));
    }
    if rdp.iter().all(|r| *r == 0.0) {
        // Nothing composed: nothing spent (the conversion alone would say ε > 0).
        return Ok((0.0, orders[0]));
    }
    let mut best = (f64::INFINITY, orders[0]);
    for (&a, &r) in orders.iter().zip(rdp) {
        // Balle et al. 2020, Theorem 21.
        let eps = r - (delta.ln() + a.ln()) / (a - 1.0) + ((a - 1.0) / a).ln();
        if eps.is_finite() && eps < best.0 {
            best = (eps, a);
        }
    }
    Ok((best.0.max(0.0), best.1))
}

/// RDP of one Poisson-subsampled Gaussian step at each order.
pub fn subsampled_gaussian_curve(orders: &[f64], q: f64, sigma: f64) -> Result<Vec<f64>, DpError> {
    if !(0.0..=1.0).contains(&q) {
        return Err(DpError::Invalid(format!(
            "sampling rate {q} must be in [0, 1]"
        )));
    }
    if !(sigma.is_finite() && sigma > 0.0) {
        return Err(DpError::Invalid(format!(
            "noise multiplier {sigma} must be a positive number"
        )));
    }
    Ok(orders.iter().map(|&a| rdp_one(q, sigma, a)).collect())
}

/// RDP of one Skellam release at each (integer) order: Agarwal, Kairouz, Liu 2021,
/// Theorem 3.5, for noise `Poisson(mu/2) − Poisson(mu/2)` (variance `mu`) per
/// coordinate and sensitivities `l1`, `l2` in integer units:
/// `ε(α) ≤ α·l2²/(2μ) + min(((2α−1)·l2² + 6·l1)/(4μ²), 3·l1/(2μ))`.
pub fn skellam_curve(orders: &[f64], l1: f64, l2: f64, mu: f64) -> Result<Vec<f64>, DpError> {
    if !(l1.is_finite() && l2.is_finite() && l1 >= l2 && l2 > 0.0) {
        return Err(DpError::Invalid(format!(
            "Skellam sensitivities l1 {l1}, l2 {l2}: need l1 ≥ l2 > 0"
        )));
    }
    if !(mu.is_finite() && mu > 0.0) {
        return Err(DpError::Invalid(format!(
            "Skellam variance {mu} must be a positive number"
        )));
    }
    orders
        .iter()
        .map(|&a| {
            if a.fract() != 0.0 {
                return Err(DpError::Invalid(format!(
                    "the Skellam bound holds for integer orders; got {a}"
                )));
            }
            let l22 = l2 * l2;
            Ok(a * l22 / (2.0 * mu)
                + (((2.0 * a - 1.0) * l22 + 6.0 * l1) / (4.0 * mu * mu)).min(3.0 * l1 / (2.0 * mu)))
        })
        .collect()
}

fn rdp_one(q: f64, sigma: f64, alpha: f64) -> f64 {
    if q == 0.0 {
        return 0.0;
    }
    if q == 1.0 {
        return alpha / (2.0 * sigma * sigma);
    }
    let log_a = if alpha.fract() == 0.0 && alpha < 1e6 {
        log_a_int(q, sigma, alpha as u64)
    } else {
        log_a_frac(q, sigma, alpha)
    };
    log_a / (alpha - 1.0)
}

/// log(exp(a) + exp(b)).
fn log_add(a: f64, b: f64) -> f64 {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    (lo - hi).exp().ln_1p() + hi
}

/// log(exp(a) - exp(b)), a ≥ b.
fn log_sub(a: f64, b: f64) -> f64 {
    if b == f64::NEG_INFINITY {
        return a;
    }
    if a <= b {
        return f64::NEG_INFINITY;
    }
    let d = (a - b).exp_m1();
    if d.is_infinite() { a } else { d.ln() + b }
}

/// log A_α for integer α (Mironov et al. 2019, §3.3): a binomial sum.
fn log_a_int(q: f64, sigma: f64, alpha: u64) -> f64 {
    let (lq, l1q) = (q.ln(), (-q).ln_1p());
    let mut log_a = f64::NEG_INFINITY;
    let mut log_binom = 0.0;
    for i in 0..=alpha {
        if i > 0 {
            log_binom += ((alpha - i + 1) as f64).ln() - (i as f64).ln();
        }
        let fi = i as f64;
        let s =
            log_binom + fi * lq + (alpha - i) as f64 * l1q + (fi * fi - fi) / (2.0 * sigma * sigma);
        log_a = log_add(log_a, s);
    }
    log_a
}

/// log A_α for fractional α: the two half-line integrals as series (Mironov et al.
/// 2019, §3.3), summed until their terms fall below e^-30.
fn log_a_frac(q: f64, sigma: f64, alpha: f64) -> f64 {
    let (mut log_a0, mut log_a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let (lq, l1q) = (q.ln(), (-q).ln_1p());
    let mut coef = 1.0f64; // binom(alpha, i), by recurrence
    let s2 = std::f64::consts::SQRT_2 * sigma;
    for i in 0..100_000u32 {
        let fi = f64::from(i);
        if i > 0 {
            coef *= (alpha - fi + 1.0) / fi;
        }
        let log_coef = coef.abs().ln();
        let j = alpha - fi;
        let log_t0 = log_coef + fi * lq + j * l1q;
        let log_t1 = log_coef + j * lq + fi * l1q;
        let log_e0 = 0.5f64.ln() + log_erfc((fi - z0) / s2);
        let log_e1 = 0.5f64.ln() + log_erfc((z0 - j) / s2);
        let log_s0 = log_t0 + (fi * fi - fi) / (2.0 * sigma * sigma) + log_e0;
        let log_s1 = log_t1 + (j * j - j) / (2.0 * sigma * sigma) + log_e1;
        if coef > 0.0 {
            log_a0 = log_add(log_a0, log_s0);
            log_a1 = log_add(log_a1, log_s1);
        } else {
            log_a0 = log_sub(log_a0, log_s0);
            log_a1 = log_sub(log_a1, log_s1);
        }
        if log_s0.max(log_s1) < -30.0 {
            break;
        }
    }
    log_add(log_a0, log_a1)
}

/// log(erfc(x)), accurate far into the tail where erfc underflows.
fn log_erfc(x: f64) -> f64 {
    if x < 5.0 {
        libm::erfc(x).ln()
    } else {
        log_erfc_tail(x)
    }
}

fn log_erfc_tail(x: f64) -> f64 {
    // erfc(x) = exp(-x²)/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + ...)))).
    let mut t = x;
    for k in (1..=60).rev() {
        t = x + (f64::from(k) / 2.0) / t;
    }
    -x * x - 0.5 * std::f64::consts::PI.ln() - t.ln()
}

/// The smallest noise multiplier (to 1e-3) for which `steps` steps at sampling rate
/// `q` stay within `budget`; an error when even a noise multiplier of 100 does not.
pub fn calibrate_noise(q: f64, steps: u64, budget: Budget) -> Result<f64, DpError> {
    budget.validate()?;
    let eps = |sigma: f64| -> Result<f64, DpError> {
        let mut a = RdpAccountant::new();
        a.compose_subsampled_gaussian(q, sigma, steps)?;
        Ok(a.epsilon(budget.delta)?.0)
    };
    let (mut lo, mut hi) = (0.05, 100.0);
    if eps(hi)? > budget.epsilon {
        return Err(DpError::Invalid(format!(
            "{steps} steps at sampling rate {q} cannot fit ε = {} even with noise multiplier {hi}",
            budget.epsilon
        )));
    }
    while hi - lo > 1e-3 {
        let mid = 0.5 * (lo + hi);
        if eps(mid)? > budget.epsilon {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_erfc_is_continuous_at_the_switch() {
        for x in [5.0, 6.5] {
            let (a, b) = (libm::erfc(x).ln(), log_erfc_tail(x));
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        // Deep tail against the asymptotic series.
        let x: f64 = 40.0;
        let asym = -x * x - (x * std::f64::consts::PI.sqrt()).ln() + (1.0 - 0.5 / (x * x)).ln();
        assert!((log_erfc(x) - asym).abs() < 1e-6);
    }

    #[test]
    fn full_batch_gaussian_is_alpha_over_two_sigma_squared() {
        let c = subsampled_gaussian_curve(&[2.0, 8.5], 1.0, 2.0).unwrap();
        assert_eq!(c, vec![2.0 / 8.0, 8.5 / 8.0]);
    }

    #[test]
    fn integer_and_fractional_series_agree_near_an_integer() {
        // A_α is continuous in α: the fractional series at 3 ± 1e-7 brackets the
        // integer binomial sum at 3.
        let (q, s) = (0.01, 1.1);
        let int = log_a_int(q, s, 3);
        let below = log_a_frac(q, s, 3.0 - 1e-7);
        let above = log_a_frac(q, s, 3.0 + 1e-7);
        assert!((int - below).abs() < 1e-6 && (int - above).abs() < 1e-6);
    }

    /// log P(k) of `Poisson(mu/2) − Poisson(mu/2)`, summed exactly over the second
    /// Poisson's support (no Bessel approximation).
    fn skellam_log_pmf(k: i64, mu: f64) -> f64 {
        let lam = mu / 2.0;
        let log_pois = |j: i64| -> f64 {
            if j < 0 {
                return f64::NEG_INFINITY;
            }
            let j = j as f64;
            j * lam.ln() - lam - libm::lgamma(j + 1.0)
        };
        let span = (lam.sqrt() * 40.0) as i64 + 50;
        let centre = lam as i64;
        let mut acc = f64::NEG_INFINITY;
        for j in (centre - span).max(0)..=centre + span {
            acc = log_add(acc, log_pois(j + k.max(0)) + log_pois(j + (-k).max(0)));
        }
        acc
    }

    #[test]
    fn skellam_bound_is_above_the_exact_renyi_divergence_and_close_to_it() {
        // D_α(Sk shifted by Δ ‖ Sk) = 1/(α−1) · log Σ_k P(k−Δ)^α P(k)^(1−α), summed
        // over the support; the closed-form bound must never be below it.
        for (mu, shift) in [(50.0, 1i64), (200.0, 3), (400.0, 10)] {
            let span = ((mu as f64).sqrt() * 30.0) as i64 + 3 * shift;
            let logp: Vec<(f64, f64)> = (-span..=span)
                .map(|k| (skellam_log_pmf(k - shift, mu), skellam_log_pmf(k, mu)))
                .collect();
            let orders: Vec<f64> = (2..=12).map(f64::from).collect();
            let bound = skellam_curve(&orders, shift as f64, shift as f64, mu).unwrap();
            for (a, b) in orders.iter().zip(bound) {
                let mut acc = f64::NEG_INFINITY;
                for (lp, lq) in &logp {
                    acc = log_add(acc, a * lp + (1.0 - a) * lq);
                }
                let exact = acc / (a - 1.0);
                let gaussian = a * (shift * shift) as f64 / (2.0 * mu);
                assert!(
                    b >= exact,
                    "μ {mu} Δ {shift} α {a}: bound {b} < exact {exact}"
                );
                assert!(
                    b <= 1.5 * exact && exact > 0.5 * gaussian,
                    "μ {mu} Δ {shift} α {a}: bound {b}, exact {exact}, Gaussian {gaussian}"
                );
            }
        }
        assert!(skellam_curve(&[2.5], 1.0, 1.0, 10.0).is_err());
        assert!(skellam_curve(&[2.0], 1.0, 2.0, 10.0).is_err());
        assert!(skellam_curve(&[2.0], 1.0, 1.0, 0.0).is_err());
    }

    #[test]
    fn skellam_accounting_composes_over_releases() {
        let mut one = RdpAccountant::for_skellam();
        one.compose_skellam(10.0, 10.0, 1e4, 4).unwrap();
        let mut four = RdpAccountant::for_skellam();
        for _ in 0..4 {
            four.compose_skellam(10.0, 10.0, 1e4, 1).unwrap();
        }
        assert_eq!(one.epsilon(1e-5).unwrap(), four.epsilon(1e-5).unwrap());
        let e1 = RdpAccountant::for_skellam()
            .epsilon_after_skellam(10.0, 10.0, 1e4, 1, 1e-5)
            .unwrap();
        assert!(e1 < one.epsilon(1e-5).unwrap().0);
        // The default accountant has fractional orders: refused, not silently wrong.
        assert!(
            RdpAccountant::new()
                .compose_skellam(1.0, 1.0, 10.0, 1)
                .is_err()
        );
    }

    #[test]
    fn calibration_meets_the_budget() {
        let b = Budget::default();
        let sigma = calibrate_noise(0.01, 500, b).unwrap();
        let mut a = RdpAccountant::new();
        a.compose_subsampled_gaussian(0.01, sigma, 500).unwrap();
        let eps = a.epsilon(b.delta).unwrap().0;
        assert!(
            eps <= b.epsilon && eps > b.epsilon - 0.05,
            "{sigma} gives {eps}"
        );
    }
}
