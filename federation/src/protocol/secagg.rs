//! SecAgg / SecAgg+ state machines: [`Client`] (one per bank) and [`Server`] (the
//! coordinator).
//!
//! Stages, each closed by the coordinator (the service layer puts a deadline on each):
//!
//! 0. **Advertise keys.** Each client makes two fresh X25519 key pairs (one to encrypt
//!    shares, one to agree mask seeds), a 256-bit self-mask seed `b`, and sends the two
//!    public keys and a SHA-256 commitment to `b`, signed with its Ed25519 identity.
//! 1. **Share keys.** Each client Shamir-shares its mask secret key and `b` among its
//!    neighbours (threshold `t`), each share encrypted with ChaCha20-Poly1305 under a
//!    key from X25519 agreement with the neighbour (HKDF-SHA256, salted with the round).
//! 2. **Masked input.** `y = x + PRG(b) + Σ ±PRG(s_uv)` in Z_(2^32) over the neighbours
//!    whose shares it accepted (`+` towards higher ids, `−` towards lower), where `s_uv`
//!    comes from X25519 agreement of the mask keys. A share that fails to decrypt or is
//!    for another round is rejected and the rejection is reported, signed, with `y`.
//! 3. **Consistency check.** The coordinator names the survivors; each signs the list.
//! 4. **Unmasking.** Given at least `t` valid signatures on the same list, a client
//!    reveals, for each neighbour, the share of `b` if it survived or the share of its
//!    mask key if it dropped, never both, and refuses if the lists overlap.
//!
//! The coordinator removes the self masks of survivors and the pairwise masks between
//! survivors and dropped clients, leaving the exact sum in Z_(2^32). With fewer than
//! `t` clients at any stage the round aborts before anything is revealed.
//!
//! Neighbours: with `neighbours = n − 1` every pair shares masks (SecAgg). With fewer
//! (SecAgg+), clients sit on a ring in a random order drawn from the round id and each
//! is joined to the `k / 2` clients on either side (a Harary graph, Bell et al. 2020),
//! so masking costs `O(k)` PRG expansions instead of `O(n)`.
//!
//! Every message carries the session and round ids and the stage inside its signature;
//! the coordinator takes one message per client per stage, so a replayed or foreign
//! message is rejected.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::digest::{SHA256, digest};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ED25519, Ed25519KeyPair, UnparsedPublicKey};
use x25519_dalek::{PublicKey, StaticSecret};

use super::prg::MaskPrg;
use super::shamir::{self, SECRET_LEN, Share};
use super::{MAX_CLIENTS, MAX_VECTOR_LEN, ProtocolError};

/// Shape of a round, known to every party.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// Clients in the roster (ids `0..clients`).
    pub clients: usize,
    /// Shares needed to rebuild a secret (each client's neighbours and the client itself
    /// hold one); also the fewest clients a round goes on with.
    pub threshold: usize,
    /// Neighbours of each client: `clients - 1` is plain SecAgg, fewer (even) is SecAgg+.
    pub neighbours: usize,
    /// Words in each vector.
    pub len: usize,
}

impl Params {
    /// Plain SecAgg over `clients` clients.
    pub fn secagg(clients: usize, threshold: usize, len: usize) -> Self {
        Self {
            clients,
            threshold,
            neighbours: clients.saturating_sub(1),
            len,
        }
    }

    /// Check the bounds: `2 ≤ clients ≤ 254`, `threshold` more than half of the
    /// `neighbours + 1` share holders and at most that, even `neighbours` below
    /// `clients - 1`.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let bad = |m: String| Err(ProtocolError::Config(m));
        if !(2..=MAX_CLIENTS).contains(&self.clients) {
            return bad(format!(
                "{} clients; 2 to {MAX_CLIENTS} are supported",
                self.clients
            ));
        }
        if self.neighbours == 0 || self.neighbours > self.clients - 1 {
            return bad(format!(
                "{} neighbours for {} clients; 1 to {}",
                self.neighbours,
                self.clients,
                self.clients - 1
            ));
        }
        if self.neighbours < self.clients - 1 && self.neighbours % 2 == 1 {
            return bad(format!(
                "SecAgg+ needs an even number of neighbours, not {}",
                self.neighbours
            ));
        }
        // Share holders are the neighbours and the client itself. More than half of
        // them: two disjoint groups can never both reach the threshold.
        let holders = self.neighbours + 1;
        if self.threshold * 2 <= holders || self.threshold > holders {
            return bad(format!(
                "threshold {} must be more than half of the {holders} share holders (neighbours and self) and at most that",
                self.threshold
            ));
        }
        if self.len == 0 || self.len > MAX_VECTOR_LEN {
            return bad(format!(
                "vector of {} words; 1 to {MAX_VECTOR_LEN}",
                self.len
            ));
        }
        Ok(())
    }
}

/// Identifies one aggregation: a random session id and the training round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RoundId {
    /// Random per federation run.
    pub session: [u8; 16],
    /// Training round.
    pub round: u64,
}

impl RoundId {
    fn bytes(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[..16].copy_from_slice(&self.session);
        b[16..].copy_from_slice(&self.round.to_be_bytes());
        b
    }
}

/// Ed25519 public keys of the banks, by client id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    keys: Vec<Vec<u8>>,
}

impl Roster {
    /// A roster from public keys (32 bytes each); client `i` owns `keys[i]`.
    pub fn new(keys: Vec<Vec<u8>>) -> Result<Self, ProtocolError> {
        if let Some(i) = keys.iter().position(|k| k.len() != 32) {
            return Err(ProtocolError::Config(format!(
                "roster key {i} is not an Ed25519 public key (32 bytes)"
            )));
        }
        Ok(Self { keys })
    }

