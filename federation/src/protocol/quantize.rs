//! Clipping and quantization of updates into Z_(2^32), with headroom for the sum.
//!
//! With at most `n` contributors, each value gets `32 - ceil(log2 n)` bits, so the sum
//! of `n` of them is below 2^32 and cannot wrap: the masked sum, once unmasked, is the
//! exact integer sum. A value `x` is clipped to `[-clip, clip]` (explicitly: the number
//! of clipped values is returned and reported, never hidden), mapped to
//! `round((x + clip) / (2 clip) · (2^bits - 1))`; the sum of `m` encoded values
//! decodes to `Σx` within `m · clip / (2^bits - 1)` (half a step per value).
//! NaN and infinite values are refused.

use super::ProtocolError;

/// Encodes one round's floats for at most `max_contributors` clients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantizer {
    /// Values are clipped to `[-clip, clip]`.
    pub clip: f64,
    /// Bits per value (32 minus the headroom).
    pub bits: u32,
}

/// An encoded vector and how many of its values were clipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// Values in `[0, 2^bits)`.
    pub words: Vec<u32>,
    /// How many inputs were outside `[-clip, clip]` and clipped.
    pub clipped: usize,
}

impl Quantizer {
    /// A quantizer for sums of up to `max_contributors` vectors of values in
    /// `[-clip, clip]`.
    pub fn new(clip: f64, max_contributors: usize) -> Result<Self, ProtocolError> {
        if !(clip.is_finite() && clip > 0.0) {
            return Err(ProtocolError::Config(format!(
                "clip {clip} must be a positive number"
            )));
        }
        if max_contributors == 0 || max_contributors > super::MAX_CLIENTS {
            return Err(ProtocolError::Config(format!(
                "{max_contributors} contributors; 1 to {} are supported",
                super::MAX_CLIENTS
            )));
        }
        let headroom = usize::BITS - (max_contributors - 1).leading_zeros();
        Ok(Self {
            clip,
            bits: 32 - headroom,
        })
    }

    fn levels(&self) -> f64 {
        ((1u64 << self.bits) - 1) as f64
    }

    /// Clip and encode `values`.
    pub fn encode(&self, values: &[f32]) -> Result<Encoded, ProtocolError> {
        let scale = self.levels() / (2.0 * self.clip);
        let mut clipped = 0;
        let mut words = Vec::with_capacity(values.len());
        for (i, v) in values.iter().enumerate() {
            if !v.is_finite() {
                return Err(ProtocolError::InvalidInput(format!(
                    "value {i} of the update is {v}; updates must be finite"
                )));
            }
            let mut x = f64::from(*v);
            if x.abs() > self.clip {
                clipped += 1;
                x = x.clamp(-self.clip, self.clip);
            }
            words.push(((x + self.clip) * scale).round() as u32);
        }
        Ok(Encoded { words, clipped })
    }

    /// An integer (a sample count) as one word; it must be below `2^bits`.
    pub fn encode_count(&self, n: u64) -> Result<u32, ProtocolError> {
        if n >= 1u64 << self.bits {
            return Err(ProtocolError::InvalidInput(format!(
                "count {n} does not fit the {} bits each contributor has",
                self.bits
            )));
        }
        Ok(n as u32)
    }

    /// Decode the sum of `contributors` encoded vectors.
    pub fn decode_sum(&self, sum: &[u32], contributors: usize) -> Vec<f64> {
        let step = 2.0 * self.clip / self.levels();
        sum.iter()
            .map(|s| f64::from(*s) * step - contributors as f64 * self.clip)
            .collect()
    }

    /// Largest decoding error of a sum of `contributors` vectors, per value.
    pub fn max_error(&self, contributors: usize) -> f64 {
        contributors as f64 * self.clip / self.levels()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_decode_within_the_bound_and_cannot_wrap() {
        let q = Quantizer::new(1.0, 50).unwrap();
        assert_eq!(q.bits, 26);
        let a = q.encode(&[0.5, -1.0, 1.0, 0.0, 3.0]).unwrap();
        assert_eq!(a.clipped, 1);
        // 50 vectors of the maximum value sum below 2^32.
        let max = q.encode(&[1.0]).unwrap().words[0] as u64;
        assert!(max * 50 < 1u64 << 32);
        let b = q.encode(&[0.25, 0.5, -0.5, 0.1, -3.0]).unwrap();
        let sum: Vec<u32> = a
            .words
            .iter()
            .zip(&b.words)
            .map(|(x, y)| x.wrapping_add(*y))
            .collect();
        let d = q.decode_sum(&sum, 2);
        for (got, want) in d.iter().zip([0.75, -0.5, 0.5, 0.1, 0.0]) {
            assert!((got - want).abs() <= q.max_error(2), "{got} vs {want}");
        }
        assert!(q.encode(&[f32::NAN]).is_err());
        assert!(q.encode(&[f32::INFINITY]).is_err());
        assert!(q.encode_count(1 << 26).is_err());
        assert!(Quantizer::new(0.0, 2).is_err());
        assert_eq!(Quantizer::new(1.0, 1).unwrap().bits, 32);
        assert_eq!(Quantizer::new(1.0, 2).unwrap().bits, 31);
        assert_eq!(Quantizer::new(1.0, 64).unwrap().bits, 26);
        assert_eq!(Quantizer::new(1.0, 65).unwrap().bits, 25);
    }
}
