//! What travels inside the masked vector, and what the coordinator does with the sum.
//!
//! Everything a bank contributes to a round — its weighted update, its sample counts,
//! its loss — is packed into **one** vector of words and secure-aggregated together,
//! so the coordinator only ever sees sums over the surviving banks; no count or metric
//! travels in the clear. A [`Layout`] names the segments of that vector; each real
//! segment has its own [`Quantizer`] (clip range, headroom for the number of banks)
//! and counts are exact integers.
//!
//! FedAvg weights are the banks' row counts: bank `k` sends `w_k·Δ_k` with
//! `w_k = n_k / max_rows` (`max_rows` is public, so `w_k ≤ 1` and the clip range of
//! `Δ` also bounds `w_k·Δ_k`) and `n_k` as a count; the coordinator divides
//! `Σ w_k Δ_k` by `Σ n_k / max_rows`.
//!
//! ```
//! use quiver_federation::aggregate::{Layout, Part, Segment};
//!
//! let layout = Layout::new(
//!     vec![Segment::real("delta", 3, 1.0), Segment::count("rows", 1)],
//!     10,
//! ).unwrap();
//! let (words, clipped) = layout.encode(&[Part::Real(&[0.5, -0.25, 2.0]), Part::Count(&[40])]).unwrap();
//! assert_eq!(clipped, 1); // 2.0 was clipped to 1.0, and it is reported
//! let parts = layout.decode(&words, 1);
//! assert!((parts[0][2] - 1.0).abs() < 1e-6);
//! assert_eq!(parts[1], vec![40.0]);
//! ```

use serde::{Deserialize, Serialize};

use crate::protocol::ProtocolError;
use crate::protocol::quantize::Quantizer;
use crate::train::{LocalUpdate, Standardizer, transformed_moments};

mod bank_dp;
mod moments;
mod strategy;
mod update;
pub use bank_dp::*;
pub use moments::*;
pub use strategy::*;
pub use update::*;

/// One named run of words in the masked vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Name (for errors and reports).
    pub name: &'static str,
    /// Values.
    pub len: usize,
    /// Real values clipped to `[-clip, clip]`, or exact counts.
    pub kind: SegmentKind,
}

/// How a segment's values are encoded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SegmentKind {
    /// Reals clipped to `[-clip, clip]` and quantized.
    Real {
        /// Clip range.
        clip: f64,
    },
    /// Non-negative integers, exact.
    Count,
}

impl Segment {
    /// A segment of `len` reals clipped to `[-clip, clip]`.
    pub fn real(name: &'static str, len: usize, clip: f64) -> Self {
        Self {
            name,
            len,
            kind: SegmentKind::Real { clip },
        }
    }

    /// A segment of `len` exact counts.
    pub fn count(name: &'static str, len: usize) -> Self {
        Self {
            name,
            len,
            kind: SegmentKind::Count,
        }
    }
}

/// One segment's values to encode.
#[derive(Debug, Clone, Copy)]
pub enum Part<'a> {
    /// For a [`SegmentKind::Real`] segment.
    Real(&'a [f32]),
    /// For a [`SegmentKind::Count`] segment.
    Count(&'a [u64]),
}

/// The segments of one round's vector, for at most `max_contributors` banks.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    segments: Vec<(Segment, Quantizer)>,
}

impl Layout {
    /// A layout; every real segment needs a positive, finite clip.
    pub fn new(segments: Vec<Segment>, max_contributors: usize) -> Result<Self, ProtocolError> {
        let segments = segments
            .into_iter()
            .map(|s| {
                let clip = match s.kind {
                    SegmentKind::Real { clip } => clip,
                    SegmentKind::Count => 1.0,
                };
                Ok((s, Quantizer::new(clip, max_contributors)?))
            })
            .collect::<Result<Vec<_>, ProtocolError>>()?;
        Ok(Self { segments })
    }

    /// Words in the vector.
    pub fn len(&self) -> usize {
        self.segments.iter().map(|(s, _)| s.len).sum()
    }