    /// Clients in the roster.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn verify(&self, from: u32, message: &[u8], sig: &[u8]) -> bool {
        self.keys.get(from as usize).is_some_and(|k| {
            UnparsedPublicKey::new(&ED25519, k)
                .verify(message, sig)
                .is_ok()
        })
    }
}

/// What a signature covers: domain, stage, round, sender, then each part with its length.
fn transcript(stage: &str, round: &RoundId, from: u32, parts: &[&[u8]]) -> Vec<u8> {
    let mut t = Vec::with_capacity(64 + parts.iter().map(|p| p.len() + 8).sum::<usize>());
    t.extend_from_slice(b"quiver-secagg-v1\0");
    t.extend_from_slice(stage.as_bytes());
    t.push(0);
    t.extend_from_slice(&round.bytes());
    t.extend_from_slice(&from.to_be_bytes());
    for p in parts {
        t.extend_from_slice(&(p.len() as u64).to_be_bytes());
        t.extend_from_slice(p);
    }
    t
}

fn ids_bytes(ids: &[u32]) -> Vec<u8> {
    ids.iter().flat_map(|i| i.to_be_bytes()).collect()
}

fn words_digest(words: &[u32]) -> [u8; 32] {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let d = digest(&SHA256, &bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn commitment(seed: &[u8; 32]) -> [u8; 32] {
    let mut m = b"quiver-secagg-seed\0".to_vec();
    m.extend_from_slice(seed);
    let d = digest(&SHA256, &m);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

fn kdf(shared: &[u8; 32], round: &RoundId, info: &[&[u8]]) -> [u8; 32] {
    let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, &round.bytes());
    let prk = salt.extract(shared);
    let okm = prk.expand(info, Len32).expect("32 bytes from HKDF");
    let mut out = [0u8; 32];
    okm.fill(&mut out).expect("32 bytes from HKDF");
    out
}

/// Seed of the mask between `a` and `b` (order does not matter).
fn pair_seed(secret: &StaticSecret, peer: &[u8; 32], round: &RoundId, a: u32, b: u32) -> [u8; 32] {
    let shared = secret.diffie_hellman(&PublicKey::from(*peer));
    let (lo, hi) = (a.min(b), a.max(b));
    kdf(
        shared.as_bytes(),
        round,
        &[b"quiver-secagg-mask", &lo.to_be_bytes(), &hi.to_be_bytes()],
    )
}

fn share_key(
    secret: &StaticSecret,
    peer: &[u8; 32],
    round: &RoundId,
    from: u32,
    to: u32,
) -> LessSafeKey {
    let shared = secret.diffie_hellman(&PublicKey::from(*peer));
    let (lo, hi) = (from.min(to), from.max(to));
    let k = kdf(
        shared.as_bytes(),
        round,
        &[b"quiver-secagg-share", &lo.to_be_bytes(), &hi.to_be_bytes()],
    );
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &k).expect("32-byte key"))
}

fn share_nonce(from: u32, to: u32) -> Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&from.to_be_bytes());
    n[4..8].copy_from_slice(&to.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// The neighbours of `id` in this round, sorted (public: every party computes it).
pub fn neighbours(params: &Params, round: &RoundId, id: u32) -> Vec<u32> {
    let n = params.clients;
    if params.neighbours >= n - 1 {
        return (0..n as u32).filter(|v| *v != id).collect();
    }
    // A random ring order from the round id, then k/2 on each side.
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut seed = b"quiver-secagg-graph\0".to_vec();
    seed.extend_from_slice(&round.bytes());
    let mut state = [0u8; 32];
    state.copy_from_slice(digest(&SHA256, &seed).as_ref());
    let prg = MaskPrg::new(&state);
    let r = prg.words(n);
    for i in (1..n).rev() {
        let j = (r[i] as u64 * (i as u64 + 1) >> 32) as usize;
        order.swap(i, j);
    }
    let pos = order.iter().position(|v| *v == id).unwrap_or(0);
    let half = params.neighbours / 2;
    let mut out: Vec<u32> = (1..=half)
        .flat_map(|d| [order[(pos + d) % n], order[(pos + n - d) % n]])
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Stage 0: a client's public keys and seed commitment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvertiseKeys {
    /// Sender.
    pub from: u32,
    /// Round.
    pub round: RoundId,
    /// X25519 key for encrypting shares.
    pub cipher_pk: [u8; 32],
    /// X25519 key for mask agreement.
    pub mask_pk: [u8; 32],
    /// SHA-256 commitment to the self-mask seed.
    pub seed_commitment: [u8; 32],
    /// Ed25519 signature of all the above.
    pub signature: Vec<u8>,
}

impl AdvertiseKeys {
    fn signed(&self) -> Vec<u8> {
        transcript(
            "advertise",
            &self.round,
            self.from,
            &[&self.cipher_pk, &self.mask_pk, &self.seed_commitment],
        )
    }
}

/// One encrypted pair of shares, from one client to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedShare {
    /// Owner of the secrets.
    pub from: u32,
    /// Holder.
    pub to: u32,
    /// ChaCha20-Poly1305 ciphertext of the two shares.
    pub ciphertext: Vec<u8>,
}

/// Stage 1: a client's encrypted shares, one per neighbour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareKeys {
    /// Sender.
    pub from: u32,
    /// Round.
    pub round: RoundId,
    /// One per neighbour that advertised keys.
    pub shares: Vec<EncryptedShare>,
    /// Ed25519 signature.
    pub signature: Vec<u8>,
}

