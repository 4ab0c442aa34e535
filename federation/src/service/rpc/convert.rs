//! Between the generated messages and the protocol's types: every length and count a
//! bank or the coordinator could get wrong (or lie about) is checked here, so
//! `secagg` only ever sees well-formed values. A message that does not convert is a
//! [`MessageError`] naming the message and the field; its sender is treated as
//! dropped.
//!
//! The gRPC layer bounds each message at [`MAX_MESSAGE_BYTES`](super::MAX_MESSAGE_BYTES)
//! before prost decodes it, which bounds what decoding can allocate.

use crate::protocol::secagg::{
    AdvertiseKeys, ConsistencySig, EncryptedShare, MaskedInput, RoundId, ShareKeys, SurvivorList,
    UnmaskRequest, UnmaskResponse,
};
use crate::protocol::shamir::{SECRET_LEN, Share};
use crate::protocol::{MAX_CLIENTS, MAX_VECTOR_LEN};

use super::pb;

/// A message that does not convert into the protocol's types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what}: {reason}")]
pub struct MessageError {
    /// Which message.
    pub what: &'static str,
    /// What is wrong, naming the field.
    pub reason: String,
}

pub use crate::limits::MAX_CIPHERTEXT;
pub use crate::limits::MAX_SIGNATURE;

