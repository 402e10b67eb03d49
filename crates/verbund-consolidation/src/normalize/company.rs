//! Company names: the legal form is recognised across languages and spellings and kept as a
//! separate attribute; what remains is the name the matcher compares.

use super::fold_tokens;

/// A legal form, whatever its spelling (`GmbH`, `G.m.b.H.`, `Gesellschaft mit beschränkter
/// Haftung` are all [`LegalForm::Gmbh`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LegalForm {
    Gmbh,
    GmbhCoKg,
    AgCoKg,
    Ag,
    Kg,
    KgaA,
    Ohg,
    Se,
    Ek,
    Ug,
    Gbr,
    Eg,
    Ev,
    Ltd,
    Plc,
    Inc,
    Llc,
    Corp,
    Sa,
    Sas,
    Sarl,
    Bv,
    Nv,
    Spa,
    Srl,
    SpZoo,
    As,
    Ab,
    Oy,
    Aps,
    Sl,
}

impl LegalForm {
    /// The usual written form.
    pub fn as_str(self) -> &'static str {
        use LegalForm::*;
        match self {
            Gmbh => "GmbH",
            GmbhCoKg => "GmbH & Co. KG",
            AgCoKg => "AG & Co. KG",
            Ag => "AG",
            Kg => "KG",
            KgaA => "KGaA",
            Ohg => "OHG",
            Se => "SE",
            Ek => "e.K.",
            Ug => "UG (haftungsbeschränkt)",
            Gbr => "GbR",
            Eg => "eG",
            Ev => "e.V.",
            Ltd => "Ltd",
            Plc => "PLC",
            Inc => "Inc.",
            Llc => "LLC",
            Corp => "Corp.",
            Sa => "S.A.",
            Sas => "S.A.S.",
            Sarl => "S.à r.l.",
            Bv => "B.V.",
            Nv => "N.V.",
            Spa => "S.p.A.",
            Srl => "S.r.l.",
            SpZoo => "sp. z o.o.",
            As => "A/S",
            Ab => "AB",
            Oy => "Oy",
            Aps => "ApS",
            Sl => "S.L.",
        }
    }
}

/// Spellings of legal forms, folded and with the tokens joined without spaces (so `GmbH & Co.
/// KG`, `GmbH u. Co. KG` and `GmbH + Co KG` all end as one of these keys).
const SPELLINGS: &[(&str, LegalForm)] = &[
    ("gmbh", LegalForm::Gmbh),
    ("gesmbh", LegalForm::Gmbh),
    ("gesellschaftmbh", LegalForm::Gmbh),
    ("mbh", LegalForm::Gmbh),
    ("gesellschaftmitbeschrankterhaftung", LegalForm::Gmbh),
    ("gmbh&cokg", LegalForm::GmbhCoKg),
    ("gmbhcokg", LegalForm::GmbhCoKg),
    ("gmbhucokg", LegalForm::GmbhCoKg),
    ("gmbhundcokg", LegalForm::GmbhCoKg),
    ("gmbh&compagniekg", LegalForm::GmbhCoKg),
    ("gmbh&cokommanditgesellschaft", LegalForm::GmbhCoKg),
    ("ag&cokg", LegalForm::AgCoKg),
    ("agcokg", LegalForm::AgCoKg),
    ("agucokg", LegalForm::AgCoKg),
    ("ag", LegalForm::Ag),
    ("aktiengesellschaft", LegalForm::Ag),
    ("kg", LegalForm::Kg),
    ("kommanditgesellschaft", LegalForm::Kg),
    ("kgaa", LegalForm::KgaA),
    ("kommanditgesellschaftaufaktien", LegalForm::KgaA),
    ("ohg", LegalForm::Ohg),
    ("offenehandelsgesellschaft", LegalForm::Ohg),
    ("se", LegalForm::Se),
    ("societaseuropaa", LegalForm::Se),
    ("ek", LegalForm::Ek),
    ("ekfm", LegalForm::Ek),
    ("ekfr", LegalForm::Ek),
    ("eingetragenerkaufmann", LegalForm::Ek),
    ("eingetragenekauffrau", LegalForm::Ek),
    ("ug", LegalForm::Ug),
    ("ughaftungsbeschrankt", LegalForm::Ug),
    ("gbr", LegalForm::Gbr),
    ("gesellschaftburgerlichenrechts", LegalForm::Gbr),
    ("eg", LegalForm::Eg),
    ("ev", LegalForm::Ev),
    ("ltd", LegalForm::Ltd),
    ("limited", LegalForm::Ltd),
    ("plc", LegalForm::Plc),
    ("inc", LegalForm::Inc),
    ("incorporated", LegalForm::Inc),
    ("llc", LegalForm::Llc),
    ("corp", LegalForm::Corp),
    ("corporation", LegalForm::Corp),
    ("sa", LegalForm::Sa),
    ("societeanonyme", LegalForm::Sa),
    ("sociedadanonima", LegalForm::Sa),
    ("sas", LegalForm::Sas),
    ("societeparactionssimplifiee", LegalForm::Sas),
    ("sarl", LegalForm::Sarl),
    ("bv", LegalForm::Bv),
    ("nv", LegalForm::Nv),
    ("spa", LegalForm::Spa),
    ("srl", LegalForm::Srl),
    ("spzoo", LegalForm::SpZoo),
    ("spolkazograniczonaodpowiedzialnoscia", LegalForm::SpZoo),
    ("as", LegalForm::As),
    ("ab", LegalForm::Ab),
    ("oy", LegalForm::Oy),
    ("aps", LegalForm::Aps),
    ("sl", LegalForm::Sl),
];

