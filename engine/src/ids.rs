//! 128-bit identifiers for nodes, allocations, evaluations and deployments,
//! and the string keys of jobs.
//!
//! Ids are random UUID-shaped values. They are generated from a caller-owned
//! [`IdGen`] so that a seeded run (the scheduler, the simulation harness)
//! produces the same ids every time.

use crate::model::rkyv_with::ArcStr;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::str::FromStr;
use std::sync::Arc;

/// Error for an id string that is not a 36-character hyphenated UUID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid id {0:?}: expected a UUID like 0a1b2c3d-0000-4000-8000-000000000000")]
pub struct IdParseError(pub String);

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        uuid_id!($(#[$doc])* $name, text_order = identity_order);
    };
    ($(#[$doc:meta])* $name:ident, text_order = $order:path) => {
        $(#[$doc])*
        // packed(8): a u128 is 16-byte aligned, which pushes every struct,
        // vector and map node holding ids onto the allocator's slower
        // over-aligned path; 8 is all the hardware needs for two words.
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(C, packed(8))]
        pub struct $name(pub u128);

        impl $name {
            /// The all-zero id, used as "none" where an id field is optional on the wire.
            pub const NIL: $name = $name(0);

            pub fn is_nil(self) -> bool {
                self.0 == 0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_uuid(f, $order(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Short form keeps test output and logs readable.
                write!(f, "{}", &format!("{self}")[..8])
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                // Every text order is its own inverse (a swap).
                parse_uuid(s).map(|v| $name($order(v)))
            }
        }
    };
}

uuid_id!(
    /// Identifies a client node.
    NodeId
);
uuid_id!(
    /// Identifies an allocation. Its text swaps the id's first and last
    /// 32 bits (see [`alloc_text_order`]).
    AllocId,
    text_order = alloc_text_order
);
uuid_id!(
    /// Identifies an evaluation.
    EvalId
);
uuid_id!(
    /// Identifies a deployment.
    DeploymentId
);

/// The text of most ids is the value's hex, in order.
fn identity_order(v: u128) -> u128 {
    v
}

/// An allocation id's high word is its job's tag (see [`IdGen::alloc_for`]),
/// so in plain hex every allocation of a job would share its first 8
/// characters, the short id `job status` and `alloc status` show. Its text
/// swaps the top 32 bits (tag) with the bottom 32 (random): the short id is
/// random, while the value, and so the state store's lookup by tag, stays
/// as it is. The swap leaves the UUID version and variant nibbles in place
/// and is its own inverse, so parsing applies it again.
fn alloc_text_order(v: u128) -> u128 {
    const LOW_32: u128 = 0xFFFF_FFFF;
    let top = v >> 96;
    let bottom = v & LOW_32;
    let middle = v & !(LOW_32 << 96) & !LOW_32;
    (bottom << 96) | middle | top
}

fn write_uuid(f: &mut fmt::Formatter<'_>, v: u128) -> fmt::Result {
    let hex = format!("{v:032x}");
    write!(f, "{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

fn parse_uuid(s: &str) -> Result<u128, IdParseError> {
    let bytes = s.as_bytes();
    let hyphens_ok = bytes.len() == 36 && [8, 13, 18, 23].iter().all(|&i| bytes[i] == b'-');
    if !hyphens_ok {
        return Err(IdParseError(s.to_string()));
    }
    let hex: String = s.chars().filter(|&c| c != '-').collect();
    u128::from_str_radix(&hex, 16).map_err(|_| IdParseError(s.to_string()))
}

/// Deterministic id source. Every id the engine creates comes from one of these,
/// seeded by the caller, so a replay with the same seed yields the same ids.
#[derive(Debug, Clone)]
pub struct IdGen {
    rng: fastrand::Rng,
}

impl IdGen {
    pub fn with_seed(seed: u64) -> IdGen {
        IdGen { rng: fastrand::Rng::with_seed(seed) }
    }

    /// Seeded from the operating system; for production callers only.
    pub fn from_entropy() -> IdGen {
        IdGen { rng: fastrand::Rng::new() }
    }

    fn next_u128(&mut self) -> u128 {
        // Shape it as a version-4 UUID so external tools accept it.
        let raw = self.rng.u128(..);
        let v4 = (raw & !(0xF << 76)) | (0x4 << 76);
        let v4 = (v4 & !(0x3 << 62)) | (0x2 << 62);
        if v4 == 0 { 1 } else { v4 }
    }

    pub fn node(&mut self) -> NodeId {
        NodeId(self.next_u128())
    }
    /// An allocation id for a job: its high word carries the job's tag, so
    /// the state store finds the allocation inside its job's table.
    pub fn alloc_for(&mut self, job: &JobKey) -> AllocId {
        self.alloc_tagged(job.tag())
    }

    /// [`IdGen::alloc_for`] with the job's tag computed once by the caller.
    pub fn alloc_tagged(&mut self, job_tag: u64) -> AllocId {
        let random = self.next_u128();
        let tagged = (u128::from(job_tag) << 64) | (random & u128::from(u64::MAX));
        // Keep the version nibble of a v4 UUID in place.
        AllocId((tagged & !(0xF << 76)) | (0x4 << 76))
    }
    pub fn eval(&mut self) -> EvalId {
        EvalId(self.next_u128())
    }
    pub fn deployment(&mut self) -> DeploymentId {
        DeploymentId(self.next_u128())
    }
}

/// A job is keyed by namespace and id, both user-chosen strings.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct JobKey {
    #[rkyv(with = ArcStr)]
    pub namespace: Arc<str>,
    #[rkyv(with = ArcStr)]
    pub id: Arc<str>,
}

impl JobKey {
    pub fn new(namespace: &str, id: &str) -> JobKey {
        JobKey { namespace: namespace.into(), id: id.into() }
    }
}

/// The bits of the high word of an allocation id that carry the job tag
/// (all but the UUID version nibble).
const JOB_TAG_MASK: u64 = !(0xF << 12);

impl JobKey {
    /// A 64-bit hash of the key (FNV-1a), masked to the bits an allocation
    /// id can carry. Equal keys, equal tags, on every server and run.
    pub fn tag(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.namespace.bytes().chain(std::iter::once(0)).chain(self.id.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        h & JOB_TAG_MASK
    }
}

impl AllocId {
    /// The job tag this id carries (see [`IdGen::alloc_for`]).
    pub fn job_tag(self) -> u64 {
        let whole = self.0;
        ((whole >> 64) as u64) & JOB_TAG_MASK
    }
}

impl fmt::Debug for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.id)
    }
}

impl fmt::Display for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.id)
    }
}