impl ShareKeys {
    /// Sign (again) with `identity`, after the shares were built or changed.
    pub fn sign(&mut self, identity: &Ed25519KeyPair) {
        self.signature = identity.sign(&self.signed()).as_ref().to_vec();
    }

    fn signed(&self) -> Vec<u8> {
        let mut body = Vec::new();
        for s in &self.shares {
            body.extend_from_slice(&s.to.to_be_bytes());
            body.extend_from_slice(&(s.ciphertext.len() as u32).to_be_bytes());
            body.extend_from_slice(&s.ciphertext);
        }
        transcript("share", &self.round, self.from, &[&body])
    }
}

/// Stage 2: a masked vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedInput {
    /// Sender.
    pub from: u32,
    /// Round.
    pub round: RoundId,
    /// Neighbours whose shares this client rejected (it did not mask with them).
    pub rejected: Vec<u32>,
    /// `x + masks`, `Params::len` words.
    pub masked: Vec<u32>,
    /// Ed25519 signature.
    pub signature: Vec<u8>,
}

impl MaskedInput {
    /// Sign (again) with `identity`.
    pub fn sign(&mut self, identity: &Ed25519KeyPair) {
        self.signature = identity.sign(&self.signed()).as_ref().to_vec();
    }

    fn signed(&self) -> Vec<u8> {
        transcript(
            "masked",
            &self.round,
            self.from,
            &[&ids_bytes(&self.rejected), &words_digest(&self.masked)],
        )
    }
}

/// Stage 3 (coordinator → clients): who survives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SurvivorList {
    /// Round.
    pub round: RoundId,
    /// Clients whose inputs are summed, sorted.
    pub survivors: Vec<u32>,
}

/// Stage 3 (client → coordinator): a signature on the survivor list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencySig {
    /// Signer.
    pub from: u32,
    /// Round.
    pub round: RoundId,
    /// Ed25519 signature of the survivor list.
    pub signature: Vec<u8>,
}

fn consistency_transcript(round: &RoundId, from: u32, survivors: &[u32]) -> Vec<u8> {
    transcript("consistency", round, from, &[&ids_bytes(survivors)])
}

/// Stage 4 (coordinator → clients): what to reveal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmaskRequest {
    /// Round.
    pub round: RoundId,
    /// Survivors (the signed list): reveal their seed shares.
    pub survivors: Vec<u32>,
    /// Dropped clients: reveal their mask-key shares.
    pub dropped: Vec<u32>,
    /// Consistency signatures collected, by signer.
    pub signatures: Vec<(u32, Vec<u8>)>,
}

/// Stage 4 (client → coordinator): the revealed shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmaskResponse {
    /// Sender.
    pub from: u32,
    /// Round.
    pub round: RoundId,
    /// Shares of survivors' self-mask seeds, by owner.
    pub seed_shares: Vec<(u32, Share)>,
    /// Shares of dropped clients' mask keys, by owner.
    pub key_shares: Vec<(u32, Share)>,
    /// Ed25519 signature.
    pub signature: Vec<u8>,
}

impl UnmaskResponse {
    fn signed(&self) -> Vec<u8> {
        let enc = |v: &[(u32, Share)]| -> Vec<u8> {
            v.iter()
                .flat_map(|(o, s)| {
                    let mut b = o.to_be_bytes().to_vec();
                    b.push(s.x);
                    b.extend_from_slice(&s.y);
                    b
                })
                .collect()
        };
        transcript(
            "unmask",
            &self.round,
            self.from,
            &[&enc(&self.seed_shares), &enc(&self.key_shares)],
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientStage {
    Advertised,
    Shared,
    Masked,
    Signed,
    Done,
}

/// Keys a client learnt about a neighbour.
#[derive(Debug, Clone)]
struct Peer {
    cipher_pk: [u8; 32],
    mask_pk: [u8; 32],
}

/// One bank's side of a round. Secrets never leave it except as shares its
/// neighbours can decrypt.
pub struct Client {
    id: u32,
    params: Params,
    round: RoundId,
    identity: Arc<Ed25519KeyPair>,
    roster: Arc<Roster>,
    rng: SystemRandom,
    stage: ClientStage,
    cipher_sk: StaticSecret,
    mask_sk: StaticSecret,
    seed: [u8; 32],
    neighbours: BTreeSet<u32>,
    peers: BTreeMap<u32, Peer>,
    /// Shares this client holds for others: (seed share, mask-key share).
    held: BTreeMap<u32, (Share, Share)>,
    /// Neighbours this client masked with.
    masked_with: BTreeSet<u32>,
    signed_survivors: Option<Vec<u32>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "secagg::Client({}, stage {:?})", self.id, self.stage)
    }
}

fn random32(rng: &SystemRandom) -> Result<[u8; 32], ProtocolError> {
    let mut b = [0u8; 32];
    rng.fill(&mut b)
        .map_err(|_| ProtocolError::Crypto("the system random source failed".into()))?;
    Ok(b)
}

impl Client {
    /// Join round `round` as client `id`; returns the keys to send (stage 0).
    pub fn new(
        id: u32,
        identity: Arc<Ed25519KeyPair>,
        roster: Arc<Roster>,
        params: Params,
        round: RoundId,
    ) -> Result<(Self, AdvertiseKeys), ProtocolError> {
        params.validate()?;
        if roster.len() != params.clients || id as usize >= params.clients {
            return Err(ProtocolError::Config(format!(
                "client {id} in a roster of {} for {} clients",
                roster.len(),
                params.clients
            )));
        }
        let rng = SystemRandom::new();
        let cipher_sk = StaticSecret::from(random32(&rng)?);
        let mask_sk = StaticSecret::from(random32(&rng)?);
        let seed = random32(&rng)?;
        let mut msg = AdvertiseKeys {
            from: id,
            round,
            cipher_pk: PublicKey::from(&cipher_sk).to_bytes(),
            mask_pk: PublicKey::from(&mask_sk).to_bytes(),
            seed_commitment: commitment(&seed),
            signature: Vec::new(),
        };
        msg.signature = identity.sign(&msg.signed()).as_ref().to_vec();
        let neighbours = neighbours(&params, &round, id).into_iter().collect();
        Ok((
            Self {
                id,
                params,
                round,
                identity,
                roster,
                rng,
                stage: ClientStage::Advertised,
                cipher_sk,
                mask_sk,
                seed,
                neighbours,
                peers: BTreeMap::new(),
                held: BTreeMap::new(),
                masked_with: BTreeSet::new(),
                signed_survivors: None,
            },
            msg,
        ))
    }

