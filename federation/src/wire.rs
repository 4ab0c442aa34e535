//! Bytes on the wire: a strict binary encoding of the secure-aggregation messages
//! (they travel inside the gRPC messages of [`crate::service`] as `bytes`).
//!
//! Big-endian, length-prefixed, with every length bounded before anything is
//! allocated; trailing bytes are an error. Decoding never panics: a malformed message
//! is a [`WireError`] naming what is wrong, and the sender is treated as dropped.

use crate::protocol::secagg::{
    AdvertiseKeys, ConsistencySig, EncryptedShare, MaskedInput, RoundId, ShareKeys, SurvivorList,
    UnmaskRequest, UnmaskResponse,
};
use crate::protocol::shamir::{SECRET_LEN, Share};
use crate::protocol::{MAX_CLIENTS, MAX_VECTOR_LEN};

/// A message that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what}: {reason}")]
pub struct WireError {
    /// Which message.
    pub what: &'static str,
    /// What is wrong.
    pub reason: String,
}

/// Largest ciphertext of one encrypted share pair.
const MAX_CIPHERTEXT: usize = 1024;
/// Largest signature.
const MAX_SIGNATURE: usize = 128;

/// Messages with a binary form.
pub trait Wire: Sized {
    /// Name for errors.
    const WHAT: &'static str;
    /// Append the encoding.
    fn put(&self, w: &mut Vec<u8>);
    /// Read one value.
    fn get(r: &mut Reader<'_>) -> Result<Self, WireError>;

    /// The encoding.
    fn encode(&self) -> Vec<u8> {
        let mut w = Vec::new();
        self.put(&mut w);
        w
    }

    /// Decode exactly one value from `bytes`.
    fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader {
            b: bytes,
            what: Self::WHAT,
        };
        let v = Self::get(&mut r)?;
        if !r.b.is_empty() {
            return Err(r.err(format!("{} trailing bytes", r.b.len())));
        }
        Ok(v)
    }
}

/// A bounded reader over a message's bytes.
#[derive(Debug)]
pub struct Reader<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn err(&self, reason: String) -> WireError {
        WireError {
            what: self.what,
            reason,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.b.len() < n {
            return Err(self.err(format!("needs {n} more bytes, {} left", self.b.len())));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn arr32(&mut self) -> Result<[u8; 32], WireError> {
        Ok(self.take(32)?.try_into().expect("32 bytes"))
    }

    fn len(&mut self, max: usize, of: &str) -> Result<usize, WireError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(self.err(format!("{n} {of}; at most {max}")));
        }
        Ok(n)
    }

    fn bytes(&mut self, max: usize, of: &str) -> Result<Vec<u8>, WireError> {
        let n = self.len(max, of)?;
        Ok(self.take(n)?.to_vec())
    }

    fn ids(&mut self) -> Result<Vec<u32>, WireError> {
        let n = self.len(MAX_CLIENTS, "client ids")?;
        (0..n).map(|_| self.u32()).collect()
    }

    fn round(&mut self) -> Result<RoundId, WireError> {
        let session = self.take(16)?.try_into().expect("16 bytes");
        Ok(RoundId {
            session,
            round: self.u64()?,
        })
    }

    fn share(&mut self) -> Result<Share, WireError> {
        let x = self.take(1)?[0];
        let y = self.take(SECRET_LEN)?.try_into().expect("32 bytes");
        Ok(Share { x, y })
    }

    fn owned_shares(&mut self) -> Result<Vec<(u32, Share)>, WireError> {
        let n = self.len(MAX_CLIENTS, "shares")?;
        (0..n).map(|_| Ok((self.u32()?, self.share()?))).collect()
    }
}

fn put_u32(w: &mut Vec<u8>, v: u32) {
    w.extend_from_slice(&v.to_be_bytes());
}

fn put_bytes(w: &mut Vec<u8>, b: &[u8]) {
    put_u32(w, b.len() as u32);
    w.extend_from_slice(b);
}

fn put_ids(w: &mut Vec<u8>, ids: &[u32]) {
    put_u32(w, ids.len() as u32);
    ids.iter().for_each(|i| put_u32(w, *i));
}

