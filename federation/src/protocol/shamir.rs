//! Shamir secret sharing of 32-byte secrets over GF(2^8), byte by byte.
//!
//! Each byte of the secret is the constant term of its own random polynomial of degree
//! `t - 1`; share `x` (1 to 255) holds the 32 evaluations at `x`. Any `t` shares
//! rebuild the secret by Lagrange interpolation at 0; fewer reveal nothing about it
//! (every candidate secret is equally likely). The field is the AES field
//! (x^8 + x^4 + x^3 + x + 1); multiplication is carry-less and reduced without tables
//! or secret-dependent branches.

use ring::rand::{SecureRandom, SystemRandom};

use super::ProtocolError;

/// Length of a shared secret (an X25519 secret key or a mask seed).
pub const SECRET_LEN: usize = 32;

/// One share: the evaluation point (1 to 255) and 32 bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Share {
    /// Evaluation point, never 0.
    pub x: u8,
    /// The polynomials' values at `x`.
    pub y: [u8; SECRET_LEN],
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Share(x={}, ..)", self.x)
    }
}

/// Multiply in GF(2^8) in constant time.
fn mul(mut a: u8, mut b: u8) -> u8 {
    let mut p = 0u8;
    for _ in 0..8 {
        p ^= a & 0u8.wrapping_sub(b & 1);
        let carry = 0u8.wrapping_sub(a >> 7);
        a = (a << 1) ^ (0x1b & carry);
        b >>= 1;
    }
    p
}

/// Inverse (a^254); inv(0) = 0, never asked for.
fn inv(a: u8) -> u8 {
    let mut result = 1u8;
    let mut base = a;
    let mut e = 254u8;
    while e > 0 {
        if e & 1 == 1 {
            result = mul(result, base);
        }
        base = mul(base, base);
        e >>= 1;
    }
    result
}

/// Split `secret` into shares at `points` (distinct, non-zero), any `threshold` of
/// which rebuild it.
pub fn split(
    secret: &[u8; SECRET_LEN],
    threshold: usize,
    points: &[u8],
    rng: &SystemRandom,
) -> Result<Vec<Share>, ProtocolError> {
    if threshold == 0 || threshold > points.len() {
        return Err(ProtocolError::Config(format!(
            "threshold {threshold} must be between 1 and the {} share holders",
            points.len()
        )));
    }
    let mut seen = [false; 256];
    for &p in points {
        if p == 0 || seen[p as usize] {
            return Err(ProtocolError::Config(format!(
                "share point {p} is zero or repeated"
            )));
        }
        seen[p as usize] = true;
    }
    // coeffs[j][b]: coefficient j (1..t) of byte b's polynomial.
    let mut coeffs = vec![[0u8; SECRET_LEN]; threshold - 1];
    for c in &mut coeffs {
        rng.fill(c)
            .map_err(|_| ProtocolError::Crypto("the system random source failed".into()))?;
    }
    Ok(points
        .iter()
        .map(|&x| {
            let mut y = [0u8; SECRET_LEN];
            for (b, out) in y.iter_mut().enumerate() {
                // Horner: ((c_{t-1} x + c_{t-2}) x + ...) x + secret.
                let mut acc = 0u8;
                for c in coeffs.iter().rev() {
                    acc = mul(acc, x) ^ c[b];
                }
                *out = mul(acc, x) ^ secret[b];
            }
            Share { x, y }
        })
        .collect())
}

/// Rebuild a secret from at least `threshold` shares with distinct points. With fewer
/// (or with shares of different polynomials) the result is garbage, not an error:
/// callers check what it rebuilds (a key against its public half).
pub fn combine(shares: &[Share], threshold: usize) -> Result<[u8; SECRET_LEN], ProtocolError> {
    if shares.len() < threshold || threshold == 0 {
        return Err(ProtocolError::NotEnoughShares {
            have: shares.len(),
            need: threshold,
        });
    }
    let used = &shares[..threshold];
    for (i, a) in used.iter().enumerate() {
        if a.x == 0 || used[..i].iter().any(|b| b.x == a.x) {
            return Err(ProtocolError::Config(format!(
                "share point {} is zero or repeated",
                a.x
            )));
        }
    }
    let mut secret = [0u8; SECRET_LEN];
    for (i, si) in used.iter().enumerate() {
        // Lagrange basis at 0: Π_{j≠i} x_j / (x_j - x_i); minus is xor.
        let mut num = 1u8;
        let mut den = 1u8;
        for (j, sj) in used.iter().enumerate() {
            if i != j {
                num = mul(num, sj.x);
                den = mul(den, sj.x ^ si.x);
            }
        }
        let l = mul(num, inv(den));
        for (b, out) in secret.iter_mut().enumerate() {
            *out ^= mul(l, si.y[b]);
        }
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_is_a_field() {
        for a in 1..=255u8 {
            assert_eq!(mul(a, inv(a)), 1, "{a}");
            assert_eq!(mul(a, 1), a);
            assert_eq!(mul(a, 0), 0);
        }
        // 0x53 * 0xCA = 0x01 in the AES field (FIPS-197 example inverse pair).
        assert_eq!(mul(0x53, 0xca), 0x01);
        assert_eq!(mul(0x57, 0x83), 0xc1); // FIPS-197 section 4.2
    }

    #[test]
    fn any_t_shares_rebuild_and_fewer_do_not() {
        let rng = SystemRandom::new();
        let mut secret = [0u8; 32];
        rng.fill(&mut secret).unwrap();
        let points: Vec<u8> = (1..=10).collect();
        let shares = split(&secret, 4, &points, &rng).unwrap();
        for start in 0..7 {
            let subset: Vec<Share> = shares[start..start + 4].to_vec();
            assert_eq!(combine(&subset, 4).unwrap(), secret);
        }
        let mut reversed = shares.clone();
        reversed.reverse();
        assert_eq!(combine(&reversed, 4).unwrap(), secret);
        // Three shares interpolated as if the threshold were 3 give something else.
        assert_ne!(combine(&shares[..3], 3).unwrap(), secret);
        assert!(matches!(
            combine(&shares[..3], 4),
            Err(ProtocolError::NotEnoughShares { have: 3, need: 4 })
        ));
        assert!(split(&secret, 11, &points, &rng).is_err());
        assert!(split(&secret, 2, &[1, 1], &rng).is_err());
        assert!(split(&secret, 1, &[0], &rng).is_err());
    }
}
