//! Resume tokens for another organization's Watch: our change sequence number, sealed.
//!
//! Another organization's user watching our records must not read off the events how many
//! changes we make in between (of records and fields it cannot see). Its events carry a
//! token instead of the sequence number: a keyed permutation (a Feistel network over 62 bits,
//! rounds of SHA-256 under the node's secret) of it. Only this node can open a token; two
//! tokens say nothing about how far apart their changes are, nor which came first.

use sha2::{Digest, Sha256};

/// The sequence numbers a token can carry; a token that opens to a higher one is not ours.
pub const MAX_SEQ: i64 = 1 << 48;

const HALF_BITS: u32 = 31;
const HALF_MASK: u64 = (1 << HALF_BITS) - 1;
const ROUNDS: u8 = 8;

/// The node's key for tokens.
#[derive(Clone)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    /// The key derived from the node's stored secret.
    pub fn from_secret(secret: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"verbund watch token v1");
        h.update(secret.as_bytes());
        TokenKey(h.finalize().into())
    }

    fn round(&self, round: u8, half: u64) -> u64 {
        let mut h = Sha256::new();
        h.update(self.0);
        h.update([round]);
        h.update(half.to_be_bytes());
        let d = h.finalize();
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        u64::from_be_bytes(b) & HALF_MASK
    }

    /// The token of sequence number `seq` (0 <= seq < MAX_SEQ): always positive.
    pub fn seal(&self, seq: i64) -> i64 {
        let v = seq.clamp(0, MAX_SEQ - 1) as u64;
        let (mut l, mut r) = (v >> HALF_BITS, v & HALF_MASK);
        for i in 0..ROUNDS {
            (l, r) = (r, l ^ self.round(i, r));
        }
        ((l << HALF_BITS) | r) as i64 + 1
    }

    /// The sequence number sealed in `token`; None: not a token of this key.
    pub fn open(&self, token: i64) -> Option<i64> {
        let v = u64::try_from(token.checked_sub(1)?).ok()?;
        if v >> (2 * HALF_BITS) != 0 {
            return None;
        }
        let (mut l, mut r) = (v >> HALF_BITS, v & HALF_MASK);
        for i in (0..ROUNDS).rev() {
            (l, r) = (r ^ self.round(i, l), l);
        }
        let seq = ((l << HALF_BITS) | r) as i64;
        (seq < MAX_SEQ).then_some(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn neighbouring_changes_get_unrelated_tokens() {
        let k = TokenKey::from_secret("s");
        let (a, b) = (k.seal(41), k.seal(42));
        assert!(a > 0 && b > 0);
        assert!((a - b).abs() > 1_000, "{a} {b}");
        assert_ne!(TokenKey::from_secret("t").seal(42), b);
        assert_eq!(k.open(0), None);
        assert_eq!(k.open(-5), None);
    }

    proptest! {
        /// Every sequence number comes back out of its token, only with the same key.
        #[test]
        fn a_token_opens_to_its_sequence_number(seq in 0..MAX_SEQ, other in "[a-z]{1,8}") {
            let k = TokenKey::from_secret("node secret");
            let t = k.seal(seq);
            prop_assert!(t > 0);
            prop_assert_eq!(k.open(t), Some(seq));
            let stranger = TokenKey::from_secret(&other);
            prop_assert_ne!(stranger.open(t), Some(seq));
        }
    }
}