fn put_round(w: &mut Vec<u8>, r: &RoundId) {
    w.extend_from_slice(&r.session);
    w.extend_from_slice(&r.round.to_be_bytes());
}

fn put_owned_shares(w: &mut Vec<u8>, s: &[(u32, Share)]) {
    put_u32(w, s.len() as u32);
    for (o, sh) in s {
        put_u32(w, *o);
        w.push(sh.x);
        w.extend_from_slice(&sh.y);
    }
}

impl Wire for AdvertiseKeys {
    const WHAT: &'static str = "advertised keys";
    fn put(&self, w: &mut Vec<u8>) {
        put_u32(w, self.from);
        put_round(w, &self.round);
        w.extend_from_slice(&self.cipher_pk);
        w.extend_from_slice(&self.mask_pk);
        w.extend_from_slice(&self.seed_commitment);
        put_bytes(w, &self.signature);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self {
            from: r.u32()?,
            round: r.round()?,
            cipher_pk: r.arr32()?,
            mask_pk: r.arr32()?,
            seed_commitment: r.arr32()?,
            signature: r.bytes(MAX_SIGNATURE, "signature bytes")?,
        })
    }
}

impl Wire for EncryptedShare {
    const WHAT: &'static str = "encrypted share";
    fn put(&self, w: &mut Vec<u8>) {
        put_u32(w, self.from);
        put_u32(w, self.to);
        put_bytes(w, &self.ciphertext);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self {
            from: r.u32()?,
            to: r.u32()?,
            ciphertext: r.bytes(MAX_CIPHERTEXT, "ciphertext bytes")?,
        })
    }
}

impl<T: Wire> Wire for Vec<T> {
    const WHAT: &'static str = T::WHAT;
    fn put(&self, w: &mut Vec<u8>) {
        put_u32(w, self.len() as u32);
        self.iter().for_each(|v| v.put(w));
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let n = r.len(MAX_CLIENTS, "items")?;
        (0..n).map(|_| T::get(r)).collect()
    }
}

impl Wire for ShareKeys {
    const WHAT: &'static str = "key shares";
    fn put(&self, w: &mut Vec<u8>) {
        put_u32(w, self.from);
        put_round(w, &self.round);
        self.shares.put(w);
        put_bytes(w, &self.signature);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self {
            from: r.u32()?,
            round: r.round()?,
            shares: Vec::get(r)?,
            signature: r.bytes(MAX_SIGNATURE, "signature bytes")?,
        })
    }
}

impl Wire for MaskedInput {
    const WHAT: &'static str = "masked input";
    fn put(&self, w: &mut Vec<u8>) {
        put_u32(w, self.from);
        put_round(w, &self.round);
        put_ids(w, &self.rejected);
        put_u32(w, self.masked.len() as u32);
        w.reserve(self.masked.len() * 4);
        self.masked.iter().for_each(|v| put_u32(w, *v));
        put_bytes(w, &self.signature);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let from = r.u32()?;
        let round = r.round()?;
        let rejected = r.ids()?;
        let n = r.len(MAX_VECTOR_LEN, "words")?;
        let raw = r.take(n * 4)?;
        let masked = raw
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes")))
            .collect();
        Ok(Self {
            from,
            round,
            rejected,
            masked,
            signature: r.bytes(MAX_SIGNATURE, "signature bytes")?,
        })
    }
}

impl Wire for SurvivorList {
    const WHAT: &'static str = "survivor list";
    fn put(&self, w: &mut Vec<u8>) {
        put_round(w, &self.round);
        put_ids(w, &self.survivors);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self {
            round: r.round()?,
            survivors: r.ids()?,
        })
    }
}

impl Wire for ConsistencySig {
    const WHAT: &'static str = "consistency signature";
    fn put(&self, w: &mut Vec<u8>) {
        put_u32(w, self.from);
        put_round(w, &self.round);
        put_bytes(w, &self.signature);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self {
            from: r.u32()?,
            round: r.round()?,
            signature: r.bytes(MAX_SIGNATURE, "signature bytes")?,
        })
    }
}

