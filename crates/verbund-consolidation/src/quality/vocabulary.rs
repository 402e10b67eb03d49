//! Word lists of the labelled data set: German-speaking companies mostly, some Italian,
//! Polish and Belgian ones, so that every checked VAT scheme and several phone plans occur.

use crate::normalize::LegalForm;

/// A country of the generated companies.
pub struct Country {
    pub code: &'static str,
    pub calling_code: &'static str,
    pub trunk: &'static str,
    pub tld: &'static str,
    pub cities: &'static [&'static str],
    pub industries: &'static [&'static str],
    /// Legal forms with weights.
    pub forms: &'static [(LegalForm, u32)],
}

pub const COUNTRIES: &[(Country, u32)] = &[
    (
        Country {
            code: "DE",
            calling_code: "49",
            trunk: "0",
            tld: "de",
            cities: &[
                "Berlin", "Hamburg", "München", "Köln", "Frankfurt am Main", "Stuttgart", "Düsseldorf",
                "Leipzig", "Dortmund", "Essen", "Bremen", "Dresden", "Hannover", "Nürnberg", "Duisburg",
                "Bochum", "Wuppertal", "Bielefeld", "Bonn", "Münster", "Mannheim", "Karlsruhe", "Augsburg",
                "Wiesbaden", "Mönchengladbach", "Aachen", "Braunschweig", "Kiel", "Chemnitz", "Halle",
                "Magdeburg", "Freiburg", "Krefeld", "Mainz", "Lübeck", "Erfurt", "Rostock", "Kassel",
                "Würzburg", "Göttingen", "Regensburg", "Ulm", "Jena", "Passau", "Lüneburg", "Fürth",
            ],
            industries: GERMAN_INDUSTRIES,
            forms: &[
                (LegalForm::Gmbh, 55),
                (LegalForm::GmbhCoKg, 10),
                (LegalForm::Ag, 7),
                (LegalForm::Kg, 7),
                (LegalForm::Ek, 6),
                (LegalForm::Ohg, 3),
                (LegalForm::Ug, 5),
                (LegalForm::Se, 2),
            ],
        },
        78,
    ),
    (
        Country {
            code: "AT",
            calling_code: "43",
            trunk: "0",
            tld: "at",
            cities: &["Wien", "Graz", "Linz", "Salzburg", "Innsbruck", "Klagenfurt", "Villach", "Wels", "St. Pölten", "Dornbirn"],
            industries: GERMAN_INDUSTRIES,
            forms: &[(LegalForm::Gmbh, 70), (LegalForm::Ag, 10), (LegalForm::Kg, 10), (LegalForm::GmbhCoKg, 10)],
        },
        12,
    ),
    (
        Country {
            code: "IT",
            calling_code: "39",
            trunk: "",
            tld: "it",
            cities: &["Milano", "Roma", "Torino", "Bologna", "Verona", "Firenze", "Napoli"],
            industries: &["Logistica", "Meccanica", "Software", "Consulenze", "Costruzioni", "Tessile", "Alimentari"],
            forms: &[(LegalForm::Srl, 70), (LegalForm::Spa, 30)],
        },
        4,
    ),
    (
        Country {
            code: "PL",
            calling_code: "48",
            trunk: "",
            tld: "pl",
            cities: &["Warszawa", "Kraków", "Łódź", "Wrocław", "Poznań", "Gdańsk"],
            industries: &["Logistyka", "Budownictwo", "Software", "Handel", "Transport", "Energetyka"],
            forms: &[(LegalForm::SpZoo, 100)],
        },
        3,
    ),
    (
        Country {
            code: "BE",
            calling_code: "32",
            trunk: "0",
            tld: "be",
            cities: &["Bruxelles", "Antwerpen", "Gent", "Liège", "Brugge"],
            industries: &["Logistics", "Engineering", "Software", "Consulting", "Chemicals"],
            forms: &[(LegalForm::Bv, 60), (LegalForm::Nv, 40)],
        },
        3,
    ),
];

const GERMAN_INDUSTRIES: &[&str] = &[
    "Logistik", "Metallbau", "Software", "Consulting", "Elektrotechnik", "Maschinenbau", "Immobilien",
    "Handel", "Systeme", "Bau", "Transporte", "Medizintechnik", "Druck", "Verpackung", "Energie",
    "Automation", "Service", "Solutions", "Technik", "Holzbau", "Lebensmittel", "Getränke", "Textil",
    "Kunststoff", "Chemie", "Optik", "Finanzberatung", "Reisen", "Design", "Gebäudetechnik",
    "Sanitär", "Haustechnik", "Möbel", "Werkzeugbau", "Stahlbau", "Anlagenbau", "Umwelttechnik",
    "Personaldienste", "Marketing", "Pharma",
];

/// Syllables of brand names (two or three make a brand).
pub const SYLLABLES: &[&str] = &[
    "nord", "wind", "berg", "tal", "stein", "feld", "haus", "bach", "lind", "hof", "mark", "sonn",
    "licht", "wald", "see", "brück", "eich", "roth", "schwarz", "weiß", "gold", "silber", "adler",
    "falk", "wolf", "bär", "fuchs", "kron", "stern", "blau", "grün", "rhein", "elb", "main", "isar",
    "alp", "ost", "süd", "west", "kraft", "werk", "form", "tech", "data", "logi", "medi", "pro",
    "nova", "vita", "tera", "astra", "opti", "primo", "inno", "quant", "sol", "vera", "flex", "uni",
    "omni", "lux", "mar", "tor", "quell", "born", "dorf", "heim", "burg", "au", "ried", "moor",
];