/// Checks of one message's fields, each error naming the message.
struct Check(&'static str);

impl Check {
    fn err(&self, reason: String) -> MessageError {
        MessageError {
            what: self.0,
            reason,
        }
    }

    fn fixed<const N: usize>(&self, field: &str, b: Vec<u8>) -> Result<[u8; N], MessageError> {
        let n = b.len();
        b.try_into()
            .map_err(|_| self.err(format!("`{field}` is {n} bytes, not {N}")))
    }

    fn bytes(&self, field: &str, b: Vec<u8>, max: usize) -> Result<Vec<u8>, MessageError> {
        if b.len() > max {
            return Err(self.err(format!("`{field}` is {} bytes; at most {max}", b.len())));
        }
        Ok(b)
    }

    fn count<T>(&self, field: &str, v: Vec<T>, max: usize) -> Result<Vec<T>, MessageError> {
        if v.len() > max {
            return Err(self.err(format!("{} entries in `{field}`; at most {max}", v.len())));
        }
        Ok(v)
    }

    fn signature(&self, b: Vec<u8>) -> Result<Vec<u8>, MessageError> {
        self.bytes("signature", b, MAX_SIGNATURE)
    }

    fn round(&self, r: Option<pb::RoundId>) -> Result<RoundId, MessageError> {
        let r = r.ok_or_else(|| self.err("`round` is missing".into()))?;
        Ok(RoundId {
            session: self.fixed("round.session", r.session)?,
            round: r.round,
        })
    }

    fn owned_shares(
        &self,
        field: &str,
        v: Vec<pb::OwnedShare>,
    ) -> Result<Vec<(u32, Share)>, MessageError> {
        self.count(field, v, MAX_CLIENTS)?
            .into_iter()
            .map(|s| {
                let x = u8::try_from(s.x)
                    .map_err(|_| self.err(format!("a share in `{field}` has x = {}", s.x)))?;
                let y: [u8; SECRET_LEN] = self.fixed(field, s.y)?;
                Ok((s.owner, Share { x, y }))
            })
            .collect()
    }
}

fn round(r: RoundId) -> Option<pb::RoundId> {
    Some(pb::RoundId {
        session: r.session.to_vec(),
        round: r.round,
    })
}

fn owned_shares(v: Vec<(u32, Share)>) -> Vec<pb::OwnedShare> {
    v.into_iter()
        .map(|(owner, s)| pb::OwnedShare {
            owner,
            x: u32::from(s.x),
            y: s.y.to_vec(),
        })
        .collect()
}

impl From<AdvertiseKeys> for pb::AdvertiseKeys {
    fn from(m: AdvertiseKeys) -> Self {
        Self {
            from: m.from,
            round: round(m.round),
            cipher_pk: m.cipher_pk.to_vec(),
            mask_pk: m.mask_pk.to_vec(),
            seed_commitment: m.seed_commitment.to_vec(),
            signature: m.signature,
        }
    }
}

impl TryFrom<pb::AdvertiseKeys> for AdvertiseKeys {
    type Error = MessageError;
    fn try_from(m: pb::AdvertiseKeys) -> Result<Self, MessageError> {
        let c = Check("advertised keys");
        Ok(Self {
            from: m.from,
            round: c.round(m.round)?,
            cipher_pk: c.fixed("cipher_pk", m.cipher_pk)?,
            mask_pk: c.fixed("mask_pk", m.mask_pk)?,
            seed_commitment: c.fixed("seed_commitment", m.seed_commitment)?,
            signature: c.signature(m.signature)?,
        })
    }
}

impl From<EncryptedShare> for pb::EncryptedShare {
    fn from(m: EncryptedShare) -> Self {
        Self {
            from: m.from,
            to: m.to,
            ciphertext: m.ciphertext,
            seed_commitment: m.seed_commitment.to_vec(),
            key_commitment: m.key_commitment.to_vec(),
        }
    }
}

impl TryFrom<pb::EncryptedShare> for EncryptedShare {
    type Error = MessageError;
    fn try_from(m: pb::EncryptedShare) -> Result<Self, MessageError> {
        let c = Check("encrypted share");
        Ok(Self {
            from: m.from,
            to: m.to,
            ciphertext: c.bytes("ciphertext", m.ciphertext, MAX_CIPHERTEXT)?,
            seed_commitment: c.fixed("seed_commitment", m.seed_commitment)?,
            key_commitment: c.fixed("key_commitment", m.key_commitment)?,
        })
    }
}

impl From<ShareKeys> for pb::ShareKeys {
    fn from(m: ShareKeys) -> Self {
        Self {
            from: m.from,
            round: round(m.round),
            shares: m.shares.into_iter().map(Into::into).collect(),
            signature: m.signature,
        }
    }
}

impl TryFrom<pb::ShareKeys> for ShareKeys {
    type Error = MessageError;
    fn try_from(m: pb::ShareKeys) -> Result<Self, MessageError> {
        let c = Check("key shares");
        Ok(Self {
            from: m.from,
            round: c.round(m.round)?,
            shares: c
                .count("shares", m.shares, MAX_CLIENTS)?
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_, _>>()?,
            signature: c.signature(m.signature)?,
        })
    }
}

impl From<MaskedInput> for pb::MaskedInput {
    fn from(m: MaskedInput) -> Self {
        Self {
            from: m.from,
            round: round(m.round),
            rejected: m.rejected,
            masked: m.masked,
            signature: m.signature,
        }
    }
}

impl TryFrom<pb::MaskedInput> for MaskedInput {
    type Error = MessageError;
    fn try_from(m: pb::MaskedInput) -> Result<Self, MessageError> {
        let c = Check("masked input");
        Ok(Self {
            from: m.from,
            round: c.round(m.round)?,
            rejected: c.count("rejected", m.rejected, MAX_CLIENTS)?,
            masked: c.count("masked", m.masked, MAX_VECTOR_LEN)?,
            signature: c.signature(m.signature)?,
        })
    }
}

impl From<SurvivorList> for pb::SurvivorList {
    fn from(m: SurvivorList) -> Self {
        Self {
            round: round(m.round),
            survivors: m.survivors,
        }
    }
}

impl TryFrom<pb::SurvivorList> for SurvivorList {
    type Error = MessageError;
    fn try_from(m: pb::SurvivorList) -> Result<Self, MessageError> {
        let c = Check("survivor list");
        Ok(Self {
            round: c.round(m.round)?,
            survivors: c.count("survivors", m.survivors, MAX_CLIENTS)?,
        })
    }
}

impl From<ConsistencySig> for pb::ConsistencySig {
    fn from(m: ConsistencySig) -> Self {
        Self {
            from: m.from,
            round: round(m.round),
            signature: m.signature,
        }
    }
}

impl TryFrom<pb::ConsistencySig> for ConsistencySig {
    type Error = MessageError;
    fn try_from(m: pb::ConsistencySig) -> Result<Self, MessageError> {
        let c = Check("consistency signature");
        Ok(Self {
            from: m.from,
            round: c.round(m.round)?,
            signature: c.signature(m.signature)?,
        })
    }
}

impl From<UnmaskRequest> for pb::UnmaskRequest {
    fn from(m: UnmaskRequest) -> Self {
        Self {
            round: round(m.round),
            survivors: m.survivors,
            dropped: m.dropped,
            signatures: m
                .signatures
                .into_iter()
                .map(|(client, signature)| pb::SignedBy { client, signature })
                .collect(),
        }
    }
}

impl TryFrom<pb::UnmaskRequest> for UnmaskRequest {
    type Error = MessageError;
    fn try_from(m: pb::UnmaskRequest) -> Result<Self, MessageError> {
        let c = Check("unmask request");
        Ok(Self {
            round: c.round(m.round)?,
            survivors: c.count("survivors", m.survivors, MAX_CLIENTS)?,
            dropped: c.count("dropped", m.dropped, MAX_CLIENTS)?,
            signatures: c
                .count("signatures", m.signatures, MAX_CLIENTS)?
                .into_iter()
                .map(|s| Ok((s.client, c.signature(s.signature)?)))
                .collect::<Result<_, MessageError>>()?,
        })
    }
}

impl From<UnmaskResponse> for pb::UnmaskResponse {
    fn from(m: UnmaskResponse) -> Self {
        Self {
            from: m.from,
            round: round(m.round),
            seed_shares: owned_shares(m.seed_shares),
            key_shares: owned_shares(m.key_shares),
            signature: m.signature,
            pair_seeds: m
                .pair_seeds
                .into_iter()
                .map(|(peer, seed)| pb::PairSeed {
                    peer,
                    seed: seed.to_vec(),
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::UnmaskResponse> for UnmaskResponse {
    type Error = MessageError;
    fn try_from(m: pb::UnmaskResponse) -> Result<Self, MessageError> {
        let c = Check("unmask response");
        Ok(Self {
            from: m.from,
            round: c.round(m.round)?,
            seed_shares: c.owned_shares("seed_shares", m.seed_shares)?,
            key_shares: c.owned_shares("key_shares", m.key_shares)?,
            pair_seeds: c
                .count("pair_seeds", m.pair_seeds, MAX_CLIENTS)?
                .into_iter()
                .map(|p| Ok((p.peer, c.fixed("pair_seeds.seed", p.seed)?)))
                .collect::<Result<_, MessageError>>()?,
            signature: c.signature(m.signature)?,
        })
    }
}

/// A list of messages, at most one per bank.
pub(crate) fn list<P, T>(what: &'static str, v: Vec<P>) -> Result<Vec<T>, MessageError>
where
    T: TryFrom<P, Error = MessageError>,
{
    Check(what)
        .count(what, v, MAX_CLIENTS)?
        .into_iter()
        .map(T::try_from)
        .collect()
}

/// The global model of a round's start: exactly `expected` finite parameters.
pub fn global_params(params: Vec<f32>, expected: usize) -> Result<Vec<f32>, MessageError> {
    let c = Check("round start");
    if params.len() != expected {
        return Err(c.err(format!(
            "{} parameters in `global`; the plan's model has {expected}",
            params.len()
        )));
    }
    if let Some(i) = params.iter().position(|p| !p.is_finite()) {
        return Err(c.err(format!("`global` parameter {i} is {}", params[i])));
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn rid() -> RoundId {
        RoundId {
            session: [7; 16],
            round: 3,
        }
    }

    #[test]
    fn params_are_checked_for_count_and_finiteness() {
        let p = vec![0.5f32, -1.25, 3.0e-7];
        assert_eq!(global_params(p.clone(), 3).unwrap(), p);
        let e = global_params(p.clone(), 4).unwrap_err();
        assert!(e.to_string().contains("has 4"), "{e}");
        let e = global_params(vec![1.0, f32::NAN], 2).unwrap_err();
        assert!(e.to_string().contains("parameter 1"), "{e}");
    }

    #[test]
    fn messages_round_trip_through_their_encoding() {
        let m = MaskedInput {
            from: 2,
            round: rid(),
            rejected: vec![1],
            masked: vec![1, 2, u32::MAX],
            signature: vec![9; 64],
        };
        let bytes = pb::MaskedInput::from(m.clone()).encode_to_vec();
        // 4 bytes a word: the vector is packed fixed32.
        assert!(bytes.len() < 3 * 4 + 64 + 16 + 20, "{}", bytes.len());
        let back = MaskedInput::try_from(pb::MaskedInput::decode(&bytes[..]).unwrap()).unwrap();
        assert_eq!(back, m);
        // A truncated message does not decode.
        for cut in [1, bytes.len() / 2, bytes.len() - 1] {
            assert!(pb::MaskedInput::decode(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let u = UnmaskResponse {
            from: 1,
            round: rid(),
            seed_shares: vec![(0, Share { x: 1, y: [3; 32] })],
            key_shares: vec![],
            pair_seeds: vec![(2, [7; 32])],
            signature: vec![1; 64],
        };
        let back = UnmaskResponse::try_from(pb::UnmaskResponse::from(u.clone())).unwrap();
        assert_eq!(back, u);
        let mut short = pb::UnmaskResponse::from(u.clone());
        short.pair_seeds[0].seed.pop();
        let e = UnmaskResponse::try_from(short).unwrap_err();
        assert!(e.reason.contains("`pair_seeds.seed` is 31 bytes"), "{e}");
        let r = UnmaskRequest {
            round: rid(),
            survivors: vec![0, 1],
            dropped: vec![2],
            signatures: vec![(0, vec![5; 64]), (1, vec![6; 64])],
        };
        assert_eq!(
            UnmaskRequest::try_from(pb::UnmaskRequest::from(r.clone())).unwrap(),
            r
        );
    }

    #[test]
    fn wrong_sizes_and_counts_are_named() {
        let keys = || AdvertiseKeys {
            from: 0,
            round: rid(),
            cipher_pk: [1; 32],
            mask_pk: [2; 32],
            seed_commitment: [3; 32],
            signature: vec![4; 64],
        };
        let mut m = pb::AdvertiseKeys::from(keys());
        m.mask_pk.pop();
        let e = AdvertiseKeys::try_from(m).unwrap_err();
        assert_eq!(e.what, "advertised keys");
        assert!(e.reason.contains("`mask_pk` is 31 bytes, not 32"), "{e}");

        let mut m = pb::AdvertiseKeys::from(keys());
        m.round = None;
        let e = AdvertiseKeys::try_from(m).unwrap_err();
        assert!(e.reason.contains("`round` is missing"), "{e}");

        let mut m = pb::AdvertiseKeys::from(keys());
        m.round.as_mut().unwrap().session = vec![0; 17];
        let e = AdvertiseKeys::try_from(m).unwrap_err();
        assert!(e.reason.contains("round.session"), "{e}");

        let mut m = pb::AdvertiseKeys::from(keys());
        m.signature = vec![0; MAX_SIGNATURE + 1];
        let e = AdvertiseKeys::try_from(m).unwrap_err();
        assert!(
            e.reason.contains("`signature` is 129 bytes; at most 128"),
            "{e}"
        );

        let share = pb::EncryptedShare {
            from: 0,
            to: 1,
            ciphertext: vec![0; MAX_CIPHERTEXT + 1],
            seed_commitment: vec![0; 32],
            key_commitment: vec![1; 32],
        };
        let e = EncryptedShare::try_from(share.clone()).unwrap_err();
        assert!(e.reason.contains("ciphertext"), "{e}");
        let short = pb::EncryptedShare {
            ciphertext: vec![0; 97],
            key_commitment: vec![1; 31],
            ..share
        };
        let e = EncryptedShare::try_from(short).unwrap_err();
        assert!(e.reason.contains("`key_commitment` is 31 bytes"), "{e}");

        let survivors = pb::SurvivorList {
            round: round(rid()),
            survivors: vec![0; MAX_CLIENTS + 1],
        };
        let e = SurvivorList::try_from(survivors).unwrap_err();
        assert!(
            e.reason.contains("255 entries in `survivors`; at most 254"),
            "{e}"
        );

        let resp = pb::UnmaskResponse {
            from: 0,
            round: round(rid()),
            seed_shares: vec![pb::OwnedShare {
                owner: 1,
                x: 256,
                y: vec![0; 32],
            }],
            key_shares: vec![],
            pair_seeds: vec![],
            signature: vec![],
        };
        let e = UnmaskResponse::try_from(resp).unwrap_err();
        assert!(e.reason.contains("`seed_shares` has x = 256"), "{e}");

        let e = list::<pb::AdvertiseKeys, AdvertiseKeys>(
            "advertised keys",
            vec![pb::AdvertiseKeys::default(); MAX_CLIENTS + 1],
        )
        .unwrap_err();
        assert!(e.reason.contains("at most 254"), "{e}");
    }
}