    /// Whether the vector is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Encode one bank's parts (one per segment, in order); returns the words and
    /// how many reals were clipped. NaN, infinities, wrong lengths and counts too
    /// large for the headroom are errors naming the segment.
    pub fn encode(&self, parts: &[Part<'_>]) -> Result<(Vec<u32>, usize), ProtocolError> {
        if parts.len() != self.segments.len() {
            return Err(ProtocolError::InvalidInput(format!(
                "{} parts for {} segments",
                parts.len(),
                self.segments.len()
            )));
        }
        let mut words = Vec::with_capacity(self.len());
        let mut clipped = 0;
        for ((seg, q), part) in self.segments.iter().zip(parts) {
            let wrong = |n: usize| {
                ProtocolError::InvalidInput(format!(
                    "segment `{}` takes {} values, got {n}",
                    seg.name, seg.len
                ))
            };
            match (seg.kind, part) {
                (SegmentKind::Real { .. }, Part::Real(v)) => {
                    if v.len() != seg.len {
                        return Err(wrong(v.len()));
                    }
                    let e = q.encode(v).map_err(|e| {
                        ProtocolError::InvalidInput(format!("segment `{}`: {e}", seg.name))
                    })?;
                    clipped += e.clipped;
                    words.extend(e.words);
                }
                (SegmentKind::Count, Part::Count(v)) => {
                    if v.len() != seg.len {
                        return Err(wrong(v.len()));
                    }
                    for c in *v {
                        words.push(q.encode_count(*c).map_err(|e| {
                            ProtocolError::InvalidInput(format!("segment `{}`: {e}", seg.name))
                        })?);
                    }
                }
                _ => {
                    return Err(ProtocolError::InvalidInput(format!(
                        "segment `{}` got the wrong kind of values",
                        seg.name
                    )));
                }
            }
        }
        Ok((words, clipped))
    }

    /// Decode the sum of `contributors` encoded vectors into one `Vec` per segment.
    pub fn decode(&self, sum: &[u32], contributors: usize) -> Vec<Vec<f64>> {
        let mut at = 0;
        self.segments
            .iter()
            .map(|(seg, q)| {
                let s = &sum[at..at + seg.len];
                at += seg.len;
                match seg.kind {
                    SegmentKind::Real { .. } => q.decode_sum(s, contributors),
                    SegmentKind::Count => s.iter().map(|w| f64::from(*w)).collect(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn update(delta: Vec<f32>, loss: f64) -> LocalUpdate {
        LocalUpdate {
            params: delta.clone(),
            delta,
            loss_before: loss,
            examples: 100,
            clipped_examples: 7,
            steps: 1,
        }
    }

    fn add(a: &mut [u32], b: &[u32]) {
        for (x, y) in a.iter_mut().zip(b) {
            *x = x.wrapping_add(*y);
        }
    }

    #[test]
    fn fedavg_weights_by_rows_inside_the_vector() {
        let enc = UpdateEncoding::new(2, 1.0, 1_000_000, 3).unwrap();
        let (a, _) = enc.encode(&update(vec![0.1, -0.2], 0.5), 1000).unwrap();
        let (b, _) = enc.encode(&update(vec![0.3, 0.2], 0.7), 3000).unwrap();
        let mut sum = a.clone();
        add(&mut sum, &b);
        let r = enc.decode(&sum, 2);
        assert_eq!(r.rows, 4000);
        assert_eq!(
            (r.examples, r.clipped_examples, r.clipped_values),
            (200, 14, 0)
        );
        assert!((r.delta[0] - 0.25).abs() < 1e-5, "{r:?}");
        assert!((r.delta[1] - 0.1).abs() < 1e-5);
        assert!((r.loss_before - 0.65).abs() < 1e-4, "{r:?}");
    }

    #[test]
    fn clipping_is_counted_in_the_vector() {
        let enc = UpdateEncoding::new(3, 0.01, 100, 2).unwrap();
        let (w, clipped) = enc.encode(&update(vec![5.0, -5.0, 0.0], 0.1), 100).unwrap();
        assert_eq!(clipped, 2);
        assert_eq!(enc.decode(&w, 1).clipped_values, 2);
        let e = enc
            .encode(&update(vec![f32::NAN, 0.0, 0.0], 0.1), 10)
            .unwrap_err();
        assert!(e.to_string().contains("weighted update"), "{e}");
        let e = enc.encode(&update(vec![0.0; 3], 0.1), 101).unwrap_err();
        assert!(e.to_string().contains("max_rows"), "{e}");
    }

    #[test]
    fn secure_moments_equal_pooled_statistics() {
        let a = vec![vec![1.0, 2.0, f64::NAN], vec![10.0, 20.0, 30.0]];
        let b = vec![vec![5.0, 7.0, 9.0], vec![-1.0, 0.0, 1.0]];
        let fm = FeatureMoments::new(2, 1000, 2).unwrap();
        let mut sum = fm.encode(&a).unwrap();
        add(&mut sum, &fm.encode(&b).unwrap());
        let (stats, n) = fm.decode(&sum, 2);
        assert_eq!(n, 5);
        let pooled = Standardizer::fit(&[
            [&a[0][..], &b[0][..]].concat(),
            [&a[1][..], &b[1][..]].concat(),
        ]);
        for f in 0..2 {
            assert!(
                (stats.mean[f] - pooled.mean[f]).abs() < 1e-3,
                "{stats:?} {pooled:?}"
            );
            assert!((stats.std[f] - pooled.std[f]).abs() < 1e-2);
        }
    }

    #[test]
    fn bank_dp_noise_in_the_sum_has_the_accounted_variance() {
        // 4 banks, threshold 3: each adds variance μ/3, the sum carries 4μ/3.
        let dp = BankDp {
            clip_norm: 1.0,
            noise_multiplier: 0.5,
        };
        let d = 20_000;
        let enc = BankDpEncoding::new(d, dp, 3, 4).unwrap();
        let (_, l2, mu) = enc.accounting();
        assert!((l2 - (65_536.0 + (d as f64).sqrt() / 2.0)).abs() < 1e-9);
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let zeros = vec![0.0f32; d];
        let mut sum = vec![0u32; d];
        for _ in 0..4 {
            add(&mut sum, &enc.encode(&zeros, &mut rng).unwrap().0);
        }
        let noise: Vec<f64> = sum.iter().map(|w| f64::from(*w as i32)).collect();
        let mean = noise.iter().sum::<f64>() / d as f64;
        let var = noise.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (d - 1) as f64;
        let want = 4.0 * mu / 3.0;
        // The sample variance of 20,000 values is within 3% of the truth (≈ 1% sd).
        assert!((var / want - 1.0).abs() < 0.03, "{var} vs {want}");
        assert!(mean.abs() < 4.0 * (want / d as f64).sqrt(), "{mean}");
    }

    #[test]
    fn bank_dp_clips_whole_updates_and_refuses_what_cannot_fit() {
        let dp = BankDp {
            clip_norm: 0.5,
            noise_multiplier: 1e-6,
        };
        let enc = BankDpEncoding::new(3, dp, 2, 3).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let (w, clipped) = enc.encode(&[-2.0, 0.0, 0.0], &mut rng).unwrap();
        assert!(clipped);
        let m = enc.decode(&w, 1);
        assert!((m[0] + 0.5).abs() < 1e-4 && m[1].abs() < 1e-4, "{m:?}");
        assert!(enc.encode(&[f32::NAN, 0.0, 0.0], &mut rng).is_err());
        assert!(enc.encode(&[0.0; 2], &mut rng).is_err());
        // The loudest noise allowed, with the most banks and threshold 1, still fits
        // 32 bits (2^16 units leave room for it); the check guards these constants.
        let loud = BankDp {
            clip_norm: 1.0,
            noise_multiplier: 100.0,
        };
        assert!(BankDpEncoding::new(10, loud, 1, 254).is_ok());
        assert!(BankDpEncoding::new(10, loud, 1, 255).is_err());
        assert!(BankDpEncoding::new(10, dp, 4, 3).is_err());
        assert!(
            BankDp {
                clip_norm: 0.0,
                noise_multiplier: 1.0
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn fedadam_moves_against_a_steady_pseudo_gradient_by_about_eta() {
        let mut opt = ServerOptimizer::new(Strategy::fed_adam());
        let mut w = vec![0.0f32; 2];
        for _ in 0..10 {
            opt.step(&mut w, &[0.01, -0.01]);
        }
        // With a constant pseudo-gradient Adam's step tends to η·(1-β1^t)/sqrt(1-β2^t)-ish;
        // what matters: the sign follows Δ and the step size is set by η, not |Δ|.
        assert!(w[0] > 0.1 && w[1] < -0.1, "{w:?}");
        let mut avg = ServerOptimizer::new(Strategy::FedAvg);
        let mut w2 = vec![0.0f32; 2];
        avg.step(&mut w2, &[0.01, -0.01]);
        assert_eq!(w2, vec![0.01, -0.01]);
    }
}