    /// This client's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    fn expect(&self, stage: ClientStage, what: &str) -> Result<(), ProtocolError> {
        if self.stage != stage {
            return Err(ProtocolError::OutOfOrder(format!(
                "client {} got {what} in stage {:?}",
                self.id, self.stage
            )));
        }
        Ok(())
    }

    fn sign(&self, bytes: &[u8]) -> Vec<u8> {
        self.identity.sign(bytes).as_ref().to_vec()
    }

    /// Stage 1: the neighbours' advertised keys in; encrypted shares out.
    ///
    /// Keys with a bad signature, of another round, from a non-neighbour or repeated
    /// are refused; fewer than `threshold` valid neighbours abort the round.
    pub fn share_keys(&mut self, keys: &[AdvertiseKeys]) -> Result<ShareKeys, ProtocolError> {
        self.expect(ClientStage::Advertised, "neighbour keys")?;
        let mut peers = BTreeMap::new();
        for k in keys {
            if k.round != self.round
                || !self.neighbours.contains(&k.from)
                || peers.contains_key(&k.from)
                || !self.roster.verify(k.from, &k.signed(), &k.signature)
            {
                return Err(ProtocolError::Refused {
                    stage: "share keys",
                    reason: format!(
                        "the keys of client {} are not from a neighbour of this round with a valid signature, or repeated",
                        k.from
                    ),
                });
            }
            if k.cipher_pk == k.mask_pk {
                return Err(ProtocolError::Refused {
                    stage: "share keys",
                    reason: format!("client {} reuses one key for both purposes", k.from),
                });
            }
            peers.insert(
                k.from,
                Peer {
                    cipher_pk: k.cipher_pk,
                    mask_pk: k.mask_pk,
                },
            );
        }
        // Shares go to the neighbours and to this client itself (it reveals its own
        // seed share if it survives), so a threshold of t means t of the n + 1 holders.
        if peers.len() + 1 < self.params.threshold {
            self.stage = ClientStage::Done;
            return Err(ProtocolError::Aborted {
                stage: "share keys",
                have: peers.len() + 1,
                need: self.params.threshold,
            });
        }
        let mut holders: Vec<u32> = peers.keys().copied().chain([self.id]).collect();
        holders.sort_unstable();
        let points: Vec<u8> = holders.iter().map(|v| (*v + 1) as u8).collect();
        let seed_shares = shamir::split(&self.seed, self.params.threshold, &points, &self.rng)?;
        let key_shares = shamir::split(
            &self.mask_sk.to_bytes(),
            self.params.threshold,
            &points,
            &self.rng,
        )?;
        let mut shares = Vec::with_capacity(peers.len());
        for ((v, bs), ks) in holders.iter().zip(&seed_shares).zip(&key_shares) {
            if *v == self.id {
                self.held.insert(self.id, (bs.clone(), ks.clone()));
                continue;
            }
            let peer = &peers[v];
            let mut plain = Vec::with_capacity(1 + 2 * SECRET_LEN);
            plain.push(bs.x);
            plain.extend_from_slice(&bs.y);
            plain.extend_from_slice(&ks.y);
            let key = share_key(&self.cipher_sk, &peer.cipher_pk, &self.round, self.id, *v);
            let aad = transcript("share-aead", &self.round, self.id, &[&v.to_be_bytes()]);
            key.seal_in_place_append_tag(share_nonce(self.id, *v), Aad::from(aad), &mut plain)
                .map_err(|_| ProtocolError::Crypto("share encryption failed".into()))?;
            shares.push(EncryptedShare {
                from: self.id,
                to: *v,
                ciphertext: plain,
            });
        }
        self.peers = peers;
        self.stage = ClientStage::Shared;
        let mut msg = ShareKeys {
            from: self.id,
            round: self.round,
            shares,
            signature: Vec::new(),
        };
        msg.signature = self.sign(&msg.signed());
        Ok(msg)
    }

