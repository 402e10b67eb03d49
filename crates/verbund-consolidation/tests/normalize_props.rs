//! Whatever a subsidiary typed, normalization and matching do not panic (the input comes from
//! other organizations' records).

use proptest::prelude::*;
use verbund_consolidation::normalize::{
    domain_of_website, fold, normalize_company, normalize_email, normalize_person, normalize_phone,
    normalize_vat,
};
use verbund_consolidation::{AccountInput, Consolidation, ContactInput, EngineOptions};

proptest! {
    #[test]
    fn normalizers_take_any_text(s in "\\PC{0,40}", country in proptest::option::of("\\PC{0,3}")) {
        let c = country.as_deref();
        let folded = fold(&s);
        // Folding is idempotent and ASCII.
        prop_assert!(folded.is_ascii());
        prop_assert_eq!(fold(&folded), folded.clone());
        let _ = normalize_company(&s);
        let _ = normalize_vat(&s, c);
        let _ = normalize_phone(&s, c);
        let _ = normalize_email(&s);
        let _ = domain_of_website(&s);
        let _ = normalize_person(&s, &s);
    }

    #[test]
    fn the_engine_takes_any_record(
        fields in proptest::collection::vec(proptest::option::of("\\PC{0,20}"), 8),
        name in "\\PC{0,30}",
    ) {
        let f = |i: usize| fields[i].clone();
        let a = AccountInput {
            subsidiary: "s".into(), name: name.clone(), website: f(0), email: f(1), vat_id: f(2),
            phone: f(3), city: f(4), country: f(5),
        };
        let p = ContactInput {
            subsidiary: "s".into(), first_name: name.clone(), last_name: f(6).unwrap_or_default(),
            email: f(1), phone: f(3), country: f(5), employer: Some("a".into()),
        };
        let mut c = Consolidation::new(EngineOptions::default());
        c.upsert_account("a", &a);
        c.upsert_account("b", &a);
        c.upsert_contact("p", &p);
        c.upsert_contact("q", &p);
        let _ = c.accounts().explain("a", "b");
        let _ = c.contacts().explain("p", "q");
        c.remove_account("a");
        c.remove_contact("p");
        prop_assert_eq!(c.accounts().len(), 1);
    }
}
