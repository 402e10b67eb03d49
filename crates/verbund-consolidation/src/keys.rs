//! Keys: 64-bit hashes of normalized strings, tagged by what they are.
//!
//! Features hold keys instead of strings (compact at a million records, no interner to grow);
//! two different strings collide with probability about n²/2⁶⁵ (10⁻⁷ at two million distinct
//! strings), and a collision only makes a candidate pair, which the score then judges.

use std::hash::{BuildHasherDefault, Hasher};

/// What a key is a key of; part of the hash so that a VAT ID never meets a phone number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum KeyKind {
    Vat = 1,
    Domain,
    Phone,
    NameToken,
    CompactName,
    NamePrefix,
    NameEnds,
    City,
    Email,
    LastFirstInitial,
    EmployerFirst,
    EmployerLast,
    PersonLast,
    PersonFirst,
    Employer,
    Record,
}

/// FNV-1a over the kind and the bytes, finished with a SplitMix64 mix so that the low bits
/// (which the hash tables use) are well spread.
pub fn key(kind: KeyKind, s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in std::iter::once(kind as u8).chain(s.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A hasher for keys that are already hashes: passes them through.
#[derive(Default)]
pub struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for non-u64 keys; fold them in so the hasher stays correct.
        for &b in bytes {
            self.0 = mix(self.0 ^ u64::from(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// `HashMap` builder for [`key`]s.
pub type KeyHash = BuildHasherDefault<PassThrough>;