    /// Stage 2: the shares addressed to this client in; the masked `input` out.
    ///
    /// A share that does not decrypt (tampered, for another round, from someone else)
    /// is rejected: this client does not mask with its sender and reports it.
    pub fn masked_input(
        &mut self,
        incoming: &[EncryptedShare],
        input: &[u32],
    ) -> Result<MaskedInput, ProtocolError> {
        self.expect(ClientStage::Shared, "shares")?;
        if input.len() != self.params.len {
            return Err(ProtocolError::InvalidInput(format!(
                "the input has {} words, the round {}",
                input.len(),
                self.params.len
            )));
        }
        let mut rejected = BTreeSet::new();
        for s in incoming {
            let Some(peer) = self.peers.get(&s.from) else {
                rejected.insert(s.from);
                continue;
            };
            if s.to != self.id || self.held.contains_key(&s.from) {
                rejected.insert(s.from);
                continue;
            }
            let key = share_key(
                &self.cipher_sk,
                &peer.cipher_pk,
                &self.round,
                s.from,
                self.id,
            );
            let aad = transcript("share-aead", &self.round, s.from, &[&self.id.to_be_bytes()]);
            let mut buf = s.ciphertext.clone();
            match key.open_in_place(share_nonce(s.from, self.id), Aad::from(aad), &mut buf) {
                Ok(plain)
                    if plain.len() == 1 + 2 * SECRET_LEN && plain[0] == (self.id + 1) as u8 =>
                {
                    let mut by = [0u8; 32];
                    let mut ky = [0u8; 32];
                    by.copy_from_slice(&plain[1..33]);
                    ky.copy_from_slice(&plain[33..65]);
                    self.held.insert(
                        s.from,
                        (Share { x: plain[0], y: by }, Share { x: plain[0], y: ky }),
                    );
                }
                _ => {
                    rejected.insert(s.from);
                }
            }
        }
        // A neighbour whose share did not arrive dropped before the coordinator closed
        // the stage: not masked with, not accused. Only shares that arrived and failed
        // are reported.
        rejected.retain(|v| self.peers.contains_key(v));
        self.masked_with = self
            .held
            .keys()
            .copied()
            .filter(|v| *v != self.id && !rejected.contains(v))
            .collect();
        if self.masked_with.len() + 1 < self.params.threshold {
            self.stage = ClientStage::Done;
            return Err(ProtocolError::Aborted {
                stage: "masked input",
                have: self.masked_with.len() + 1,
                need: self.params.threshold,
            });
        }
        let mut y = input.to_vec();
        MaskPrg::new(&self.seed).apply(&mut y, false);
        for v in &self.masked_with {
            let peer = &self.peers[v];
            let seed = pair_seed(&self.mask_sk, &peer.mask_pk, &self.round, self.id, *v);
            MaskPrg::new(&seed).apply(&mut y, *v < self.id);
        }
        self.stage = ClientStage::Masked;
        let mut msg = MaskedInput {
            from: self.id,
            round: self.round,
            rejected: rejected.into_iter().collect(),
            masked: y,
            signature: Vec::new(),
        };
        msg.signature = self.sign(&msg.signed());
        Ok(msg)
    }

    /// Stage 3: sign the survivor list (if it is large enough and names this client).
    pub fn consistency(&mut self, list: &SurvivorList) -> Result<ConsistencySig, ProtocolError> {
        self.expect(ClientStage::Masked, "the survivor list")?;
        let refuse = |reason: String| ProtocolError::Refused {
            stage: "consistency check",
            reason,
        };
        if list.round != self.round {
            return Err(refuse("the list is for another round".into()));
        }
        if !list.survivors.windows(2).all(|w| w[0] < w[1]) {
            return Err(refuse("the survivor list is not sorted and unique".into()));
        }
        if !list.survivors.contains(&self.id) {
            return Err(refuse("this client is not on the survivor list".into()));
        }
        if list.survivors.len() < self.params.threshold {
            self.stage = ClientStage::Done;
            return Err(ProtocolError::Aborted {
                stage: "consistency check",
                have: list.survivors.len(),
                need: self.params.threshold,
            });
        }
        self.signed_survivors = Some(list.survivors.clone());
        self.stage = ClientStage::Signed;
        Ok(ConsistencySig {
            from: self.id,
            round: self.round,
            signature: self.sign(&consistency_transcript(
                &self.round,
                self.id,
                &list.survivors,
            )),
        })
    }