impl Wire for UnmaskRequest {
    const WHAT: &'static str = "unmask request";
    fn put(&self, w: &mut Vec<u8>) {
        put_round(w, &self.round);
        put_ids(w, &self.survivors);
        put_ids(w, &self.dropped);
        put_u32(w, self.signatures.len() as u32);
        for (id, s) in &self.signatures {
            put_u32(w, *id);
            put_bytes(w, s);
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let round = r.round()?;
        let survivors = r.ids()?;
        let dropped = r.ids()?;
        let n = r.len(MAX_CLIENTS, "signatures")?;
        let signatures = (0..n)
            .map(|_| Ok((r.u32()?, r.bytes(MAX_SIGNATURE, "signature bytes")?)))
            .collect::<Result<_, WireError>>()?;
        Ok(Self {
            round,
            survivors,
            dropped,
            signatures,
        })
    }
}

impl Wire for UnmaskResponse {
    const WHAT: &'static str = "unmask response";
    fn put(&self, w: &mut Vec<u8>) {
        put_u32(w, self.from);
        put_round(w, &self.round);
        put_owned_shares(w, &self.seed_shares);
        put_owned_shares(w, &self.key_shares);
        put_bytes(w, &self.signature);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Self {
            from: r.u32()?,
            round: r.round()?,
            seed_shares: r.owned_shares()?,
            key_shares: r.owned_shares()?,
            signature: r.bytes(MAX_SIGNATURE, "signature bytes")?,
        })
    }
}

/// Model parameters as the stage-0 payload of a training round: little-endian f32,
/// 4 bytes each (a JSON plan would carry them as text, 2 to 3 times larger and slow to
/// parse).
pub fn encode_params(params: &[f32]) -> Vec<u8> {
    params.iter().flat_map(|p| p.to_le_bytes()).collect()
}

/// The parameters of [`encode_params`]; exactly `expected` finite values.
pub fn decode_params(bytes: &[u8], expected: usize) -> Result<Vec<f32>, WireError> {
    let err = |reason: String| WireError {
        what: "model parameters",
        reason,
    };
    if expected > MAX_VECTOR_LEN || bytes.len() != expected * 4 {
        return Err(err(format!(
            "{} bytes for {expected} parameters (4 bytes each)",
            bytes.len()
        )));
    }
    let params: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if let Some(i) = params.iter().position(|p| !p.is_finite()) {
        return Err(err(format!("parameter {i} is {}", params[i])));
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_round_trip_and_bad_ones_are_refused() {
        let p = vec![0.5f32, -1.25, 3.0e-7];
        assert_eq!(decode_params(&encode_params(&p), 3).unwrap(), p);
        assert!(decode_params(&encode_params(&p), 4).is_err());
        assert!(decode_params(&encode_params(&p)[..11], 3).is_err());
        let e = decode_params(&encode_params(&[1.0, f32::NAN]), 2).unwrap_err();
        assert!(e.to_string().contains("parameter 1"), "{e}");
    }

    #[test]
    fn round_trips_and_rejects_truncation_and_trailing_bytes() {
        let round = RoundId {
            session: [7; 16],
            round: 3,
        };
        let m = MaskedInput {
            from: 2,
            round,
            rejected: vec![1],
            masked: vec![1, 2, u32::MAX],
            signature: vec![9; 64],
        };
        let b = m.encode();
        assert_eq!(MaskedInput::decode(&b).unwrap(), m);
        for cut in 0..b.len() {
            assert!(MaskedInput::decode(&b[..cut]).is_err());
        }
        let mut long = b.clone();
        long.push(0);
        assert!(
            MaskedInput::decode(&long)
                .unwrap_err()
                .reason
                .contains("trailing")
        );
        // A length prefix far beyond the bound is refused before allocating.
        let mut huge = Vec::new();
        put_u32(&mut huge, 0);
        put_round(&mut huge, &round);
        put_u32(&mut huge, u32::MAX);
        let e = MaskedInput::decode(&huge).unwrap_err();
        assert!(e.reason.contains("at most"), "{e}");
        let u = UnmaskResponse {
            from: 1,
            round,
            seed_shares: vec![(0, Share { x: 1, y: [3; 32] })],
            key_shares: vec![],
            signature: vec![1; 64],
        };
        assert_eq!(UnmaskResponse::decode(&u.encode()).unwrap(), u);
    }
}
