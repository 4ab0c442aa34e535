//! Bank-level differential privacy: each bank clips its update and adds its share of
//! integer Skellam noise before masking.

use super::*;

/// Bank-level differential privacy on the aggregate: each bank clips its whole update
/// to an L2 norm and adds its share of integer Skellam noise to the quantized values,
/// so the sum the coordinator unmasks already carries the noise.
///
/// The unit of privacy is one bank's contribution to a round: the guarantee bounds
/// what the aggregate reveals about whether a bank's update was its real one or zeros
/// (the *zero-out* neighbouring relation; which banks take part is public in secure
/// aggregation anyway).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BankDp {
    /// L2 norm each bank's update is clipped to (in parameter units).
    pub clip_norm: f64,
    /// Noise standard deviation of the aggregate over the L2 sensitivity of one bank's
    /// quantized update (the Gaussian mechanism's `z`).
    pub noise_multiplier: f64,
}

impl BankDp {
    /// Check the ranges.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.clip_norm.is_finite() && self.clip_norm > 0.0) {
            return Err(format!(
                "bank_dp.clip_norm {} must be a positive number",
                self.clip_norm
            ));
        }
        if !(self.noise_multiplier.is_finite()
            && self.noise_multiplier > 0.0
            && self.noise_multiplier <= 100.0)
        {
            return Err(format!(
                "bank_dp.noise_multiplier {}; above 0, at most 100",
                self.noise_multiplier
            ));
        }
        Ok(())
    }
}

/// Integer units of the clip norm: an update of norm `clip_norm` becomes an integer
/// vector of norm 2^16, so rounding (at most √d/2 in norm) costs under 1% for models up
/// to 100,000 parameters.
const BANK_DP_UNITS: f64 = 65_536.0;

/// The training round under bank-level DP ([`BankDp`]), after Agarwal, Kairouz, Liu,
/// "The Skellam Mechanism for Differentially Private Federated Learning", NeurIPS 2021.
///
/// Bank `k` clips `Δ_k` to `‖Δ_k‖ ≤ c`, scales it by `s = 2^16 / c`, rounds to
/// integers and adds `Poisson(μ/2h) − Poisson(μ/2h)` to every value, `h` being the
/// fewest *honest* banks in any sum a coordinator colluding with the banks its
/// policy assumes can compute: [`Params::honest_survivors`]. Skellam noise is closed
/// under sums, and only honest banks' noise protects a sum (colluders know theirs and
/// subtract it), so every sum that can come out carries honest noise of variance at
/// least `h·μ/h = μ` per value, the variance the accountant analyses. (Dividing by the
/// threshold `t` instead left `(t + 1 − c)/t·μ`, 0.71 μ at n = 10.) The values are
/// two's-complement words of Z_(2^32); the constructor checks that the sum plus 20
/// standard deviations of noise stays below 2^31, so it cannot wrap.
///
/// [`Params::honest_survivors`]: crate::protocol::secagg::Params::honest_survivors
///
/// Sensitivities of one bank's integer vector: `Δ2 = 2^16 + √d/2` (clip plus rounding)
/// and `Δ1 = √d·Δ2`; `μ = (z·Δ2)²`. Banks are weighted equally (a row count would be
/// a per-bank value outside the guarantee), and nothing else travels in the vector:
/// no loss, no counts. Each bank logs locally whether its update was clipped.
///
/// ```
/// use quiver_federation::aggregate::{BankDp, BankDpEncoding};
/// use rand::SeedableRng;
///
/// let dp = BankDp { clip_norm: 1.0, noise_multiplier: 1e-6 };
/// let enc = BankDpEncoding::new(2, dp, 2, 3).unwrap();
/// let mut rng = rand::rngs::StdRng::seed_from_u64(7);
/// let (a, clipped) = enc.encode(&[0.3, -0.4], &mut rng).unwrap();
/// assert!(!clipped); // norm 0.5 ≤ 1
/// let (b, clipped) = enc.encode(&[3.0, 4.0], &mut rng).unwrap();
/// assert!(clipped); // norm 5, scaled to 1: (0.6, 0.8)
/// let sum: Vec<u32> = a.iter().zip(&b).map(|(x, y)| x.wrapping_add(*y)).collect();
/// let mean = enc.decode(&sum, 2);
/// assert!((mean[0] - 0.45).abs() < 1e-3 && (mean[1] - 0.2).abs() < 1e-3);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BankDpEncoding {
    params: usize,
    dp: BankDp,
    scale: f64,
    l1: f64,
    l2: f64,
    mu: f64,
    share: f64,
}