    /// Stage 4: reveal, for each neighbour, its seed share if it survived or its
    /// mask-key share if it dropped. Refuses (revealing nothing) when the lists overlap,
    /// differ from the signed one, or carry fewer than `threshold` valid signatures.
    /// Answers once.
    pub fn unmask(&mut self, req: &UnmaskRequest) -> Result<UnmaskResponse, ProtocolError> {
        self.expect(ClientStage::Signed, "the unmask request")?;
        // Whatever happens next, this client never answers a second request.
        self.stage = ClientStage::Done;
        let refuse = |reason: String| ProtocolError::Refused {
            stage: "unmasking",
            reason,
        };
        let signed = self.signed_survivors.clone().unwrap_or_default();
        if req.round != self.round {
            return Err(refuse("the request is for another round".into()));
        }
        if req.survivors != signed {
            return Err(refuse(
                "the survivor list differs from the one this client signed".into(),
            ));
        }
        let survivors: BTreeSet<u32> = req.survivors.iter().copied().collect();
        if let Some(both) = req.dropped.iter().find(|d| survivors.contains(d)) {
            return Err(refuse(format!(
                "client {both} is listed as both surviving and dropped"
            )));
        }
        let mut signers = BTreeSet::new();
        for (from, sig) in &req.signatures {
            if survivors.contains(from)
                && self.roster.verify(
                    *from,
                    &consistency_transcript(&self.round, *from, &req.survivors),
                    sig,
                )
            {
                signers.insert(*from);
            }
        }
        if signers.len() < self.params.threshold {
            return Err(refuse(format!(
                "{} valid signatures of the survivor list, {} needed",
                signers.len(),
                self.params.threshold
            )));
        }
        let dropped: BTreeSet<u32> = req.dropped.iter().copied().collect();
        let mut seed_shares = Vec::new();
        let mut key_shares = Vec::new();
        for (owner, (bs, ks)) in &self.held {
            if survivors.contains(owner) {
                seed_shares.push((*owner, bs.clone()));
            } else if dropped.contains(owner) {
                key_shares.push((*owner, ks.clone()));
            }
        }
        let mut msg = UnmaskResponse {
            from: self.id,
            round: self.round,
            seed_shares,
            key_shares,
            signature: Vec::new(),
        };
        msg.signature = self.sign(&msg.signed());
        Ok(msg)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ServerStage {
    Advertise,
    Share,
    Masked,
    Consistency,
    Unmask,
    Done,
}

/// The result of a round: the exact sum in Z_(2^32) of the survivors' inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregate {
    /// Word-wise sum mod 2^32.
    pub sum: Vec<u32>,
    /// Whose inputs it sums.
    pub contributors: Vec<u32>,
    /// Clients that dropped or were excluded after sharing keys.
    pub dropped: Vec<u32>,
}

/// The coordinator's side of one round. It sees public keys, ciphertexts it cannot
/// open, masked vectors, and at unmasking either the seed or the mask key of each
/// client, never both.
pub struct Server {
    params: Params,
    round: RoundId,
    roster: Arc<Roster>,
    stage: ServerStage,
    graph: Vec<BTreeSet<u32>>,
    keys: BTreeMap<u32, AdvertiseKeys>,
    shares: BTreeMap<u32, ShareKeys>,
    masked: BTreeMap<u32, MaskedInput>,
    survivors: Vec<u32>,
    dropped: Vec<u32>,
    signatures: BTreeMap<u32, Vec<u8>>,
    responses: BTreeMap<u32, UnmaskResponse>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "secagg::Server(stage {:?})", self.stage)
    }
}

impl Server {
    /// Coordinate round `round` for `roster`.
    pub fn new(params: Params, round: RoundId, roster: Arc<Roster>) -> Result<Self, ProtocolError> {
        params.validate()?;
        if roster.len() != params.clients {
            return Err(ProtocolError::Config(format!(
                "a roster of {} for {} clients",
                roster.len(),
                params.clients
            )));
        }
        let graph = (0..params.clients as u32)
            .map(|i| neighbours(&params, &round, i).into_iter().collect())
            .collect();
        Ok(Self {
            params,
            round,
            roster,
            stage: ServerStage::Advertise,
            graph,
            keys: BTreeMap::new(),
            shares: BTreeMap::new(),
            masked: BTreeMap::new(),
            survivors: Vec::new(),
            dropped: Vec::new(),
            signatures: BTreeMap::new(),
            responses: BTreeMap::new(),
        })
    }

    fn reject(&self, from: u32, stage: &'static str, reason: impl Into<String>) -> ProtocolError {
        ProtocolError::Rejected {
            from,
            stage,
            reason: reason.into(),
        }
    }

    fn check(
        &self,
        stage: ServerStage,
        name: &'static str,
        from: u32,
        round: &RoundId,
        seen: bool,
    ) -> Result<(), ProtocolError> {
        if self.stage != stage {
            return Err(self.reject(from, name, format!("the round is at {:?}", self.stage)));
        }
        if *round != self.round {
            return Err(self.reject(from, name, "message of another session or round (replay?)"));
        }
        if from as usize >= self.params.clients {
            return Err(self.reject(from, name, "not in the roster"));
        }
        if seen {
            return Err(self.reject(from, name, "second message in this stage (replay?)"));
        }
        Ok(())
    }

    fn abort(&mut self, stage: &'static str, have: usize) -> ProtocolError {
        self.stage = ServerStage::Done;
        ProtocolError::Aborted {
            stage,
            have,
            need: self.params.threshold,
        }
    }

    /// Stage 0: take one client's keys.
    pub fn receive_keys(&mut self, m: AdvertiseKeys) -> Result<(), ProtocolError> {
        self.check(
            ServerStage::Advertise,
            "advertise keys",
            m.from,
            &m.round,
            self.keys.contains_key(&m.from),
        )?;
        if !self.roster.verify(m.from, &m.signed(), &m.signature) {
            return Err(self.reject(m.from, "advertise keys", "bad signature"));
        }
        self.keys.insert(m.from, m);
        Ok(())
    }

    /// Close stage 0: for each client that advertised, its neighbours' keys.
    pub fn close_keys(&mut self) -> Result<BTreeMap<u32, Vec<AdvertiseKeys>>, ProtocolError> {
        if self.stage != ServerStage::Advertise {
            return Err(ProtocolError::OutOfOrder("close_keys".into()));
        }
        if self.keys.len() < self.params.threshold {
            return Err(self.abort("advertise keys", self.keys.len()));
        }
        self.stage = ServerStage::Share;
        Ok(self
            .keys
            .keys()
            .map(|u| {
                let ks = self.graph[*u as usize]
                    .iter()
                    .filter_map(|v| self.keys.get(v).cloned())
                    .collect();
                (*u, ks)
            })
            .collect())
    }