/// Hasher for tables keyed by random 128-bit ids: the id is already uniformly
/// random, so folding it is a perfect hash and far cheaper than SipHash. It is
/// also deterministic, which keeps table iteration order stable across runs.
#[derive(Default, Debug, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Fallback for non-id keys: FNV-1a, deterministic.
        let mut h = self.0 ^ 0xcbf2_9ce4_8422_2325;
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        self.0 = h;
    }
    fn write_u128(&mut self, v: u128) {
        self.0 ^= (v as u64) ^ ((v >> 64) as u64);
    }
    fn write_u64(&mut self, v: u64) {
        // Keys hashed this way (computed node classes) are hashes already.
        self.0 ^= v;
    }
    fn write_u16(&mut self, v: u16) {
        self.0 = (self.0 ^ u64::from(v)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Deterministic hasher builder for every engine table.
pub type IdBuildHasher = BuildHasherDefault<IdHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_round_trip() {
        let mut ids = IdGen::with_seed(7);
        let key = JobKey::new("default", "web");
        let id = ids.alloc_for(&key);
        assert_eq!(id.job_tag(), key.tag());
        let text = id.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(text.as_bytes()[14], b'4', "version nibble");
        assert_eq!(text.parse::<AllocId>().unwrap(), id);
    }

    #[test]
    fn alloc_short_ids_differ_within_a_job() {
        let mut ids = IdGen::with_seed(3);
        let key = JobKey::new("default", "web");
        let texts: Vec<String> = (0..16).map(|_| ids.alloc_for(&key).to_string()).collect();
        let shorts: std::collections::BTreeSet<&str> = texts.iter().map(|t| &t[..8]).collect();
        assert_eq!(shorts.len(), texts.len(), "short ids collide: {texts:?}");
        for text in &texts {
            let id: AllocId = text.parse().unwrap();
            assert_eq!(id.job_tag(), key.tag());
            assert_eq!(&id.to_string(), text);
            assert_eq!(text.as_bytes()[14], b'4', "version nibble");
        }
    }

    #[test]
    fn bad_uuid_is_refused() {
        assert!("not-a-uuid".parse::<NodeId>().is_err());
        assert!("zzzzzzzz-0000-4000-8000-000000000000".parse::<NodeId>().is_err());
        assert!("0000000000000-4000-8000-0000000000000".parse::<NodeId>().is_err());
    }

    #[test]
    fn same_seed_same_ids() {
        let a: Vec<_> = (0..4)
            .map({
                let mut g = IdGen::with_seed(1);
                move |_| g.eval()
            })
            .collect();
        let b: Vec<_> = (0..4)
            .map({
                let mut g = IdGen::with_seed(1);
                move |_| g.eval()
            })
            .collect();
        assert_eq!(a, b);
    }
}