impl BankDpEncoding {
    /// For models of `params` parameters, at least `honest` honest banks in every sum
    /// ([`Params::honest_survivors`](crate::protocol::secagg::Params::honest_survivors))
    /// and at most `max_contributors` banks.
    pub fn new(
        params: usize,
        dp: BankDp,
        honest: usize,
        max_contributors: usize,
    ) -> Result<Self, ProtocolError> {
        let threshold = honest;
        dp.validate().map_err(ProtocolError::Config)?;
        if params == 0
            || threshold == 0
            || threshold > max_contributors
            || max_contributors > crate::protocol::MAX_CLIENTS
        {
            return Err(ProtocolError::Config(format!(
                "bank-level DP needs parameters (got {params}) and 1 ≤ threshold {threshold} ≤ banks {max_contributors}"
            )));
        }
        let d = params as f64;
        let l2 = BANK_DP_UNITS + d.sqrt() / 2.0;
        let l1 = d.sqrt() * l2;
        let mu = (dp.noise_multiplier * l2).powi(2);
        // Each bank's share: the `honest` banks that every accepted sum holds carry μ.
        let share = mu / threshold as f64;
        let n = max_contributors as f64;
        let worst = n * (BANK_DP_UNITS + 0.5) + 20.0 * (n * share).sqrt();
        if worst >= f64::from(i32::MAX) {
            return Err(ProtocolError::Config(format!(
                "bank_dp.noise_multiplier {} with {max_contributors} banks and threshold {threshold} needs more than 32 bits per value; lower it or raise the threshold",
                dp.noise_multiplier
            )));
        }
        Ok(Self {
            params,
            dp,
            scale: BANK_DP_UNITS / dp.clip_norm,
            l1,
            l2,
            mu,
            share,
        })
    }

    /// L1 and L2 sensitivity of one bank's integer vector, and the noise variance per
    /// value that the honest banks of every accepted sum carry: the accountant's
    /// inputs.
    pub fn accounting(&self) -> (f64, f64, f64) {
        (self.l1, self.l2, self.mu)
    }

    /// Words in the vector.
    pub fn len(&self) -> usize {
        self.params
    }

    /// Whether the vector is empty (never: `params ≥ 1`).
    pub fn is_empty(&self) -> bool {
        self.params == 0
    }

    /// One bank's clipped, quantized, noised update; also whether it was clipped.
    pub fn encode<R: rand::Rng + ?Sized>(
        &self,
        delta: &[f32],
        rng: &mut R,
    ) -> Result<(Vec<u32>, bool), ProtocolError> {
        use rand_distr::{Distribution, Poisson};
        if delta.len() != self.params {
            return Err(ProtocolError::InvalidInput(format!(
                "update of {} values for a model of {}",
                delta.len(),
                self.params
            )));
        }
        if let Some(i) = delta.iter().position(|v| !v.is_finite()) {
            return Err(ProtocolError::InvalidInput(format!(
                "value {i} of the update is {}; updates must be finite",
                delta[i]
            )));
        }
        let norm = delta
            .iter()
            .map(|v| f64::from(*v).powi(2))
            .sum::<f64>()
            .sqrt();
        let clipped = norm > self.dp.clip_norm;
        let factor = if clipped {
            self.scale * self.dp.clip_norm / norm
        } else {
            self.scale
        };
        let poisson = Poisson::new(self.share / 2.0)
            .map_err(|e| ProtocolError::Config(format!("Skellam noise: {e}")))?;
        let words = delta
            .iter()
            .map(|v| {
                let x = (f64::from(*v) * factor).round() as i64;
                let noise = poisson.sample(rng) as i64 - poisson.sample(rng) as i64;
                // Two's complement in Z_(2^32); the sum is checked for headroom.
                (x + noise) as u32
            })
            .collect();
        Ok((words, clipped))
    }

    /// The mean update over `contributors` banks from the aggregated sum.
    pub fn decode(&self, sum: &[u32], contributors: usize) -> Vec<f64> {
        let k = contributors.max(1) as f64;
        sum.iter()
            .map(|w| f64::from(*w as i32) / self.scale / k)
            .collect()
    }
}