    /// Stage 1: take one client's encrypted shares: exactly one for each neighbour
    /// that advertised keys.
    pub fn receive_shares(&mut self, m: ShareKeys) -> Result<(), ProtocolError> {
        const S: &str = "share keys";
        self.check(
            ServerStage::Share,
            S,
            m.from,
            &m.round,
            self.shares.contains_key(&m.from),
        )?;
        if !self.keys.contains_key(&m.from) {
            return Err(self.reject(m.from, S, "it did not advertise keys"));
        }
        if !self.roster.verify(m.from, &m.signed(), &m.signature) {
            return Err(self.reject(m.from, S, "bad signature"));
        }
        let expected: BTreeSet<u32> = self.graph[m.from as usize]
            .iter()
            .copied()
            .filter(|v| self.keys.contains_key(v))
            .collect();
        let got: BTreeSet<u32> = m.shares.iter().map(|s| s.to).collect();
        if m.shares.len() != expected.len() || got != expected {
            return Err(self.reject(
                m.from,
                S,
                format!(
                    "{} shares for {} neighbours with keys; one each is required",
                    m.shares.len(),
                    expected.len()
                ),
            ));
        }
        if let Some(s) = m
            .shares
            .iter()
            .find(|s| s.from != m.from || s.ciphertext.len() != 1 + 2 * SECRET_LEN + 16)
        {
            return Err(self.reject(m.from, S, format!("malformed share for client {}", s.to)));
        }
        self.shares.insert(m.from, m);
        Ok(())
    }

    /// Close stage 1: for each client that shared, the shares addressed to it.
    pub fn close_shares(&mut self) -> Result<BTreeMap<u32, Vec<EncryptedShare>>, ProtocolError> {
        if self.stage != ServerStage::Share {
            return Err(ProtocolError::OutOfOrder("close_shares".into()));
        }
        if self.shares.len() < self.params.threshold {
            return Err(self.abort("share keys", self.shares.len()));
        }
        self.stage = ServerStage::Masked;
        let mut out: BTreeMap<u32, Vec<EncryptedShare>> =
            self.shares.keys().map(|u| (*u, Vec::new())).collect();
        for m in self.shares.values() {
            for s in &m.shares {
                if let Some(inbox) = out.get_mut(&s.to) {
                    inbox.push(s.clone());
                }
            }
        }
        Ok(out)
    }

    /// Stage 2: take one client's masked input.
    pub fn receive_masked(&mut self, m: MaskedInput) -> Result<(), ProtocolError> {
        const S: &str = "masked input";
        self.check(
            ServerStage::Masked,
            S,
            m.from,
            &m.round,
            self.masked.contains_key(&m.from),
        )?;
        if !self.shares.contains_key(&m.from) {
            return Err(self.reject(m.from, S, "it did not share keys"));
        }
        if m.masked.len() != self.params.len {
            return Err(self.reject(
                m.from,
                S,
                format!(
                    "{} words; the round takes {}",
                    m.masked.len(),
                    self.params.len
                ),
            ));
        }
        if m.rejected.len() > self.params.neighbours
            || m.rejected
                .iter()
                .any(|v| !self.graph[m.from as usize].contains(v))
        {
            return Err(self.reject(m.from, S, "its rejection list names non-neighbours"));
        }
        if !self.roster.verify(m.from, &m.signed(), &m.signature) {
            return Err(self.reject(m.from, S, "bad signature"));
        }
        self.masked.insert(m.from, m);
        Ok(())
    }

    /// Close stage 2: the survivor list. A client that reported a rejected share and
    /// the client it accuses are both left out (their inputs are not summed; their
    /// mask keys are recovered like a dropout's), since the coordinator cannot tell
    /// which of the two lies.
    pub fn close_masked(&mut self) -> Result<SurvivorList, ProtocolError> {
        if self.stage != ServerStage::Masked {
            return Err(ProtocolError::OutOfOrder("close_masked".into()));
        }
        let mut excluded = BTreeSet::new();
        for m in self.masked.values() {
            if !m.rejected.is_empty() {
                excluded.insert(m.from);
                excluded.extend(m.rejected.iter().copied());
            }
        }
        self.survivors = self
            .masked
            .keys()
            .copied()
            .filter(|u| !excluded.contains(u))
            .collect();
        self.dropped = self
            .shares
            .keys()
            .copied()
            .filter(|u| !self.survivors.contains(u))
            .collect();
        if self.survivors.len() < self.params.threshold {
            return Err(self.abort("masked input", self.survivors.len()));
        }
        self.stage = ServerStage::Consistency;
        Ok(SurvivorList {
            round: self.round,
            survivors: self.survivors.clone(),
        })
    }

    /// Stage 3: take one survivor's signature of the list.
    pub fn receive_consistency(&mut self, m: ConsistencySig) -> Result<(), ProtocolError> {
        const S: &str = "consistency check";
        self.check(
            ServerStage::Consistency,
            S,
            m.from,
            &m.round,
            self.signatures.contains_key(&m.from),
        )?;
        if !self.survivors.contains(&m.from) {
            return Err(self.reject(m.from, S, "not a survivor"));
        }
        if !self.roster.verify(
            m.from,
            &consistency_transcript(&self.round, m.from, &self.survivors),
            &m.signature,
        ) {
            return Err(self.reject(m.from, S, "bad signature of the survivor list"));
        }
        self.signatures.insert(m.from, m.signature);
        Ok(())
    }

    /// Close stage 3: the unmask request for the clients that signed.
    pub fn close_consistency(&mut self) -> Result<UnmaskRequest, ProtocolError> {
        if self.stage != ServerStage::Consistency {
            return Err(ProtocolError::OutOfOrder("close_consistency".into()));
        }
        if self.signatures.len() < self.params.threshold {
            return Err(self.abort("consistency check", self.signatures.len()));
        }
        self.stage = ServerStage::Unmask;
        Ok(UnmaskRequest {
            round: self.round,
            survivors: self.survivors.clone(),
            dropped: self.dropped.clone(),
            signatures: self
                .signatures
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
        })
    }

