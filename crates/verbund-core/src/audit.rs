//! The audit log as a hash chain: every entry carries the hash of the one before, so changing,
//! deleting or reordering any entry breaks the chain. Entries name principals, organizations,
//! records and field *names*; values never enter the log.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened, before it has its place in the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditDraft {
    pub at_ms: i64,
    /// The principal URI, e.g. `verbund://globex/user/bob`.
    pub principal: String,
    pub org: String,
    /// `read`, `list`, `search`, `watch`, `create`, `update`, `delete`, `share`, `revoke`,
    /// `rule-add`, `rule-remove`, `administer`.
    pub action: String,
    pub kind: Option<String>,
    /// A record id; filled in by the store for creates (`None` until the id exists).
    pub record_id: Option<String>,
    /// Field names (never values).
    pub fields: Vec<String>,
    /// `allow`, `deny` or `failed`.
    pub decision: String,
    /// Why, without personal data: the share, rule or policy behind the decision.
    pub reason: String,
}

/// An entry in the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: i64,
    #[serde(flatten)]
    pub draft: AuditDraft,
    pub prev_hash: String,
    pub hash: String,
}

/// The hash of an entry: SHA-256 over a fixed, unambiguous encoding of its position, its
/// content and the previous hash (JSON of a struct with a fixed field order).
pub fn entry_hash(seq: i64, draft: &AuditDraft, prev_hash: &str) -> String {
    #[derive(Serialize)]
    struct Canonical<'a> {
        seq: i64,
        prev_hash: &'a str,
        draft: &'a AuditDraft,
    }
    let bytes = serde_json::to_vec(&Canonical {
        seq,
        prev_hash,
        draft,
    })
    .unwrap_or_default();
    hex_lower(&Sha256::digest(&bytes))
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Chains drafts after the entry (`last_seq`, `last_hash`).
pub fn chain(last_seq: i64, last_hash: &str, drafts: Vec<AuditDraft>) -> Vec<AuditEntry> {
    let mut prev = last_hash.to_string();
    let mut seq = last_seq;
    drafts
        .into_iter()
        .map(|draft| {
            seq += 1;
            let hash = entry_hash(seq, &draft, &prev);
            AuditEntry {
                seq,
                draft,
                prev_hash: std::mem::replace(&mut prev, hash.clone()),
                hash,
            }
        })
        .collect()
}

/// The first place where the chain does not hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    #[error("entry {seq}: expected sequence number {expected} (an entry was deleted or reordered)")]
    Gap { seq: i64, expected: i64 },
    #[error(
        "entry {seq}: its prev_hash is not the hash of entry {prev} (an entry was changed, deleted or reordered)"
    )]
    Link { seq: i64, prev: i64 },
    #[error("entry {seq}: its content does not match its hash (the entry was changed)")]
    Content { seq: i64 },
    #[error(
        "the log ends at entry {found} but the recorded head is entry {head} (entries at the end were deleted or changed)"
    )]
    Head { found: i64, head: i64 },
}

/// Walks the chain incrementally (entries in sequence order, possibly in pages).
#[derive(Clone, Debug)]
pub struct ChainVerifier {
    expected_seq: i64,
    prev_hash: String,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier {
            expected_seq: 1,
            prev_hash: GENESIS_HASH.to_string(),
        }
    }
}

impl ChainVerifier {
    pub fn check(&mut self, e: &AuditEntry) -> Result<(), ChainBreak> {
        if e.seq != self.expected_seq {
            return Err(ChainBreak::Gap {
                seq: e.seq,
                expected: self.expected_seq,
            });
        }
        if e.prev_hash != self.prev_hash {
            return Err(ChainBreak::Link {
                seq: e.seq,
                prev: e.seq - 1,
            });
        }
        if entry_hash(e.seq, &e.draft, &e.prev_hash) != e.hash {
            return Err(ChainBreak::Content { seq: e.seq });
        }
        self.expected_seq += 1;
        self.prev_hash = e.hash.clone();
        Ok(())
    }

    /// Number of entries checked so far.
    pub fn checked(&self) -> i64 {
        self.expected_seq - 1
    }

    /// Compares the end of the walk with the recorded head (sequence number and hash).
    pub fn finish(&self, head_seq: i64, head_hash: &str) -> Result<(), ChainBreak> {
        if self.checked() != head_seq || self.prev_hash != head_hash {
            return Err(ChainBreak::Head {
                found: self.checked(),
                head: head_seq,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn draft(i: usize) -> AuditDraft {
        AuditDraft {
            at_ms: i as i64,
            principal: "verbund://globex/user/bob".into(),
            org: "globex".into(),
            action: "read".into(),
            kind: Some("account".into()),
            record_id: Some(format!("r{i}")),
            fields: vec!["name".into()],
            decision: "allow".into(),
            reason: "share s1".into(),
        }
    }

    fn verify(entries: &[AuditEntry], head: (i64, &str)) -> Result<(), ChainBreak> {
        let mut v = ChainVerifier::default();
        for e in entries {
            v.check(e)?;
        }
        v.finish(head.0, head.1)
    }

    proptest! {
        /// Any single modification, deletion or swap of entries is detected.
        #[test]
        fn tampering_is_detected(n in 2usize..12, victim in 0usize..12, how in 0u8..5) {
            let entries = chain(0, GENESIS_HASH, (0..n).map(draft).collect());
            let head = (entries[n - 1].seq, entries[n - 1].hash.clone());
            prop_assert!(verify(&entries, (head.0, &head.1)).is_ok());
            let victim = victim % n;
            let mut t = entries.clone();
            match how {
                0 => t[victim].draft.decision = "deny".into(),
                1 => t[victim].draft.fields.push("email".into()),
                2 => { t.remove(victim); }
                3 => { let j = (victim + 1) % n; t.swap(victim, j); }
                _ => t[victim].draft.at_ms += 1,
            }
            prop_assert!(verify(&t, (head.0, &head.1)).is_err());
        }
    }

    #[test]
    fn chains_continue_across_batches() {
        let first = chain(0, GENESIS_HASH, vec![draft(0), draft(1)]);
        let second = chain(2, &first[1].hash, vec![draft(2)]);
        let all: Vec<_> = first.into_iter().chain(second).collect();
        let last = all.last().unwrap();
        assert!(verify(&all, (last.seq, &last.hash.clone())).is_ok());
    }
}
