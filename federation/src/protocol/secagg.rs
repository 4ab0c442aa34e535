//! SecAgg / SecAgg+ state machines: [`Client`] (one per bank) and [`Server`] (the
//! coordinator).
//!
//! Stages, each closed by the coordinator (the service layer puts a deadline on each):
//!
//! 0. **Advertise keys.** Each client makes two fresh X25519 key pairs (one to encrypt
//!    shares, one to agree mask seeds), a 256-bit self-mask seed `b`, and sends the two
//!    public keys and a SHA-256 commitment to `b`, signed with its Ed25519 identity.
//! 1. **Share keys.** Each client gets every advert of the round, draws the neighbour
//!    graph from all of them ([`graph_seed`]), and Shamir-shares its mask secret key and
//!    `b` among its neighbours only (threshold `t`; it keeps no share of its own), each
//!    share encrypted with ChaCha20-Poly1305 under a key from X25519 agreement with the
//!    neighbour (HKDF-SHA256, salted with the round).
//! 2. **Masked input.** `y = x + PRG(b) + Σ ±PRG(s_uv)` in Z_(2^32) over the neighbours
//!    whose shares it accepted (`+` towards higher ids, `−` towards lower), where `s_uv`
//!    comes from X25519 agreement of the mask keys. A share that fails to decrypt or is
//!    for another round is rejected and the rejection is reported, signed, with `y`.
//! 3. **Consistency check.** The coordinator names the survivors; each signs the list.
//! 4. **Unmasking.** Given at least `t + 1` valid signatures on the same list, a client
//!    reveals, for each neighbour, the share of `b` if it survived or the share of its
//!    mask key if it dropped, never both, and refuses if the lists overlap.
//!
//! The coordinator removes the self masks of survivors and the pairwise masks between
//! survivors and dropped clients, leaving the exact sum in Z_(2^32). With fewer than
//! `t + 1` clients at any stage the round aborts before anything is revealed.
//!
//! **What a bank enforces itself.** The coordinator's plan names `t` and `k`, but each
//! client checks them against its own [`ClientPolicy`] before making any key: with
//! `2t > k + c` the coordinator colluding with up to `c` banks cannot learn any other
//! bank's input, wherever the colluders sit in the graph. Three banks with `t = 2`
//! withstand one colluding bank but no dropout after keys are shared.
//!
//! Neighbours: with `neighbours = n − 1` every pair shares masks (SecAgg). With fewer
//! (SecAgg+), clients sit on a ring in a random order drawn from every advert and each
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
    /// Shares needed to rebuild a client's secret. Only its neighbours hold shares (a
    /// client holds none of its own), so a round goes on with at least `threshold + 1`
    /// clients: each survivor's secrets are rebuilt from `threshold` others.
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
    /// `neighbours` (the share holders) and at most that, even `neighbours` below
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
        // Share holders are the neighbours (never the client itself). More than half of
        // them: two disjoint groups can never both reach the threshold.
        let holders = self.neighbours;
        if self.threshold * 2 <= holders || self.threshold > holders {
            return bad(format!(
                "threshold {} must be more than half of the {holders} share holders (the neighbours) and at most that",
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

    /// Fewest clients a round goes on with: `threshold + 1`.
    pub fn min_clients(&self) -> usize {
        self.threshold + 1
    }

    /// Fewest distinct roster members whose signatures on one survivor list (and one
    /// advert set) a client requires before it reveals anything: more than `(n + c)/2`
    /// with `c` = [`Params::colluders_tolerated`], and at least `threshold + 1`.
    ///
    /// Why a roster majority and not `threshold + 1`: two quorums of this size share
    /// more than `c` members, so at least one honest bank, which signs one list per
    /// round. So two different lists (or advert sets) can never both be unmasked, for
    /// any `neighbours`. With SecAgg+ (`neighbours < clients − 1`) `threshold + 1` is
    /// far below that, and two disjoint groups could each gather it on their own list
    /// (issue 24). A bank whose policy accepts the plan assumes at most `c` colluders,
    /// so this quorum covers its assumption.
    pub fn unmask_quorum(&self) -> usize {
        let majority = (self.clients + self.colluders_tolerated()) / 2 + 1;
        majority.max(self.min_clients()).min(self.clients)
    }

    /// Fewest honest banks in any sum a coordinator colluding with `colluders` banks
    /// can compute from a round. Bank-level DP divides its noise by this, so the
    /// honest noise in every such sum is at least the accounted μ.
    ///
    /// Why: masking is symmetric (every bank masks with every neighbour in the one
    /// advert set the unmasking quorum saw), so a set `T` of honest survivors whose sum
    /// comes out must hold every surviving honest neighbour of its members (their pair
    /// masks cancel only inside the sum); each member's seed is rebuilt from `t` shares
    /// of surviving holders, which are colluders or members of `T`: `|T| ≥ t − c + 1`.
    /// With plain SecAgg every survivor neighbours every other, so `T` is all honest
    /// survivors: at least [`Params::unmask_quorum`] − `c`.
    pub fn honest_survivors(&self, colluders: usize) -> usize {
        let by_seed = (self.threshold + 1).saturating_sub(colluders);
        let bound = if self.neighbours + 1 >= self.clients {
            self.unmask_quorum().saturating_sub(colluders).max(by_seed)
        } else {
            by_seed
        };
        bound.max(1)
    }

    /// The most banks that may collude with the coordinator without learning any other
    /// bank's individual input, whatever the neighbour graph: `2·threshold − neighbours
    /// − 1`. See [`ClientPolicy`].
    pub fn colluders_tolerated(&self) -> usize {
        (2 * self.threshold).saturating_sub(self.neighbours + 1)
    }
}

/// Default number of banks assumed to collude with the coordinator in a federation of
/// `clients`: fewer than a third (Bonawitz et al. 2017's active model), and at least one
/// from 3 banks on. Two banks can protect nothing from each other: the sum minus one's
/// own input is the other's.
pub fn default_colluders(clients: usize) -> usize {
    match clients {
        0..=2 => 0,
        n => ((n - 1) / 3).max(1),
    }
}

/// Default threshold for `neighbours` share holders against `colluders`: the smallest
/// `t` with `2t > neighbours + colluders`, at most `neighbours`.
pub fn default_threshold(neighbours: usize, colluders: usize) -> usize {
    ((neighbours + colluders) / 2 + 1).min(neighbours.max(1))
}

/// What one bank requires of every round, from its own configuration, whatever the
/// coordinator's plan says. A plan or a peer set below it is refused before anything
/// secret leaves the bank.
///
/// The rule that carries the guarantee: the coordinator colluding with `colluders`
/// banks learns nothing about an honest bank's input when `2·threshold > neighbours +
/// colluders`. Only the `neighbours` hold shares of a bank's two secrets (self-mask seed
/// and mask key); each honest neighbour reveals at most one of the two for that bank;
/// the colluders hold one of each. To learn the input the coordinator needs both
/// secrets, i.e. `threshold` shares of each, so `2·threshold ≤ colluders·2 + honest
/// neighbours = neighbours + colluders` would be needed. The rule holds for every
/// placement of the colluders in the graph, so it does not rely on the graph being
/// random.
///
/// ```
/// use quiver_federation::protocol::secagg::{ClientPolicy, Params};
/// let policy = ClientPolicy::for_roster(3);
/// assert_eq!(policy.colluders, 1);
/// assert!(policy.check(&Params::secagg(3, 2, 10)).is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientPolicy {
    /// Banks that may collude with the coordinator (the guarantee's assumption).
    pub colluders: usize,
    /// Lowest threshold accepted.
    pub min_threshold: usize,
    /// Fewest neighbours (share holders) accepted.
    pub min_neighbours: usize,
    /// Fewest peers this bank shares its secrets with and masks with.
    pub min_peers: usize,
}

impl ClientPolicy {
    /// The defaults for a roster of `clients` banks: [`default_colluders`], and the
    /// minimums that follow from it.
    pub fn for_roster(clients: usize) -> Self {
        Self::against(clients, default_colluders(clients))
    }

    /// A policy that holds against the coordinator colluding with `colluders` banks.
    pub fn against(clients: usize, colluders: usize) -> Self {
        let k = clients.saturating_sub(1).max(1);
        let min_threshold = colluders + 1;
        Self {
            colluders,
            min_threshold,
            min_neighbours: min_threshold.min(k),
            min_peers: min_threshold,
        }
    }

    /// Refuse a plan below this policy.
    pub fn check(&self, params: &Params) -> Result<(), ProtocolError> {
        let refuse = |reason: String| {
            Err(ProtocolError::Refused {
                stage: "plan",
                reason,
            })
        };
        if params.threshold < self.min_threshold {
            return refuse(format!(
                "threshold {} is below this bank's minimum {}",
                params.threshold, self.min_threshold
            ));
        }
        if params.neighbours < self.min_neighbours {
            return refuse(format!(
                "{} neighbours is below this bank's minimum {}",
                params.neighbours, self.min_neighbours
            ));
        }
        if 2 * params.threshold <= params.neighbours + self.colluders {
            return refuse(format!(
                "threshold {} with {} neighbours tolerates {} colluding banks; this bank requires {} (2·threshold must exceed neighbours + colluders)",
                params.threshold,
                params.neighbours,
                params.colluders_tolerated(),
                self.colluders
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

/// The seed of the SecAgg+ neighbour graph: SHA-256 of the round and of every key
/// advert the party was shown, in id order. Each advert carries fresh keys of its bank,
/// so the coordinator cannot choose the graph by choosing a session id; and
/// [`ClientPolicy`]'s rule does not depend on the graph in any case.
pub fn graph_seed(round: &RoundId, adverts: &[&AdvertiseKeys]) -> [u8; 32] {
    let mut sorted: Vec<&&AdvertiseKeys> = adverts.iter().collect();
    sorted.sort_by_key(|a| a.from);
    let mut m = b"quiver-secagg-graph-v2\0".to_vec();
    m.extend_from_slice(&round.bytes());
    for a in sorted {
        m.extend_from_slice(&a.from.to_be_bytes());
        m.extend_from_slice(&a.cipher_pk);
        m.extend_from_slice(&a.mask_pk);
        m.extend_from_slice(&a.seed_commitment);
        m.extend_from_slice(&(a.signature.len() as u32).to_be_bytes());
        m.extend_from_slice(&a.signature);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, &m).as_ref());
    out
}

/// Digest of an advert set: SHA-256 of the round and every advert with its signature,
/// in id order. Each client signs the digest of the set it was shown inside its
/// consistency signature, and reveals nothing unless a quorum signed the same digest:
/// so every bank that unmasks drew the same neighbour graph from the same keys, and a
/// coordinator cannot show each bank a view of its own.
pub fn advert_digest(round: &RoundId, adverts: &[&AdvertiseKeys]) -> [u8; 32] {
    let mut sorted: Vec<&&AdvertiseKeys> = adverts.iter().collect();
    sorted.sort_by_key(|a| a.from);
    let mut m = b"quiver-secagg-adverts-v1\0".to_vec();
    m.extend_from_slice(&round.bytes());
    for a in sorted {
        m.extend_from_slice(&a.from.to_be_bytes());
        m.extend_from_slice(&a.cipher_pk);
        m.extend_from_slice(&a.mask_pk);
        m.extend_from_slice(&a.seed_commitment);
        m.extend_from_slice(&(a.signature.len() as u32).to_be_bytes());
        m.extend_from_slice(&a.signature);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, &m).as_ref());
    out
}

/// The neighbours of `id`, sorted, in the graph drawn from `seed` (see [`graph_seed`];
/// public: every party computes it).
pub fn neighbours(params: &Params, seed: &[u8; 32], id: u32) -> Vec<u32> {
    let n = params.clients;
    if params.neighbours >= n - 1 {
        return (0..n as u32).filter(|v| *v != id).collect();
    }
    // A random ring order from the seed, then k/2 on each side.
    let mut order: Vec<u32> = (0..n as u32).collect();
    let prg = MaskPrg::new(seed);
    let r = prg.words(n);
    for i in (1..n).rev() {
        let j = ((r[i] as u64 * (i as u64 + 1)) >> 32) as usize;
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

/// Stage 0: a client's public keys and seed commitment, signed together with the
/// round's plan (clients, threshold, neighbours, length), so every advert a client
/// accepts, and so every bank that unmasks under one advert digest, was made for the
/// same plan: a coordinator cannot show banks different thresholds.
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
    /// Ed25519 signature of all the above and of the plan ([`Params`]).
    pub signature: Vec<u8>,
}

fn plan_bytes(p: &Params) -> Vec<u8> {
    [p.clients, p.threshold, p.neighbours, p.len]
        .iter()
        .flat_map(|v| (*v as u64).to_be_bytes())
        .collect()
}

impl AdvertiseKeys {
    /// What the signature covers, for the plan `params` the verifier holds.
    fn signed_for(&self, params: &Params) -> Vec<u8> {
        transcript(
            "advertise-v2",
            &self.round,
            self.from,
            &[
                &self.cipher_pk,
                &self.mask_pk,
                &self.seed_commitment,
                &plan_bytes(params),
            ],
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
    /// Commitment to the holder's share of the owner's self-mask seed.
    pub seed_commitment: [u8; 32],
    /// Commitment to the holder's share of the owner's mask key.
    pub key_commitment: [u8; 32],
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
            body.extend_from_slice(&s.seed_commitment);
            body.extend_from_slice(&s.key_commitment);
        }
        transcript("share-v2", &self.round, self.from, &[&body])
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

/// What a consistency signature covers: the survivor list and the digest of the advert
/// set the signer was shown ([`advert_digest`]).
fn consistency_transcript(
    round: &RoundId,
    from: u32,
    survivors: &[u32],
    adverts: &[u8; 32],
) -> Vec<u8> {
    transcript(
        "consistency-v2",
        round,
        from,
        &[&ids_bytes(survivors), adverts],
    )
}

/// Commitment to one share an owner hands one holder: SHA-256 over the round, owner,
/// holder, which secret (`seed` or `key`) and the share. Signed by the owner at stage
/// 1 and checked by the holder when it opens the share, so a revealed share that does
/// not match it is the revealer's fault, named and dropped by itself.
fn share_commitment(round: &RoundId, owner: u32, holder: u32, kind: &str, s: &Share) -> [u8; 32] {
    let mut m = b"quiver-secagg-share-commit-v1\0".to_vec();
    m.extend_from_slice(kind.as_bytes());
    m.push(0);
    m.extend_from_slice(&round.bytes());
    m.extend_from_slice(&owner.to_be_bytes());
    m.extend_from_slice(&holder.to_be_bytes());
    m.push(s.x);
    m.extend_from_slice(&s.y);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, &m).as_ref());
    out
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
    /// The pairwise mask seed with each dropped neighbour the sender masked with, by
    /// neighbour: the coordinator removes that mask directly when the dropped client's
    /// key cannot be rebuilt (it dealt bad shares to too many holders). This reveals
    /// no more than rebuilding the dropped client's key would (every pairwise seed of
    /// that client), and nothing about a survivor.
    pub pair_seeds: Vec<(u32, [u8; 32])>,
    /// Ed25519 signature.
    pub signature: Vec<u8>,
}

impl UnmaskResponse {
    /// Sign (again) with `identity`.
    pub fn sign(&mut self, identity: &Ed25519KeyPair) {
        self.signature = identity.sign(&self.signed()).as_ref().to_vec();
    }

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
        let pairs: Vec<u8> = self
            .pair_seeds
            .iter()
            .flat_map(|(v, s)| v.to_be_bytes().into_iter().chain(*s))
            .collect();
        transcript(
            "unmask-v2",
            &self.round,
            self.from,
            &[&enc(&self.seed_shares), &enc(&self.key_shares), &pairs],
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
    policy: ClientPolicy,
    round: RoundId,
    identity: Arc<Ed25519KeyPair>,
    roster: Arc<Roster>,
    rng: SystemRandom,
    stage: ClientStage,
    advert: AdvertiseKeys,
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
    /// Digest of the advert set this client was shown ([`advert_digest`]).
    adverts_seen: [u8; 32],
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
    ///
    /// `params` come from the coordinator's plan; `policy` from this bank's own
    /// configuration. A plan below the policy is refused here, before any key exists.
    pub fn new(
        id: u32,
        identity: Arc<Ed25519KeyPair>,
        roster: Arc<Roster>,
        params: Params,
        policy: ClientPolicy,
        round: RoundId,
    ) -> Result<(Self, AdvertiseKeys), ProtocolError> {
        params.validate()?;
        policy.check(&params)?;
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
        msg.signature = identity.sign(&msg.signed_for(&params)).as_ref().to_vec();
        Ok((
            Self {
                id,
                params,
                policy,
                round,
                identity,
                roster,
                rng,
                stage: ClientStage::Advertised,
                advert: msg.clone(),
                cipher_sk,
                mask_sk,
                seed,
                neighbours: BTreeSet::new(),
                peers: BTreeMap::new(),
                held: BTreeMap::new(),
                masked_with: BTreeSet::new(),
                signed_survivors: None,
                adverts_seen: [0; 32],
            },
            msg,
        ))
    }

    /// This client's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Digest of the advert set this client was shown at stage 1 (zeros before).
    pub fn advert_digest(&self) -> [u8; 32] {
        self.adverts_seen
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

    /// Fewest peers this client shares with and masks with: the threshold, or the
    /// policy's minimum if higher.
    fn min_peers(&self) -> usize {
        self.params.threshold.max(self.policy.min_peers)
    }

    /// Stage 1: every advertised key of the round in (this client's own among them);
    /// encrypted shares for its neighbours out.
    ///
    /// The neighbour graph is drawn from all the adverts ([`graph_seed`]). Keys with a
    /// bad signature, of another round, of a client outside the roster, or repeated are
    /// refused, and so is a set without this client's own advert; fewer neighbours than
    /// the threshold (or this bank's `min_peers`) abort the round. This client holds no
    /// share of its own secrets: they are rebuilt from `threshold` others, never with
    /// its help.
    pub fn share_keys(&mut self, keys: &[AdvertiseKeys]) -> Result<ShareKeys, ProtocolError> {
        self.expect(ClientStage::Advertised, "advertised keys")?;
        let refuse = |reason: String| ProtocolError::Refused {
            stage: "share keys",
            reason,
        };
        let mut seen = BTreeSet::new();
        for k in keys {
            if k.round != self.round
                || k.from as usize >= self.params.clients
                || !seen.insert(k.from)
                || !self
                    .roster
                    .verify(k.from, &k.signed_for(&self.params), &k.signature)
            {
                self.stage = ClientStage::Done;
                return Err(refuse(format!(
                    "the keys of client {} are not of this round with a valid signature, or repeated",
                    k.from
                )));
            }
            if k.cipher_pk == k.mask_pk {
                self.stage = ClientStage::Done;
                return Err(refuse(format!(
                    "client {} reuses one key for both purposes",
                    k.from
                )));
            }
        }
        if !keys.contains(&self.advert) {
            self.stage = ClientStage::Done;
            return Err(refuse("this client's own keys are missing".into()));
        }
        let all: Vec<&AdvertiseKeys> = keys.iter().collect();
        let seed = graph_seed(&self.round, &all);
        self.adverts_seen = advert_digest(&self.round, &all);
        self.neighbours = neighbours(&self.params, &seed, self.id)
            .into_iter()
            .collect();
        let peers: BTreeMap<u32, Peer> = keys
            .iter()
            .filter(|k| self.neighbours.contains(&k.from))
            .map(|k| {
                (
                    k.from,
                    Peer {
                        cipher_pk: k.cipher_pk,
                        mask_pk: k.mask_pk,
                    },
                )
            })
            .collect();
        if peers.len() < self.min_peers() {
            self.stage = ClientStage::Done;
            return Err(ProtocolError::Aborted {
                stage: "share keys",
                have: peers.len(),
                need: self.min_peers(),
            });
        }
        let holders: Vec<u32> = peers.keys().copied().collect();
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
            let peer = &peers[v];
            let seed_commitment = share_commitment(&self.round, self.id, *v, "seed", bs);
            let key_commitment = share_commitment(&self.round, self.id, *v, "key", ks);
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
                seed_commitment,
                key_commitment,
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
            if s.to != self.id || s.from == self.id || self.held.contains_key(&s.from) {
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
                    let (bs, ks) = (Share { x: plain[0], y: by }, Share { x: plain[0], y: ky });
                    // The owner signed these commitments; a share that does not match
                    // them is the owner's fault, reported here, so a share revealed
                    // later that does not match them is the revealer's.
                    if share_commitment(&self.round, s.from, self.id, "seed", &bs)
                        != s.seed_commitment
                        || share_commitment(&self.round, s.from, self.id, "key", &ks)
                            != s.key_commitment
                    {
                        rejected.insert(s.from);
                        continue;
                    }
                    self.held.insert(s.from, (bs, ks));
                }
                _ => {
                    rejected.insert(s.from);
                }
            }
        }
        // Only shares that arrived and failed are reported; a neighbour whose share did
        // not arrive is not accused.
        rejected.retain(|v| self.peers.contains_key(v));
        // An honest bank never reports more than `neighbours − threshold` bad shares
        // (the coordinator excludes a bank that does): with more, it stops.
        let most = self.params.neighbours - self.params.threshold;
        if rejected.len() > most {
            self.stage = ClientStage::Done;
            return Err(ProtocolError::Aborted {
                stage: "masked input (bad shares)",
                have: self.peers.len() - rejected.len(),
                need: self.params.threshold,
            });
        }
        // Masking is symmetric by construction: this client masks with every neighbour
        // in the advert set, whether or not its share arrived or opened, and so does
        // every neighbour that saw the same set (the digest every unmasking bank
        // signed). A coordinator withholding shares cannot make one side of a pair mask
        // without the other; a dropped neighbour's mask is removed with its rebuilt
        // key or this client's pairwise seed with it (revealed at unmasking).
        self.masked_with = self.peers.keys().copied().collect();
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
        if list.survivors.len() < self.params.unmask_quorum() {
            self.stage = ClientStage::Done;
            return Err(ProtocolError::Aborted {
                stage: "consistency check",
                have: list.survivors.len(),
                need: self.params.unmask_quorum(),
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
                &self.adverts_seen,
            )),
        })
    }

    /// Stage 4: reveal, for each neighbour, its seed share if it survived or its
    /// mask-key share if it dropped. Refuses (revealing nothing) when the lists overlap,
    /// differ from the signed one, or carry fewer than `threshold + 1` valid signatures.
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
                    &consistency_transcript(&self.round, *from, &req.survivors, &self.adverts_seen),
                    sig,
                )
            {
                signers.insert(*from);
            }
        }
        // A roster majority on this exact list and advert set: two lists (or two
        // views of the adverts) can never both reach it (Params::unmask_quorum).
        if signers.len() < self.params.unmask_quorum() {
            return Err(refuse(format!(
                "{} valid signatures of this survivor list and advert set, {} needed",
                signers.len(),
                self.params.unmask_quorum()
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
        let pair_seeds = self
            .masked_with
            .iter()
            .filter(|v| dropped.contains(v))
            .map(|v| {
                let peer = &self.peers[v];
                (
                    *v,
                    pair_seed(&self.mask_sk, &peer.mask_pk, &self.round, self.id, *v),
                )
            })
            .collect();
        let mut msg = UnmaskResponse {
            from: self.id,
            round: self.round,
            seed_shares,
            key_shares,
            pair_seeds,
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
    /// Clients the coordinator caught breaking the protocol this round, with what they
    /// did (see [`Server::misbehaving`]).
    pub misbehaving: Vec<Misbehaviour>,
}

/// One client caught breaking the protocol, by a check the coordinator made itself
/// (never on another client's word alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misbehaviour {
    /// The client.
    pub client: u32,
    /// What it did.
    pub reason: String,
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
    /// Digest of the advert set handed to every client at stage 1.
    adverts_sent: [u8; 32],
    misbehaving: Vec<Misbehaviour>,
    excluded: BTreeSet<u32>,
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
        // Drawn from the adverts when stage 0 closes.
        let graph = vec![BTreeSet::new(); params.clients];
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
            adverts_sent: [0; 32],
            misbehaving: Vec::new(),
            excluded: BTreeSet::new(),
        })
    }

    /// Leave `clients` out of this round: their keys are refused (clients the
    /// coordinator caught breaking the protocol in an earlier round of the run).
    pub fn exclude(&mut self, clients: impl IntoIterator<Item = u32>) {
        self.excluded.extend(clients);
    }

    /// Clients whose masked input accused a neighbour this round (whether or not the
    /// coordinator acted on it). An accusation cannot be checked, so when a round
    /// fails without anyone caught, the coordinator runs the next one without them.
    pub fn accusers(&self) -> Vec<u32> {
        self.masked
            .values()
            .filter(|m| !m.rejected.is_empty())
            .map(|m| m.from)
            .chain(self.misbehaving.iter().map(|m| m.client))
            .collect::<BTreeSet<u32>>()
            .into_iter()
            .collect()
    }

    /// Clients caught breaking the protocol so far this round: a client that accused
    /// more neighbours than an honest one ever can (more than `neighbours −
    /// threshold`: it would have stopped instead), or revealed a share that does not
    /// match the commitment its owner signed (and its holder checked) at stage 1.
    pub fn misbehaving(&self) -> &[Misbehaviour] {
        &self.misbehaving
    }

    fn caught(&mut self, client: u32, reason: String) {
        tracing::warn!(client, %reason, "secure aggregation: a client broke the protocol");
        self.misbehaving.push(Misbehaviour { client, reason });
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
            need: self.params.min_clients(),
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
        if self.excluded.contains(&m.from) {
            return Err(self.reject(
                m.from,
                "advertise keys",
                "excluded from this run for breaking the protocol",
            ));
        }
        if !self
            .roster
            .verify(m.from, &m.signed_for(&self.params), &m.signature)
        {
            return Err(self.reject(
                m.from,
                "advertise keys",
                "bad signature (or keys made for another plan)",
            ));
        }
        self.keys.insert(m.from, m);
        Ok(())
    }

    /// Close stage 0: every advert, for each client that advertised (each draws the
    /// neighbour graph from all of them and keeps its neighbours' keys).
    pub fn close_keys(&mut self) -> Result<BTreeMap<u32, Vec<AdvertiseKeys>>, ProtocolError> {
        if self.stage != ServerStage::Advertise {
            return Err(ProtocolError::OutOfOrder("close_keys".into()));
        }
        if self.keys.len() < self.params.min_clients() {
            return Err(self.abort("advertise keys", self.keys.len()));
        }
        self.stage = ServerStage::Share;
        let all: Vec<&AdvertiseKeys> = self.keys.values().collect();
        let seed = graph_seed(&self.round, &all);
        self.adverts_sent = advert_digest(&self.round, &all);
        self.graph = (0..self.params.clients as u32)
            .map(|i| neighbours(&self.params, &seed, i).into_iter().collect())
            .collect();
        let everything: Vec<AdvertiseKeys> = self.keys.values().cloned().collect();
        Ok(self.keys.keys().map(|u| (*u, everything.clone())).collect())
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
        if let Some(s) = m.shares.iter().find(|s| {
            s.from != m.from
                || s.ciphertext.len() != 1 + 2 * SECRET_LEN + 16
                || s.seed_commitment == s.key_commitment
        }) {
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
        if self.shares.len() < self.params.min_clients() {
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

    /// Close stage 2: the survivor list.
    ///
    /// Accusations (shares a client reports as not opening or not matching their
    /// commitments) cannot be checked by the coordinator, so their reach is bounded by
    /// construction:
    ///
    /// - A client that accuses more than `neighbours − threshold` neighbours is
    ///   excluded alone and named: an honest client with that many bad shares masks
    ///   with fewer than `threshold` peers and stops instead of sending anything, so
    ///   such a report can only come from a client breaking the protocol. Its
    ///   accusations are ignored.
    /// - Any other accusation excludes the accused (its input is left out; its mask
    ///   key is recovered like a dropout's from the holders that accepted its share).
    ///   The accuser stays. So one client can take at most `neighbours − threshold`
    ///   others out of a round and never the round itself: at least `clients −
    ///   neighbours + threshold ≥ threshold + 1` survive.
    pub fn close_masked(&mut self) -> Result<SurvivorList, ProtocolError> {
        if self.stage != ServerStage::Masked {
            return Err(ProtocolError::OutOfOrder("close_masked".into()));
        }
        let most = self.params.neighbours - self.params.threshold;
        let over: Vec<(u32, usize)> = self
            .masked
            .values()
            .filter(|m| m.rejected.len() > most)
            .map(|m| (m.from, m.rejected.len()))
            .collect();
        let mut excluded = BTreeSet::new();
        for (from, count) in over {
            excluded.insert(from);
            self.caught(
                from,
                format!(
                    "accused {count} neighbours of bad shares; an honest bank stops at more than {most}"
                ),
            );
        }
        for m in self.masked.values() {
            if !excluded.contains(&m.from) {
                excluded.extend(m.rejected.iter().copied());
            }
        }
        // Only accusations of the clients kept count in `holds` from here on.
        let ignored: Vec<u32> = self.misbehaving.iter().map(|b| b.client).collect();
        for u in ignored {
            if let Some(m) = self.masked.get_mut(&u) {
                m.rejected.clear();
            }
        }
        self.survivors = self
            .masked
            .keys()
            .copied()
            .filter(|u| !excluded.contains(u))
            .collect();
        // Every client that advertised keys and is not summed: its neighbours masked
        // with it (masking follows the advert set), so its masks must come off.
        self.dropped = self
            .keys
            .keys()
            .copied()
            .filter(|u| !self.survivors.contains(u))
            .collect();
        if self.survivors.len() < self.params.unmask_quorum() {
            self.stage = ServerStage::Done;
            return Err(ProtocolError::Aborted {
                stage: "masked input",
                have: self.survivors.len(),
                need: self.params.unmask_quorum(),
            });
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
            &consistency_transcript(&self.round, m.from, &self.survivors, &self.adverts_sent),
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
        if self.signatures.len() < self.params.unmask_quorum() {
            self.stage = ServerStage::Done;
            return Err(ProtocolError::Aborted {
                stage: "consistency check",
                have: self.signatures.len(),
                need: self.params.unmask_quorum(),
            });
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

    /// Whether `u` masked with `v`: a neighbour in the advert set (every client masks
    /// with all of those, symmetrically).
    fn masks(&self, u: u32, v: u32) -> bool {
        u != v && self.graph[u as usize].contains(&v) && self.keys.contains_key(&v)
    }

    /// Whether client `holder` should hold shares of `owner`: a neighbour that
    /// received them and did not reject them (never the owner itself).
    fn holds(&self, holder: u32, owner: u32) -> bool {
        holder != owner
            && self.graph[owner as usize].contains(&holder)
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
        for (peer, _) in &m.pair_seeds {
            if !self.dropped.contains(peer) || !self.masks(m.from, *peer) {
                return Err(self.reject(
                    m.from,
                    S,
                    format!("unexpected pairwise seed with client {peer}"),
                ));
            }
        }
        let peers: BTreeSet<u32> = m.pair_seeds.iter().map(|(p, _)| *p).collect();
        if peers.len() != m.pair_seeds.len() {
            return Err(self.reject(m.from, S, "two pairwise seeds with one client"));
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

    /// Rebuild a secret of `owner` from the shares revealed for it. Each share is
    /// checked against the commitment its owner signed for that holder at stage 1; a
    /// share that does not match is dropped and its revealer named, one by one, so
    /// bad shares cost one hash each (no search over subsets).
    fn rebuild(&mut self, owner: u32, seed: bool) -> Result<[u8; 32], ProtocolError> {
        let kind = if seed { "seed" } else { "key" };
        let committed: BTreeMap<u32, [u8; 32]> = self.shares[&owner]
            .shares
            .iter()
            .map(|s| {
                (
                    s.to,
                    if seed {
                        s.seed_commitment
                    } else {
                        s.key_commitment
                    },
                )
            })
            .collect();
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for r in self.responses.values() {
            let list = if seed { &r.seed_shares } else { &r.key_shares };
            let Some((_, share)) = list.iter().find(|(o, _)| *o == owner) else {
                continue;
            };
            let commit = share_commitment(&self.round, owner, r.from, kind, share);
            if committed.get(&r.from) == Some(&commit) {
                good.push(share.clone());
            } else {
                bad.push(r.from);
            }
        }
        for holder in bad {
            self.caught(
                holder,
                format!(
                    "revealed a {kind} share of client {owner} that does not match its commitment"
                ),
            );
        }
        let t = self.params.threshold;
        if good.len() < t {
            return Err(ProtocolError::Aborted {
                stage: if seed {
                    "unmasking (self-mask seed)"
                } else {
                    "unmasking (dropped client's key)"
                },
                have: good.len(),
                need: t,
            });
        }
        shamir::combine(&good[..t], t)
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
        let survivors = self.survivors.clone();
        for u in &survivors {
            let seed = self.rebuild(*u, true)?;
            // Every share used matches the commitment `u` signed for its holder, so a
            // seed that does not match `u`'s own commitment is `u`'s doing: it dealt
            // shares of no single secret. Its mask cannot be removed; the round stops
            // (revealing nothing more) and `u` is named.
            if commitment(&seed) != self.keys[u].seed_commitment {
                self.caught(
                    *u,
                    "dealt seed shares that do not rebuild its committed seed".into(),
                );
                return Err(ProtocolError::Aborted {
                    stage: "unmasking (a client's committed shares do not rebuild its seed)",
                    have: 0,
                    need: self.params.threshold,
                });
            }
            MaskPrg::new(&seed).apply(&mut sum, true);
        }
        let dropped = self.dropped.clone();
        for d in &dropped {
            // Survivors that masked with d.
            let affected: Vec<u32> = self
                .survivors
                .iter()
                .copied()
                .filter(|u| self.masks(*u, *d))
                .collect();
            if affected.is_empty() {
                continue;
            }
            // d's key from its holders' shares when they rebuild it; otherwise (d dealt
            // bad shares to too many holders, or shares of no single key) each affected
            // survivor's own pairwise seed with d.
            let mask_pk = self.keys[d].mask_pk;
            // A client that advertised but never shared has no key shares to rebuild.
            let rebuilt = if self.shares.contains_key(d) {
                self.rebuild(*d, false)
            } else {
                Err(ProtocolError::OutOfOrder("no shares".into()))
            };
            let sk = match rebuilt {
                Ok(sk) => {
                    let sk = StaticSecret::from(sk);
                    if PublicKey::from(&sk).to_bytes() == mask_pk {
                        Some(sk)
                    } else {
                        self.caught(
                            *d,
                            "dealt key shares that do not rebuild its advertised mask key".into(),
                        );
                        None
                    }
                }
                Err(_) => None,
            };
            for u in affected {
                let seed = match &sk {
                    Some(sk) => pair_seed(sk, &self.keys[&u].mask_pk, &self.round, *d, u),
                    None => self
                        .responses
                        .get(&u)
                        .and_then(|r| r.pair_seeds.iter().find(|(v, _)| v == d))
                        .map(|(_, s)| *s)
                        .ok_or(ProtocolError::Aborted {
                            stage: "unmasking (a dropped client's mask: its key does not rebuild and a survivor did not reveal its pairwise seed)",
                            have: 0,
                            need: self.params.threshold,
                        })?,
                };
                // u added the mask if d > u, subtracted it if d < u: undo that.
                MaskPrg::new(&seed).apply(&mut sum, *d > u);
            }
        }
        Ok(Aggregate {
            sum,
            contributors: self.survivors.clone(),
            dropped: self.dropped.clone(),
            misbehaving: self.misbehaving.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_bound_the_threshold_by_the_share_holders() {
        assert!(Params::secagg(3, 2, 10).validate().is_ok());
        // Not more than half of the holders: two disjoint groups could both rebuild.
        assert!(Params::secagg(5, 2, 10).validate().is_err());
        // More than the holders: a client holds none of its own shares.
        assert!(Params::secagg(3, 3, 10).validate().is_err());
        // SecAgg+ needs an even neighbour count below clients - 1.
        let odd = Params {
            clients: 10,
            threshold: 2,
            neighbours: 3,
            len: 1,
        };
        assert!(odd.validate().is_err());
        assert!(Params::secagg(1, 1, 1).validate().is_err());
        assert!(Params::secagg(3, 2, 0).validate().is_err());
        assert_eq!(Params::secagg(3, 2, 1).min_clients(), 3);
    }

    #[test]
    fn the_default_threshold_is_the_smallest_that_the_policy_accepts() {
        for clients in 2..40 {
            let c = default_colluders(clients);
            for k in (2..clients).step_by(2).chain([clients - 1]) {
                let t = default_threshold(k, c);
                let p = Params {
                    clients,
                    threshold: t,
                    neighbours: k,
                    len: 1,
                };
                if 2 * t <= k + c {
                    // Only where no threshold can hold (t is capped at k).
                    assert_eq!(t, k, "{clients} clients, {k} neighbours");
                    continue;
                }
                assert!(p.colluders_tolerated() >= c, "{p:?}");
                let policy = ClientPolicy {
                    colluders: c,
                    min_threshold: 0,
                    min_neighbours: 0,
                    min_peers: 0,
                };
                assert!(policy.check(&p).is_ok(), "{p:?}");
                let lower = Params {
                    threshold: t - 1,
                    ..p.clone()
                };
                assert!(policy.check(&lower).is_err(), "{lower:?} should be refused");
            }
        }
        assert_eq!(default_colluders(2), 0);
        assert_eq!(default_colluders(3), 1);
        assert_eq!(default_colluders(10), 3);
    }

    #[test]
    fn neighbour_graphs_are_symmetric_and_seeded() {
        let p = Params {
            clients: 20,
            threshold: 4,
            neighbours: 6,
            len: 1,
        };
        let seed = [7u8; 32];
        for id in 0..20u32 {
            let mine = neighbours(&p, &seed, id);
            assert_eq!(mine.len(), 6, "{id}");
            assert!(!mine.contains(&id));
            for v in &mine {
                assert!(neighbours(&p, &seed, *v).contains(&id), "{id} ~ {v}");
            }
        }
        assert_ne!(neighbours(&p, &seed, 0), neighbours(&p, &[8u8; 32], 0));
        let full = Params::secagg(5, 3, 1);
        assert_eq!(neighbours(&full, &seed, 2), vec![0, 1, 3, 4]);
    }

    #[test]
    fn share_nonces_differ_per_direction() {
        assert_ne!(
            share_nonce(1, 2).as_ref(),
            share_nonce(2, 1).as_ref(),
            "a key shared by a pair must never reuse a nonce"
        );
    }
}

/// Attacks by a coordinator that plays some banks itself, with the real crypto. These
/// tests read the played banks' secrets (this module's private fields): the colluders
/// are the test's own.
#[cfg(test)]
mod attacks_support {
    use super::*;
    use ring::signature::KeyPair;

    pub(super) fn identities(n: usize) -> (Vec<Arc<Ed25519KeyPair>>, Arc<Roster>) {
        let rng = SystemRandom::new();
        let ids: Vec<Arc<Ed25519KeyPair>> = (0..n)
            .map(|_| {
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
                Arc::new(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap())
            })
            .collect();
        let roster = Roster::new(
            ids.iter()
                .map(|k| k.public_key().as_ref().to_vec())
                .collect(),
        )
        .unwrap();
        (ids, Arc::new(roster))
    }

    /// Every bank of a fresh roster under its default policy has advertised its keys
    /// for `round`, and the coordinator has taken them.
    pub(super) fn advertised(params: &Params, round: RoundId) -> (BTreeMap<u32, Client>, Server) {
        let (ids, roster) = identities(params.clients);
        let mut server = Server::new(params.clone(), round, roster.clone()).unwrap();
        let mut clients = BTreeMap::new();
        for i in 0..params.clients as u32 {
            let (c, a) = Client::new(
                i,
                ids[i as usize].clone(),
                roster.clone(),
                params.clone(),
                ClientPolicy::for_roster(params.clients),
                round,
            )
            .unwrap();
            server.receive_keys(a).unwrap();
            clients.insert(i, c);
        }
        (clients, server)
    }

    /// Stages 2 and 3 for every client (input `[id; len]`, 8 words): the unmask request.
    pub(super) fn mask_and_sign(
        clients: &mut BTreeMap<u32, Client>,
        server: &mut Server,
    ) -> UnmaskRequest {
        for (i, inbox) in server.close_shares().unwrap() {
            let m = clients
                .get_mut(&i)
                .unwrap()
                .masked_input(&inbox, &[i; 8])
                .unwrap();
            server.receive_masked(m).unwrap();
        }
        let list = server.close_masked().unwrap();
        for i in &list.survivors {
            let m = clients.get_mut(i).unwrap().consistency(&list).unwrap();
            server.receive_consistency(m).unwrap();
        }
        server.close_consistency().unwrap()
    }
}

#[cfg(test)]
mod attacks {
    use super::attacks_support::{advertised, identities, mask_and_sign};
    use super::*;

    /// A colluding bank follows no policy of its own.
    const ANYTHING: ClientPolicy = ClientPolicy {
        colluders: 0,
        min_threshold: 0,
        min_neighbours: 0,
        min_peers: 0,
    };

    /// The colluders' adverts in one view of the round, with their secrets.
    struct View {
        colluders: BTreeMap<u32, Client>,
        adverts: Vec<AdvertiseKeys>,
    }

    /// Fresh colluder adverts until the graph drawn from the view pleases `want`
    /// (about a hundred tries for one bank's exact neighbourhood at n = 10).
    fn grind(
        ids: &[Arc<Ed25519KeyPair>],
        roster: &Arc<Roster>,
        params: &Params,
        round: RoundId,
        honest: &[AdvertiseKeys],
        colluders: &[u32],
        want: impl Fn(&[u8; 32]) -> bool,
    ) -> View {
        for _ in 0..100_000 {
            let mut played = BTreeMap::new();
            let mut adverts = honest.to_vec();
            for c in colluders {
                let (client, advert) = Client::new(
                    *c,
                    ids[*c as usize].clone(),
                    roster.clone(),
                    params.clone(),
                    ANYTHING,
                    round,
                )
                .unwrap();
                played.insert(*c, client);
                adverts.push(advert);
            }
            let all: Vec<&AdvertiseKeys> = adverts.iter().collect();
            if want(&graph_seed(&round, &all)) {
                return View {
                    colluders: played,
                    adverts,
                };
            }
        }
        panic!("grinding found no view");
    }

    /// The attack of issue 24 item 1 on a SecAgg+ round: banks 7–9 collude with the
    /// coordinator; bank 0 is shown a view where 7, 8, 9 and one honest bank `h` are
    /// its neighbours, `h` a view where 0, 7, 8, 9 are its own; then `h` is asked to
    /// unmask under a list where 0 survived (seed share of 0) and bank 0 under a list
    /// where `h` dropped (mask-key share of `h`). Returns bank 0's input if the
    /// coordinator could rebuild it, or why it could not.
    fn split_view_attack(x0: &[u32]) -> Result<Vec<u32>, String> {
        let n = 10;
        let params = Params {
            clients: n,
            threshold: 4,
            neighbours: 4,
            len: x0.len(),
        };
        let (ids, roster) = identities(n);
        let round = RoundId {
            session: [9; 16],
            round: 1,
        };
        let colluders = [7u32, 8, 9];
        let policy = ClientPolicy::for_roster(n);
        assert!(
            policy.check(&params).is_ok(),
            "the default policy admits k = t = 4"
        );
        let mut honest = BTreeMap::new();
        let mut honest_adverts = Vec::new();
        for i in 0..7u32 {
            let (c, a) = Client::new(
                i,
                ids[i as usize].clone(),
                roster.clone(),
                params.clone(),
                policy,
                round,
            )
            .unwrap();
            honest.insert(i, c);
            honest_adverts.push(a);
        }
        let has_colluders = |s: &[u8; 32], id: u32| {
            let mine = neighbours(&params, s, id);
            colluders.iter().all(|c| mine.contains(c))
        };
        let v0 = grind(
            &ids,
            &roster,
            &params,
            round,
            &honest_adverts,
            &colluders,
            |s| has_colluders(s, 0),
        );
        let seed0 = graph_seed(&round, &v0.adverts.iter().collect::<Vec<_>>());
        let h = neighbours(&params, &seed0, 0)
            .into_iter()
            .find(|v| !colluders.contains(v))
            .unwrap();
        let vh = grind(
            &ids,
            &roster,
            &params,
            round,
            &honest_adverts,
            &colluders,
            |s| neighbours(&params, s, h) == vec![0, 7, 8, 9],
        );
        let mut v0 = v0;
        let mut vh = vh;

        // Stage 1: h sees its own view, every other honest bank bank 0's.
        let mut sent: Vec<EncryptedShare> = Vec::new();
        for (i, c) in honest.iter_mut() {
            let view = if *i == h { &vh.adverts } else { &v0.adverts };
            let m = c.share_keys(view).map_err(|e| e.to_string())?;
            sent.extend(m.shares);
        }
        let mut played_sent: Vec<(bool, EncryptedShare)> = Vec::new();
        for (view, is_h) in [(&mut v0, false), (&mut vh, true)] {
            let adverts = view.adverts.clone();
            for c in view.colluders.values_mut() {
                let m = c.share_keys(&adverts).unwrap();
                played_sent.extend(m.shares.into_iter().map(|s| (is_h, s)));
            }
        }
        let inbox = |to: u32, h_view: bool| -> Vec<EncryptedShare> {
            sent.iter()
                .filter(|s| s.to == to)
                .cloned()
                .chain(
                    played_sent
                        .iter()
                        .filter(|(v, s)| *v == h_view && s.to == to)
                        .map(|(_, s)| s.clone()),
                )
                .collect()
        };
        // The colluders open what they were sent (their `held` is the coordinator's).
        for (view, is_h) in [(&mut v0, false), (&mut vh, true)] {
            for (c, client) in view.colluders.iter_mut() {
                let _ = client.masked_input(&inbox(*c, is_h), &vec![0; x0.len()]);
            }
        }
        // Stage 2: honest banks mask; some have too few peers and stop.
        let mut masked = BTreeMap::new();
        for (i, c) in honest.iter_mut() {
            let input = if *i == 0 {
                x0.to_vec()
            } else {
                vec![*i; x0.len()]
            };
            if let Ok(m) = c.masked_input(&inbox(*i, *i == h), &input) {
                masked.insert(*i, m);
            }
        }
        let y0 = masked
            .get(&0)
            .ok_or("bank 0 stopped before masking")?
            .clone();
        if !masked.contains_key(&h) {
            return Err(format!("bank {h} stopped before masking"));
        }
        let others: Vec<u32> = masked
            .keys()
            .copied()
            .filter(|i| *i != 0 && *i != h)
            .collect();
        if others.len() < 2 {
            return Err("fewer than two other honest banks masked".into());
        }
        // Stage 3: two lists, each naming every bank that masked (so each is long
        // enough to sign): in A bank h survives, in B it dropped. The honest banks are
        // split between them; the colluders sign both.
        let mut list_a: Vec<u32> = masked.keys().copied().chain(colluders).collect();
        list_a.sort_unstable();
        let list_b: Vec<u32> = list_a.iter().copied().filter(|i| *i != h).collect();
        let half = others.len().div_ceil(2);
        let signers_a: Vec<u32> = [h].into_iter().chain(others[..half].to_vec()).collect();
        let signers_b: Vec<u32> = [0].into_iter().chain(others[half..].to_vec()).collect();
        let mut request = |list: &Vec<u32>, signers: &[u32], view_of: u32| {
            let sl = SurvivorList {
                round,
                survivors: list.clone(),
            };
            let mut sigs = Vec::new();
            for s in signers {
                let sig = honest
                    .get_mut(s)
                    .unwrap()
                    .consistency(&sl)
                    .map_err(|e| e.to_string())?;
                sigs.push((*s, sig.signature));
            }
            // The colluders sign whatever the honest signers signed.
            let view = if view_of == h { &vh } else { &v0 };
            for c in colluders {
                let digest = view.colluders[&c].advert_digest();
                sigs.push((
                    c,
                    ids[c as usize]
                        .sign(&consistency_transcript(&round, c, list, &digest))
                        .as_ref()
                        .to_vec(),
                ));
            }
            Ok::<_, String>(UnmaskRequest {
                round,
                survivors: list.clone(),
                dropped: (0..n as u32).filter(|i| !list.contains(i)).collect(),
                signatures: sigs,
            })
        };
        let req_a = request(&list_a, &signers_a, h)?;
        let req_b = request(&list_b, &signers_b, 0)?;
        // Stage 4: h reveals its share of 0's seed; 0 reveals its share of h's key.
        let from_h = honest
            .get_mut(&h)
            .unwrap()
            .unmask(&req_a)
            .map_err(|e| format!("bank {h} refused: {e}"))?;
        let from_0 = honest
            .get_mut(&0)
            .unwrap()
            .unmask(&req_b)
            .map_err(|e| format!("bank 0 refused: {e}"))?;
        let mut seed_shares: Vec<Share> = v0
            .colluders
            .values()
            .filter_map(|c| c.held.get(&0).map(|(b, _)| b.clone()))
            .collect();
        seed_shares.extend(
            from_h
                .seed_shares
                .iter()
                .filter(|(o, _)| *o == 0)
                .map(|(_, s)| s.clone()),
        );
        let mut key_shares: Vec<Share> = vh
            .colluders
            .values()
            .filter_map(|c| c.held.get(&h).map(|(_, k)| k.clone()))
            .collect();
        key_shares.extend(
            from_0
                .key_shares
                .iter()
                .filter(|(o, _)| *o == h)
                .map(|(_, s)| s.clone()),
        );
        let b0 = shamir::combine(&seed_shares, 4).map_err(|e| e.to_string())?;
        if commitment(&b0) != honest[&0].advert.seed_commitment {
            return Err("bank 0's seed did not rebuild".into());
        }
        let sk_h = StaticSecret::from(shamir::combine(&key_shares, 4).map_err(|e| e.to_string())?);
        let pk_0 = honest[&0].advert.mask_pk;
        let mut x = y0.masked.clone();
        MaskPrg::new(&b0).apply(&mut x, true);
        for v in &honest[&0].masked_with {
            let seed = if *v == h {
                pair_seed(&sk_h, &pk_0, &round, h, 0)
            } else {
                pair_seed(&v0.colluders[v].mask_sk, &pk_0, &round, *v, 0)
            };
            MaskPrg::new(&seed).apply(&mut x, true);
        }
        Ok(x)
    }

    #[test]
    fn colluders_grinding_views_and_splitting_lists_cannot_unmask_a_bank() {
        let x0: Vec<u32> = (0..64).map(|i| 1_000_003u32.wrapping_mul(i + 17)).collect();
        match split_view_attack(&x0) {
            Ok(x) => {
                assert_ne!(x, x0, "the coordinator rebuilt bank 0's input");
                panic!("the attack ran to the end without the input: {x:?}");
            }
            Err(why) => {
                // The honest banks refused to unmask: nothing of bank 0 was revealed.
                assert!(why.contains("refused"), "{why}");
                assert!(
                    why.contains("signatures of this survivor list and advert set"),
                    "{why}"
                );
            }
        }
    }

    /// The attack of the review of issue 24's fix (finding F1): with the default plan
    /// at n = 10 (t = 7, q = 8), banks 7–9 collude; the coordinator withholds the
    /// shares of banks 5 and 6 from banks 0, 1, 2 (so they would not mask with them),
    /// lists 3 and 4 as dropped and 0, 1, 2, 5, 6, 7, 8, 9 as survivors. Banks 5 and 6
    /// still hold 0–2's shares, so 0–2's seeds are rebuilt; 0–2 reveal their pairwise
    /// seeds with 3 and 4. Returns what the coordinator computes for x0 + x1 + x2: the
    /// sum of three honest banks alone, with three banks' share of bank-level noise.
    fn isolate_three(x: &[Vec<u32>]) -> Vec<u32> {
        let n = 10;
        let len = x[0].len();
        let params = Params::secagg(n, 7, len);
        let (ids, roster) = identities(n);
        let round = RoundId {
            session: [4; 16],
            round: 3,
        };
        let mut clients = BTreeMap::new();
        let mut adverts = Vec::new();
        for i in 0..n as u32 {
            let policy = if i >= 7 {
                ANYTHING
            } else {
                ClientPolicy::for_roster(n)
            };
            let (c, a) = Client::new(
                i,
                ids[i as usize].clone(),
                roster.clone(),
                params.clone(),
                policy,
                round,
            )
            .unwrap();
            clients.insert(i, c);
            adverts.push(a);
        }
        let (t_set, a_set, b_set) = ([0u32, 1, 2], [3u32, 4], [5u32, 6]);
        let mut sent = Vec::new();
        for c in clients.values_mut() {
            sent.extend(c.share_keys(&adverts).unwrap().shares);
        }
        let mut masked = BTreeMap::new();
        for (i, c) in clients.iter_mut() {
            let inbox: Vec<EncryptedShare> = sent
                .iter()
                .filter(|s| s.to == *i)
                .filter(|s| !(t_set.contains(i) && b_set.contains(&s.from)))
                .cloned()
                .collect();
            masked.insert(*i, c.masked_input(&inbox, &x[*i as usize]).unwrap());
        }
        let survivors: Vec<u32> = (0..n as u32).filter(|i| !a_set.contains(i)).collect();
        let list = SurvivorList {
            round,
            survivors: survivors.clone(),
        };
        let mut sigs = Vec::new();
        for i in &survivors {
            sigs.push((
                *i,
                clients
                    .get_mut(i)
                    .unwrap()
                    .consistency(&list)
                    .unwrap()
                    .signature,
            ));
        }
        let req = UnmaskRequest {
            round,
            survivors: survivors.clone(),
            dropped: a_set.to_vec(),
            signatures: sigs,
        };
        let mut responses = BTreeMap::new();
        for i in &survivors {
            responses.insert(*i, clients.get_mut(i).unwrap().unmask(&req).unwrap());
        }
        let mut sum = vec![0u32; len];
        for h in t_set {
            for (a, y) in sum.iter_mut().zip(&masked[&h].masked) {
                *a = a.wrapping_add(*y);
            }
            let shares: Vec<Share> = responses
                .values()
                .filter_map(|r| r.seed_shares.iter().find(|(o, _)| *o == h))
                .map(|(_, s)| s.clone())
                .collect();
            let b = shamir::combine(&shares[..7.min(shares.len())], 7).unwrap();
            MaskPrg::new(&b).apply(&mut sum, true);
            let pk = clients[&h].advert.mask_pk;
            for v in &clients[&h].masked_with {
                let seed = if t_set.contains(v) {
                    continue; // cancels inside the sum
                } else if *v >= 7 {
                    pair_seed(&clients[v].mask_sk, &pk, &round, *v, h)
                } else if let Some((_, s)) = responses[&h].pair_seeds.iter().find(|(p, _)| p == v) {
                    *s
                } else {
                    continue; // a mask the coordinator cannot remove
                };
                MaskPrg::new(&seed).apply(&mut sum, *v > h);
            }
        }
        sum
    }

    #[test]
    fn withholding_shares_cannot_isolate_a_few_honest_banks() {
        let len = 16;
        let x: Vec<Vec<u32>> = (0..10u32)
            .map(|i| (0..len as u32).map(|j| 1000 * i + j).collect())
            .collect();
        let target: Vec<u32> = (0..len)
            .map(|j| x[0][j].wrapping_add(x[1][j]).wrapping_add(x[2][j]))
            .collect();
        // Every bank masks with every neighbour in the advert set, share or not, so
        // the masks 0–2 share with 5 and 6 stay on: the result is noise, not the sum.
        assert_ne!(isolate_three(&x), target);
    }

    /// One consistent round of 10 banks with `k = t = 4` up to the unmask request.
    fn signed_round() -> (BTreeMap<u32, Client>, UnmaskRequest) {
        let params = Params {
            clients: 10,
            threshold: 4,
            neighbours: 4,
            len: 8,
        };
        let round = RoundId {
            session: [3; 16],
            round: 2,
        };
        let (mut clients, mut server) = advertised(&params, round);
        for (i, ks) in server.close_keys().unwrap() {
            let m = clients.get_mut(&i).unwrap().share_keys(&ks).unwrap();
            server.receive_shares(m).unwrap();
        }
        let req = mask_and_sign(&mut clients, &mut server);
        (clients, req)
    }

    #[test]
    fn an_unmask_request_needs_a_roster_majority_of_signatures_whatever_k() {
        let params = Params {
            clients: 10,
            threshold: 4,
            neighbours: 4,
            len: 1,
        };
        // More than (n + c)/2 with c = 3: 7, where t + 1 is only 5.
        assert_eq!(params.unmask_quorum(), 7);
        assert_eq!(Params::secagg(10, 7, 1).unmask_quorum(), 8);
        assert_eq!(Params::secagg(3, 2, 1).unmask_quorum(), 3);
        let (mut clients, req) = signed_round();
        assert_eq!(req.signatures.len(), 10);
        let six = UnmaskRequest {
            signatures: req.signatures[..6].to_vec(),
            ..req.clone()
        };
        let e = clients.get_mut(&9).unwrap().unmask(&six).unwrap_err();
        assert!(
            e.to_string()
                .contains("6 valid signatures of this survivor list and advert set, 7 needed"),
            "{e}"
        );
        let seven = UnmaskRequest {
            signatures: req.signatures[..7].to_vec(),
            ..req
        };
        assert!(clients.get_mut(&8).unwrap().unmask(&seven).is_ok());
    }

    #[test]
    fn signatures_over_another_advert_set_do_not_count() {
        let (mut clients, mut req) = signed_round();
        // Bank 0 was shown other adverts: its digest differs from everyone else's.
        clients.get_mut(&0).unwrap().adverts_seen = [0xAB; 32];
        let e = clients.get_mut(&0).unwrap().unmask(&req).unwrap_err();
        assert!(e.to_string().contains("0 valid signatures"), "{e}");
        // And a signature is bound to its list: the same signatures on another list
        // are no signatures at all.
        req.survivors.pop();
        req.dropped.push(9);
        let e = clients.get_mut(&1).unwrap().unmask(&req).unwrap_err();
        assert!(
            e.to_string()
                .contains("differs from the one this client signed"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod dealing {
    use super::attacks_support::{advertised, mask_and_sign};
    use super::*;

    #[test]
    fn a_bank_dealing_shares_of_another_seed_is_named() {
        // Bank 2 commits to one self-mask seed at stage 0 and deals shares of another
        // (each share matching the commitment it signed for its holder). Its mask
        // cannot be removed, so the round stops, and bank 2 is named: the shares were
        // its own, so no holder can be blamed.
        let params = Params::secagg(5, 3, 8);
        let round = RoundId {
            session: [5; 16],
            round: 1,
        };
        let (mut clients, mut server) = advertised(&params, round);
        for (i, ks) in server.close_keys().unwrap() {
            let c = clients.get_mut(&i).unwrap();
            let real = c.seed;
            if i == 2 {
                c.seed = [0x42; 32];
            }
            let m = c.share_keys(&ks).unwrap();
            c.seed = real;
            server.receive_shares(m).unwrap();
        }
        let req = mask_and_sign(&mut clients, &mut server);
        for i in &req.survivors.clone() {
            let m = clients.get_mut(i).unwrap().unmask(&req).unwrap();
            server.receive_unmask(m).unwrap();
        }
        assert!(matches!(
            server.finish(),
            Err(ProtocolError::Aborted { .. })
        ));
        assert_eq!(server.misbehaving().len(), 1);
        assert_eq!(server.misbehaving()[0].client, 2);
        assert!(server.misbehaving()[0].reason.contains("committed seed"));
    }
}

#[cfg(test)]
mod noise {
    use super::*;

    #[test]
    fn bank_level_noise_covers_every_sum_a_bank_lets_through() {
        // For every plan a bank's default policy accepts, the sum with the fewest
        // honest banks it still unmasks (the quorum, `c` of them colluders) carries
        // at least the accounted variance μ of honest noise.
        for n in 3..=40 {
            let policy = ClientPolicy::for_roster(n);
            let c = policy.colluders;
            for k in (2..n - 1).step_by(2).chain([n - 1]) {
                for t in 1..=k {
                    let p = Params {
                        clients: n,
                        threshold: t,
                        neighbours: k,
                        len: 1,
                    };
                    if p.validate().is_err() || policy.check(&p).is_err() {
                        continue;
                    }
                    let mu = 1.0;
                    let share = mu / p.honest_survivors(c) as f64;
                    // The smallest honest set a sum can isolate (see honest_survivors).
                    let by_seed = p.threshold + 1 - c;
                    let worst_honest = if k == n - 1 {
                        (p.unmask_quorum() - c).max(by_seed)
                    } else {
                        by_seed
                    };
                    assert!(
                        worst_honest as f64 * share >= mu - 1e-12,
                        "{p:?}: {worst_honest} honest banks carry {}",
                        worst_honest as f64 * share
                    );
                }
            }
        }
        // n = 10, default plan: dividing by t left (t + 1 − c)/t · μ = 0.71 μ.
        let p = Params::secagg(10, 7, 1);
        let c = ClientPolicy::for_roster(10).colluders;
        assert!(((p.threshold + 1 - c) as f64 / p.threshold as f64) < 0.72);
        assert_eq!(p.honest_survivors(c), 5);
        // SecAgg+ with k = t = 4: two neighbouring honest banks walled in by the three
        // colluders and dropped banks can come out as a sum of their own.
        let plus = Params {
            clients: 10,
            threshold: 4,
            neighbours: 4,
            len: 1,
        };
        assert_eq!(plus.honest_survivors(c), 2);
    }
}