    /// Whether client `holder` should hold shares of `owner`: a neighbour that
    /// received them and did not reject them.
    fn holds(&self, holder: u32, owner: u32) -> bool {
        (holder == owner || self.graph[owner as usize].contains(&holder))
            && self.shares.contains_key(&owner)
            && self.shares.contains_key(&holder)
            && self
                .masked
                .get(&holder)
                .is_none_or(|m| !m.rejected.contains(&owner))
    }

    /// Stage 4: take one client's revealed shares. Shares it should not have (a seed
    /// share of a dropped client, a key share of a survivor, another's point) reject
    /// the whole message.
    pub fn receive_unmask(&mut self, m: UnmaskResponse) -> Result<(), ProtocolError> {
        const S: &str = "unmasking";
        self.check(
            ServerStage::Unmask,
            S,
            m.from,
            &m.round,
            self.responses.contains_key(&m.from),
        )?;
        if !self.signatures.contains_key(&m.from) {
            return Err(self.reject(m.from, S, "it did not sign the survivor list"));
        }
        let x = (m.from + 1) as u8;
        for (owner, s) in &m.seed_shares {
            if s.x != x || !self.survivors.contains(owner) || !self.holds(m.from, *owner) {
                return Err(self.reject(
                    m.from,
                    S,
                    format!("unexpected seed share of client {owner}"),
                ));
            }
        }
        for (owner, s) in &m.key_shares {
            if s.x != x || !self.dropped.contains(owner) || !self.holds(m.from, *owner) {
                return Err(self.reject(
                    m.from,
                    S,
                    format!("unexpected key share of client {owner}"),
                ));
            }
        }
        let owners: BTreeSet<u32> = m
            .seed_shares
            .iter()
            .chain(&m.key_shares)
            .map(|(o, _)| *o)
            .collect();
        if owners.len() != m.seed_shares.len() + m.key_shares.len() {
            return Err(self.reject(m.from, S, "two shares of one client"));
        }
        if !self.roster.verify(m.from, &m.signed(), &m.signature) {
            return Err(self.reject(m.from, S, "bad signature"));
        }
        self.responses.insert(m.from, m);
        Ok(())
    }

    /// Rebuild a secret from the shares revealed for `owner`, trying further subsets
    /// when the first does not pass `ok` (a client gave a bad share).
    fn rebuild(
        &self,
        owner: u32,
        seed: bool,
        ok: impl Fn(&[u8; 32]) -> bool,
    ) -> Result<[u8; 32], ProtocolError> {
        let shares: Vec<Share> = self
            .responses
            .values()
            .filter_map(|r| {
                let list = if seed { &r.seed_shares } else { &r.key_shares };
                list.iter()
                    .find(|(o, _)| *o == owner)
                    .map(|(_, s)| s.clone())
            })
            .collect();
        let t = self.params.threshold;
        if shares.len() < t {
            return Err(ProtocolError::Aborted {
                stage: if seed {
                    "unmasking (self-mask seed)"
                } else {
                    "unmasking (dropped client's key)"
                },
                have: shares.len(),
                need: t,
            });
        }
        for start in 0..=shares.len() - t {
            let s = shamir::combine(&shares[start..start + t], t)?;
            if ok(&s) {
                return Ok(s);
            }
        }
        Err(ProtocolError::Aborted {
            stage: "unmasking (shares do not rebuild a committed secret)",
            have: shares.len(),
            need: t,
        })
    }

    /// Close stage 4: remove the masks and return the sum.
    pub fn finish(&mut self) -> Result<Aggregate, ProtocolError> {
        if self.stage != ServerStage::Unmask {
            return Err(ProtocolError::OutOfOrder("finish".into()));
        }
        self.stage = ServerStage::Done;
        if self.responses.len() < self.params.threshold {
            return Err(ProtocolError::Aborted {
                stage: "unmasking",
                have: self.responses.len(),
                need: self.params.threshold,
            });
        }
        let mut sum = vec![0u32; self.params.len];
        for u in &self.survivors {
            for (a, y) in sum.iter_mut().zip(&self.masked[u].masked) {
                *a = a.wrapping_add(*y);
            }
        }
        for u in &self.survivors {
            let commit = self.keys[u].seed_commitment;
            let seed = self.rebuild(*u, true, |s| commitment(s) == commit)?;
            MaskPrg::new(&seed).apply(&mut sum, true);
        }
        for d in &self.dropped {
            // Survivors that masked with d.
            let affected: Vec<u32> = self
                .survivors
                .iter()
                .copied()
                .filter(|u| u != d && self.holds(*u, *d))
                .collect();
            if affected.is_empty() {
                continue;
            }
            let mask_pk = self.keys[d].mask_pk;
            let sk = self.rebuild(*d, false, |s| {
                PublicKey::from(&StaticSecret::from(*s)).to_bytes() == mask_pk
            })?;
            let sk = StaticSecret::from(sk);
            for u in affected {
                let seed = pair_seed(&sk, &self.keys[&u].mask_pk, &self.round, *d, u);
                // u added the mask if d > u, subtracted it if d < u: undo that.
                MaskPrg::new(&seed).apply(&mut sum, *d > u);
            }
        }
        Ok(Aggregate {
            sum,
            contributors: self.survivors.clone(),
            dropped: self.dropped.clone(),
        })
    }
}
