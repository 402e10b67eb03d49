//! Scoring helpers shared by the account and contact matchers: per-attribute evidence in
//! log-odds-like points, and the similarity of two multi-token names.

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
pub const VERY_RARE: usize = 8;
/// Upper bound of [`Rarity::Rare`].
pub const RARE: usize = 40;

impl Rarity {
    pub fn of(count: usize, cap: usize) -> Rarity {
        // The cap first: whether a block is live must be part of its class.
        if count > cap {
            Rarity::Common
        } else if count <= VERY_RARE {
            Rarity::VeryRare
        } else if count <= RARE {
            Rarity::Rare
        } else {
            Rarity::Usual
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
        Tally {
            score: 0.0,
            explain,
        }
    }

    /// Adds points; the finding is only formatted when explaining.
    pub fn add(&mut self, attribute: &'static str, points: f32, finding: impl FnOnce() -> String) {
        self.score += points;
        if let Some(e) = self.explain.as_deref_mut() {
            e.push(Evidence {
                attribute,
                finding: finding(),
                points,
            });
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
            out.push(Token {
                key: crate::keys::key(kind, t),
                start: start as u16,
                len: t.len() as u16,
            });
        }
        start += t.len() + 1;
    }
    out.into_boxed_slice()
}

/// Two tokens agree when equal, or when one edit (substitution, deletion, insertion,
/// transposition) apart from four characters on, two edits from nine on: typos, not other
/// words.
pub fn tokens_agree(a: &str, b: &str, ka: u64, kb: u64) -> bool {
    if ka == kb {
        return true;
    }
    let shorter = a.len().min(b.len());
    if shorter < 4 || a.len().abs_diff(b.len()) > 2 {
        return false;
    }
    let allowed = if shorter >= 9 { 2 } else { 1 };
    strsim::osa_distance(a, b) <= allowed
}

/// How two multi-token names relate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NameComparison {
    /// Weighted soft Dice: the share of token weight, on both sides, that finds an agreeing
    /// token on the other side. Symmetric by construction.
    pub dice: f32,
    /// Every token of the first name agrees with one of the second.
    pub a_covered: bool,
    /// Every token of the second name agrees with one of the first.
    pub b_covered: bool,
}

/// Compares two token lists; `weight(key)` gives a token's weight (by its rarity).
pub fn compare_names(
    name_a: &str,
    a: &[Token],
    name_b: &str,
    b: &[Token],
    weight: &dyn Fn(u64) -> f32,
) -> NameComparison {
    let side = |x_name: &str, x: &[Token], y_name: &str, y: &[Token]| -> (f32, f32, bool) {
        let mut matched = 0.0;
        let mut total = 0.0;
        let mut all = true;
        for t in x {
            let w = weight(t.key);
            total += w;
            let tx = t.text(x_name);
            if y.iter()
                .any(|u| tokens_agree(tx, u.text(y_name), t.key, u.key))
            {
                matched += w;
            } else {
                all = false;
            }
        }
        (matched, total, all)
    };
    let (ma, ta, a_covered) = side(name_a, a, name_b, b);
    let (mb, tb, b_covered) = side(name_b, b, name_a, a);
    let dice = if ta + tb <= 0.0 {
        0.0
    } else {
        (ma + mb) / (ta + tb)
    };
    NameComparison {
        dice,
        a_covered: a_covered && !a.is_empty(),
        b_covered: b_covered && !b.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyKind;

    fn dice(a: &str, b: &str) -> f32 {
        let ta = tokens_of(a, KeyKind::NameToken);
        let tb = tokens_of(b, KeyKind::NameToken);
        compare_names(a, &ta, b, &tb, &|_| 1.0).dice
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
