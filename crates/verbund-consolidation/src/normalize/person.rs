//! Person names: titles go, names fold, and common nicknames map to their full name.

use std::collections::HashMap;
use std::sync::OnceLock;

use super::{fold, fold_tokens};

/// Titles and salutations in front of names.
const TITLES: &[&str] = &[
    "dr", "prof", "herr", "frau", "hr", "fr", "mr", "mrs", "ms", "miss", "dipl", "ing", "mag",
    "med", "rer", "nat", "phil", "jur", "msc", "bsc", "mba", "sir", "madame", "monsieur", "mme",
    "signor", "signora", "pan", "pani",
];

/// (nickname or short form, full name). Cheap on purpose: the forms a CRM actually holds.
const NICKNAMES: &[(&str, &str)] = &[
    ("hans", "johannes"),
    ("jo", "johannes"),
    ("johann", "johannes"),
    ("hannes", "johannes"),
    ("sepp", "josef"),
    ("joseph", "josef"),
    ("jupp", "josef"),
    ("bill", "william"),
    ("will", "william"),
    ("bob", "robert"),
    ("rob", "robert"),
    ("bert", "robert"),
    ("jim", "james"),
    ("jimmy", "james"),
    ("mike", "michael"),
    ("micha", "michael"),
    ("michi", "michael"),
    ("kathi", "katharina"),
    ("kati", "katharina"),
    ("katrin", "katharina"),
    ("kate", "katherine"),
    ("katie", "katherine"),
    ("liz", "elizabeth"),
    ("beth", "elizabeth"),
    ("lisa", "elisabeth"),
    ("liesel", "elisabeth"),
    ("sabine", "sabine"),
    ("alex", "alexander"),
    ("sascha", "alexander"),
    ("sandra", "alexandra"),
    ("chris", "christian"),
    ("christoph", "christopher"),
    ("uli", "ulrich"),
    ("steffi", "stefanie"),
    ("stephanie", "stefanie"),
    ("tom", "thomas"),
    ("thomas", "thomas"),
    ("andi", "andreas"),
    ("andy", "andreas"),
    ("basti", "sebastian"),
    ("flo", "florian"),
    ("max", "maximilian"),
    ("matze", "matthias"),
    ("mathias", "matthias"),
    ("fritz", "friedrich"),
    ("franz", "franziskus"),
    ("heinz", "heinrich"),
    ("henry", "heinrich"),
    ("kurt", "konrad"),
    ("conny", "cornelia"),
    ("gabi", "gabriele"),
    ("moni", "monika"),
    ("babsi", "barbara"),
    ("susi", "susanne"),
    ("sanne", "susanne"),
    ("lena", "magdalena"),
    ("leni", "helene"),
    ("tina", "christina"),
    ("christine", "christina"),
    ("nico", "nikolaus"),
    ("klaus", "nikolaus"),
    ("niklas", "nikolaus"),
    ("dani", "daniel"),
    ("danny", "daniel"),
    ("ben", "benjamin"),
    ("jens", "johannes"),
    ("joe", "joseph"),
    ("dave", "david"),
    ("dan", "daniel"),
    ("sam", "samuel"),
    ("tim", "timotheus"),
    ("timo", "timotheus"),
    ("wolfi", "wolfgang"),
    ("jurgen", "jurgen"),
    ("georg", "georg"),
    ("jorg", "georg"),
    ("peggy", "margarete"),
    ("grete", "margarete"),
    ("margit", "margarete"),
    ("ricarda", "ricarda"),
    ("rick", "richard"),
    ("dick", "richard"),
    ("ted", "edward"),
    ("ed", "edward"),
    ("eddie", "edward"),
    ("toni", "anton"),
    ("tony", "anthony"),
    ("pepe", "jose"),
    ("paco", "francisco"),
    ("beppe", "giuseppe"),
    ("gianni", "giovanni"),
    ("kasia", "katarzyna"),
    ("gosia", "malgorzata"),
    ("tomek", "tomasz"),
    ("kuba", "jakub"),
];

fn nickname_table() -> &'static HashMap<String, String> {
    static TABLE: OnceLock<HashMap<String, String>> = OnceLock::new();
    TABLE.get_or_init(|| NICKNAMES.iter().map(|(n, f)| (fold(n), fold(f))).collect())
}

/// A person's name as the matcher compares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersonName {
    /// Folded first given name with nicknames mapped to the full name (`Hans` → `johannes`).
    pub first: Option<String>,
    /// Folded family name, particles included, tokens joined without spaces (`von der Heide`
    /// → `vonderheide`), so that spacing does not matter.
    pub last: Option<String>,
}

/// Normalizes given and family name.
pub fn normalize_person(first: &str, last: &str) -> PersonName {
    let first = fold_tokens(first)
        .into_iter()
        .find(|t| !TITLES.contains(&t.as_str()))
        .map(|t| nickname_table().get(&t).cloned().unwrap_or(t));
    let last_tokens: Vec<String> = fold_tokens(last)
        .into_iter()
        .filter(|t| !TITLES.contains(&t.as_str()))
        .collect();
    let last = (!last_tokens.is_empty()).then(|| last_tokens.concat());
    PersonName { first, last }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nicknames_and_titles() {
        let a = normalize_person("Dr. Hans", "Müller");
        let b = normalize_person("Johannes", "Mueller");
        assert_eq!(a, b);
        assert_eq!(a.first.as_deref(), Some("johannes"));
        assert_eq!(
            normalize_person("", "von der Heide").last.as_deref(),
            Some("vonderheide")
        );
        assert_eq!(normalize_person("", "").last, None);
    }
}