/// The longest spelling has this many tokens (`gesellschaft mit beschrankter haftung`,
/// `spolka z ograniczona odpowiedzialnoscia`, `gmbh & co kommanditgesellschaft`).
const MAX_FORM_TOKENS: usize = 5;

/// Words that carry no identity of their own.
const STOP_TOKENS: &[&str] = &[
    "&", "und", "and", "u", "the", "der", "die", "das", "co", "et",
];

/// A company name split into its legal form and the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompanyName {
    /// Folded name tokens without the legal form and stop words.
    pub tokens: Vec<String>,
    /// The legal form, when the name carries one.
    pub legal_form: Option<LegalForm>,
}

impl CompanyName {
    /// The tokens joined by single spaces: the string the similarity measure compares.
    pub fn core(&self) -> String {
        self.tokens.join(" ")
    }
}

fn form_of(joined: &str) -> Option<LegalForm> {
    SPELLINGS
        .iter()
        .find(|(s, _)| *s == joined)
        .map(|(_, f)| *f)
}

/// Splits a company name into legal form and name tokens. The legal form is looked for at the
/// end of the name (the longest spelling wins), where every language puts it.
pub fn normalize_company(name: &str) -> CompanyName {
    let mut tokens = fold_tokens(name);
    let mut legal_form = None;
    let max = MAX_FORM_TOKENS.min(tokens.len().saturating_sub(1));
    for k in (1..=max).rev() {
        let joined: String = tokens[tokens.len() - k..].concat();
        if let Some(form) = form_of(&joined) {
            legal_form = Some(form);
            tokens.truncate(tokens.len() - k);
            break;
        }
    }
    tokens.retain(|t| !STOP_TOKENS.contains(&t.as_str()));
    CompanyName { tokens, legal_form }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(name: &str) -> Option<LegalForm> {
        normalize_company(name).legal_form
    }

    #[test]
    fn spellings_of_one_form_meet() {
        for n in [
            "Müller GmbH",
            "Mueller G.m.b.H.",
            "MULLER Gesellschaft mit beschränkter Haftung",
            "Müller Ges.m.b.H.",
        ] {
            assert_eq!(form(n), Some(LegalForm::Gmbh), "{n}");
            assert_eq!(normalize_company(n).core(), "muller", "{n}");
        }
        for n in [
            "Nordwind GmbH & Co. KG",
            "Nordwind GmbH u. Co. KG",
            "Nordwind GmbH + Co KG",
        ] {
            assert_eq!(form(n), Some(LegalForm::GmbhCoKg), "{n}");
            assert_eq!(normalize_company(n).core(), "nordwind", "{n}");
        }
        assert_eq!(form("Bauer UG (haftungsbeschränkt)"), Some(LegalForm::Ug));
        assert_eq!(form("Bauer e.K."), Some(LegalForm::Ek));
        assert_eq!(form("Bauer e. K."), Some(LegalForm::Ek));
        assert_eq!(form("Rossi S.p.A."), Some(LegalForm::Spa));
        assert_eq!(form("Rossi S.r.l."), Some(LegalForm::Srl));
        assert_eq!(form("Kowalski sp. z o.o."), Some(LegalForm::SpZoo));
        assert_eq!(form("Dupont S.A.S."), Some(LegalForm::Sas));
        assert_eq!(form("Dupont SA"), Some(LegalForm::Sa));
        assert_eq!(form("Jansen B.V."), Some(LegalForm::Bv));
        assert_eq!(form("Acme Inc."), Some(LegalForm::Inc));
        assert_eq!(form("Acme Limited"), Some(LegalForm::Ltd));
    }

    #[test]
    fn a_name_is_never_only_a_legal_form() {
        // "AG" alone is the name, not an empty name with a legal form.
        let n = normalize_company("AG");
        assert_eq!(n.legal_form, None);
        assert_eq!(n.core(), "ag");
        assert_eq!(form("Schmidt"), None);
    }

    #[test]
    fn stop_words_go() {
        assert_eq!(
            normalize_company("Müller & Söhne KG").core(),
            "muller sohne"
        );
        assert_eq!(
            normalize_company("Müller und Söhne KG").core(),
            "muller sohne"
        );
    }
}
