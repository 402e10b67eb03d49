//! Scoring helpers shared by the account and contact matchers: per-attribute evidence in
//! log-odds-like points, and the similarity of two multi-token names.

use strsim::jaro_winkler;

/// How often a block key occurs among the records, in classes. Weights depend on the class,
/// not on the exact count, so that a new record changes the weights of others only when a
/// class boundary is crossed (the engine then rescores that block's members; see
/// `blocking.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rarity {
    /// At most [`VERY_RARE`] records.
    VeryRare,
    /// At most [`RARE`] records.
    Rare,
    /// At most the block cap.
    Usual,
    /// More than the block cap: no block, and little weight.
    Common,
}

/// Upper bound of [`Rarity::VeryRare`].
pub const VERY_RARE: usize = 4;
/// Upper bound of [`Rarity::Rare`].
pub const RARE: usize = 32;

impl Rarity {
    pub fn of(count: usize, cap: usize) -> Rarity {
        if count <= VERY_RARE {
            Rarity::VeryRare
        } else if count <= RARE {
            Rarity::Rare
        } else if count <= cap {
            Rarity::Usual
        } else {
            Rarity::Common
        }
    }

    /// Weight of a name token of this rarity.
    pub fn token_weight(self) -> f32 {
        match self {
            Rarity::VeryRare => 3.0,
            Rarity::Rare => 2.0,
            Rarity::Usual => 1.0,
            Rarity::Common => 0.3,
        }
    }
}

/// One attribute's contribution to a pair's score.
#[derive(Clone, Debug, PartialEq)]
pub struct Evidence {
    /// The attribute: `vat_id`, `name`, `domain`, ...
    pub attribute: &'static str,
    /// What was found, for people: "equal", "similar (0.93)", "different".
    pub finding: String,
    /// Points added to the score (negative: evidence against).
    pub points: f32,
}

/// Collects evidence when explaining; costs nothing on the hot path (`None`).
pub struct Tally<'a> {
    pub score: f32,
    pub explain: Option<&'a mut Vec<Evidence>>,
}

impl<'a> Tally<'a> {
    pub fn new(explain: Option<&'a mut Vec<Evidence>>) -> Self {
        Tally { score: 0.0, explain }
    }

    /// Adds points; the finding is only formatted when explaining.
    pub fn add(&mut self, attribute: &'static str, points: f32, finding: impl FnOnce() -> String) {
        self.score += points;
        if let Some(e) = self.explain.as_deref_mut() {
            e.push(Evidence { attribute, finding: finding(), points });
        }
    }
}

/// A name token: its key and where it sits in the name string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    pub key: u64,
    pub start: u16,
    pub len: u16,
}

impl Token {
    pub fn text<'s>(&self, name: &'s str) -> &'s str {
        let start = usize::from(self.start);
        name.get(start..start + usize::from(self.len)).unwrap_or("")
    }
}

/// Tokens of a folded name (tokens separated by single spaces).
pub fn tokens_of(name: &str, kind: crate::keys::KeyKind) -> Box<[Token]> {
    let mut out = Vec::new();
    let mut start = 0usize;
    for t in name.split(' ') {
        if !t.is_empty() && start <= usize::from(u16::MAX) && t.len() <= usize::from(u16::MAX) {
            out.push(Token { key: crate::keys::key(kind, t), start: start as u16, len: t.len() as u16 });
        }
        start += t.len() + 1;
    }
    out.into_boxed_slice()
}

/// Two tokens agree when equal, or, from five characters on, when Jaro-Winkler ≥ 0.9 (a typo).
fn tokens_agree(a: &str, b: &str, ka: u64, kb: u64) -> bool {
    ka == kb || (a.len() >= 5 && b.len() >= 5 && jaro_winkler(a, b) >= 0.9)
}

/// Weighted soft Dice coefficient of two token lists: the share of token weight, on both
/// sides, that finds an agreeing token on the other side. Symmetric by construction.
/// `weight(key)` gives a token's weight (by its rarity).
pub fn soft_dice(
    name_a: &str,
    a: &[Token],
    name_b: &str,
    b: &[Token],
    weight: &dyn Fn(u64) -> f32,
) -> f32 {
    let side = |x_name: &str, x: &[Token], y_name: &str, y: &[Token]| -> (f32, f32) {
        let mut matched = 0.0;
        let mut total = 0.0;
        for t in x {
            let w = weight(t.key);
            total += w;
            let tx = t.text(x_name);
            if y.iter().any(|u| tokens_agree(tx, u.text(y_name), t.key, u.key)) {
                matched += w;
            }
        }
        (matched, total)
    };
    let (ma, ta) = side(name_a, a, name_b, b);
    let (mb, tb) = side(name_b, b, name_a, a);
    if ta + tb <= 0.0 { 0.0 } else { (ma + mb) / (ta + tb) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyKind;

    fn dice(a: &str, b: &str) -> f32 {
        let ta = tokens_of(a, KeyKind::NameToken);
        let tb = tokens_of(b, KeyKind::NameToken);
        soft_dice(a, &ta, b, &tb, &|_| 1.0)
    }

    #[test]
    fn dice_is_symmetric_and_tolerates_typos() {
        assert_eq!(dice("nordwind logistik", "nordwind logistik"), 1.0);
        assert_eq!(dice("nordwind logistik", "logistik nordwind"), 1.0);
        assert_eq!(dice("nordwind logistik", "nordwnd logistik"), 1.0);
        assert_eq!(dice("nordwind logistik", "nordwind software"), 0.5);
        assert_eq!(dice("nordwind software", "nordwind logistik"), 0.5);
        assert_eq!(dice("", ""), 0.0);
    }
}