pub const SURNAMES: &[&str] = &[
    "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz",
    "Hoffmann", "Schäfer", "Koch", "Bauer", "Richter", "Klein", "Wolf", "Schröder", "Neumann",
    "Schwarz", "Zimmermann", "Braun", "Krüger", "Hofmann", "Hartmann", "Lange", "Schmitt", "Werner",
    "Schmitz", "Krause", "Meier", "Lehmann", "Schmid", "Schulze", "Maier", "Köhler", "Herrmann",
    "König", "Walter", "Mayer", "Huber", "Kaiser", "Fuchs", "Peters", "Lang", "Scholz", "Möller",
    "Weiß", "Jung", "Hahn", "Schubert", "Vogel", "Friedrich", "Keller", "Günther", "Frank", "Berger",
    "Winkler", "Roth", "Beck", "Lorenz", "Baumann", "Franke", "Albrecht", "Schuster", "Simon",
    "Ludwig", "Böhm", "Winter", "Kraus", "Martin", "Schumacher", "Krämer", "Vogt", "Stein", "Jäger",
    "Otto", "Sommer", "Groß", "Seidel", "Heinrich", "Brandt", "Haas", "Schreiber", "Graf", "Schulte",
    "Dietrich", "Ziegler", "Kuhn", "Kühn", "Pohl", "Engel", "Horn", "Busch", "Bergmann", "Voigt",
    "Sauer", "Arnold", "Wolff", "Pfeiffer", "Rossi", "Bianchi", "Kowalski", "Nowak", "Peeters",
];

/// First names and a nickname people use for them (empty: none).
pub const FIRST_NAMES: &[(&str, &str)] = &[
    ("Johannes", "Hans"), ("Josef", "Sepp"), ("Michael", "Mike"), ("Katharina", "Kathi"),
    ("Elisabeth", "Lisa"), ("Alexander", "Alex"), ("Ulrich", "Uli"), ("Stefanie", "Steffi"),
    ("Thomas", "Tom"), ("Andreas", "Andi"), ("Sebastian", "Basti"), ("Florian", "Flo"),
    ("Maximilian", "Max"), ("Matthias", "Matze"), ("Friedrich", "Fritz"), ("Gabriele", "Gabi"),
    ("Monika", "Moni"), ("Susanne", "Susi"), ("Daniel", "Dani"), ("Benjamin", "Ben"),
    ("Christina", "Tina"), ("Wolfgang", "Wolfi"), ("Anna", ""), ("Julia", ""), ("Laura", ""),
    ("Sarah", ""), ("Sophie", ""), ("Marie", ""), ("Jan", ""), ("Lukas", ""), ("Tobias", ""),
    ("Felix", ""), ("Jonas", ""), ("Paul", ""), ("Martin", ""), ("Peter", ""), ("Jürgen", ""),
    ("Birgit", ""), ("Petra", ""), ("Sabine", ""), ("Claudia", ""), ("Nicole", ""), ("Markus", ""),
    ("Frank", ""), ("Uwe", ""), ("Dirk", ""), ("Ralf", ""), ("Heike", ""), ("Anja", ""), ("Karin", ""),
    ("Ute", ""), ("Jörg", ""), ("Björn", ""), ("Sören", ""), ("Günter", ""), ("Dieter", ""),
    ("Ingrid", ""), ("Bernd", ""), ("Helga", ""), ("Oliver", ""),
];

/// Spellings of a legal form as people type them.
pub fn spellings(form: LegalForm) -> &'static [&'static str] {
    use LegalForm::*;
    match form {
        Gmbh => &["GmbH", "G.m.b.H.", "Gesellschaft mit beschränkter Haftung", "Gmbh", "GMBH", "Ges.m.b.H."],
        GmbhCoKg => &["GmbH & Co. KG", "GmbH & Co KG", "GmbH u. Co. KG", "GmbH + Co. KG", "Gmbh & Co.KG"],
        Ag => &["AG", "Aktiengesellschaft", "A.G."],
        Kg => &["KG", "Kommanditgesellschaft"],
        Ek => &["e.K.", "e. K.", "e.Kfm."],
        Ohg => &["OHG", "oHG", "offene Handelsgesellschaft"],
        Ug => &["UG (haftungsbeschränkt)", "UG (haftungsbeschraenkt)", "UG"],
        Se => &["SE"],
        Srl => &["S.r.l.", "Srl", "s.r.l."],
        Spa => &["S.p.A.", "SpA"],
        SpZoo => &["sp. z o.o.", "Sp. z o.o.", "spółka z ograniczoną odpowiedzialnością"],
        Bv => &["B.V.", "BV"],
        Nv => &["N.V.", "NV"],
        _ => &[""],
    }
}

pub const FREE_MAIL: &[&str] = &["gmx.de", "web.de", "gmail.com", "t-online.de", "outlook.com"];
