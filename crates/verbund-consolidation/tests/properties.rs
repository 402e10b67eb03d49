//! Properties of the clustering: the partition is a function of the set of records and
//! decisions, not of arrival order; constraints hold inside every cluster; an unlinked pair
//! stays apart; removing a record is the same as never having inserted it.

use proptest::prelude::*;
use verbund_consolidation::normalize::de_check_digit;
use verbund_consolidation::{
    AccountInput, AccountMatcher, Consolidation, ContactInput, Engine, EngineOptions,
    StewardDecision,
};

fn vat(n: u8) -> String {
    let body = [1, 2, 3, 4, 5, 6, 7, n % 10];
    let check = de_check_digit(&body);
    let digits: String = body
        .iter()
        .chain([check].iter())
        .map(|d| char::from(b'0' + d))
        .collect();
    format!("DE{digits}")
}

const NAMES: &[&str] = &[
    "Nordwind Logistik GmbH",
    "Nordwind Logistik GmbH & Co. KG",
    "Nordwnd Logistik G.m.b.H.",
    "Nordwind Software GmbH",
    "Nordwind",
    "NORDWIND LOGISTIK",
    "Müller Metallbau AG",
    "Mueller Metallbau",
];

/// Small pools, so that records collide on every attribute.
fn account() -> impl Strategy<Value = AccountInput> {
    (
        0..NAMES.len(),
        proptest::option::of(0u8..3),
        proptest::option::of(0usize..2),
        proptest::option::of(0usize..2),
        proptest::option::of(0usize..2),
    )
        .prop_map(|(name, vat_n, domain, phone, city)| AccountInput {
            subsidiary: "sub".into(),
            name: NAMES[name].into(),
            website: domain.map(|d| ["nordwind.de", "www.mueller.de"][d].into()),
            email: None,
            vat_id: vat_n.map(vat),
            phone: phone.map(|p| ["030 1234567", "+49 89 7654321"][p].into()),
            city: city.map(|c| ["Berlin", "München"][c].into()),
            country: Some("DE".into()),
        })
}

fn records() -> impl Strategy<Value = Vec<(String, AccountInput)>> {
    proptest::collection::vec(account(), 1..14).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, a)| (format!("r{i:02}"), a))
            .collect()
    })
}

fn decisions(n: usize) -> impl Strategy<Value = Vec<StewardDecision>> {
    proptest::collection::vec((0..n, 0..n, any::<bool>()), 0..4).prop_map(|v| {
        v.into_iter()
            .filter(|(a, b, _)| a != b)
            .map(|(a, b, link)| {
                let (a, b) = (format!("r{a:02}"), format!("r{b:02}"));
                if link {
                    StewardDecision::Link(a, b)
                } else {
                    StewardDecision::Unlink(a, b)
                }
            })
            .collect()
    })
}

fn opts() -> EngineOptions {
    // A small cap, so that blocks die and revive while records come and go.
    EngineOptions {
        block_cap: 4,
        threads: 2,
    }
}

fn batch(
    records: &[(String, AccountInput)],
    decisions: &[StewardDecision],
) -> Engine<AccountMatcher> {
    Engine::build(
        AccountMatcher,
        opts(),
        records.iter().map(|(k, a)| (k.as_str(), a)),
        decisions,
    )
}

/// A permutation of 0..n from a seed (proptest shrinks seeds well).
fn permutation(n: usize, mut seed: u64) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        p.swap(i, (seed >> 33) as usize % (i + 1));
    }
    p
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn arrival_order_does_not_matter(
        (records, decisions) in records().prop_flat_map(|r| { let n = r.len(); (Just(r), decisions(n)) }),
        seed in any::<u64>(),
    ) {
        let expected = batch(&records, &decisions).partition();
        // Incremental, shuffled, with decisions interleaved at arbitrary points.
        let mut e = Engine::new(AccountMatcher, opts());
        let order = permutation(records.len(), seed);
        for (step, &i) in order.iter().enumerate() {
            let (k, a) = &records[i];
            e.upsert(k, a);
            if step < decisions.len() {
                e.decide(decisions[step].clone());
            }
        }
        for d in decisions.iter().skip(order.len()) {
            e.decide(d.clone());
        }
        // A later unlink replaces an earlier link on the same pair, in both runs alike.
        prop_assert_eq!(e.partition(), expected);
    }

    #[test]
    fn constraints_hold_inside_every_cluster(records in records()) {
        let e = batch(&records, &[]);
        for cluster in e.partition() {
            for (i, a) in cluster.iter().enumerate() {
                for b in &cluster[i + 1..] {
                    let x = e.explain(a, b).unwrap();
                    prop_assert!(x.conflict.is_none(), "{a} and {b} share a cluster despite {:?}", x.conflict);
                }
            }
        }
    }

    #[test]
    fn an_unlinked_pair_stays_apart(
        records in records(),
        pair in (0usize..14, 0usize..14),
        more in proptest::collection::vec(account(), 0..6),
    ) {
        let n = records.len();
        let (a, b) = (format!("r{:02}", pair.0 % n), format!("r{:02}", pair.1 % n));
        prop_assume!(a != b);
        let mut e = batch(&records, &[]);
        e.decide(StewardDecision::Unlink(a.clone(), b.clone()));
        prop_assert_ne!(e.cluster_of(&a), e.cluster_of(&b));
        // Whatever arrives afterwards, including copies that bridge the two.
        for (i, m) in more.iter().enumerate() {
            e.upsert(&format!("m{i}"), m);
            prop_assert_ne!(e.cluster_of(&a), e.cluster_of(&b));
        }
        // A steward taking a out of its cluster keeps b away too.
        e.unlink_from_cluster(&a);
        prop_assert!(!e.cluster_members(&a).contains(&b.as_str()));
    }

    #[test]
    fn removal_equals_never_inserting(records in records(), gone in proptest::collection::vec(any::<bool>(), 14)) {
        let mut e = batch(&records, &[]);
        let mut kept = Vec::new();
        for (i, r) in records.iter().enumerate() {
            if gone[i] { e.remove(&r.0); } else { kept.push(r.clone()); }
        }
        prop_assert_eq!(e.partition(), batch(&kept, &[]).partition());
    }

    #[test]
    fn changing_a_record_equals_building_with_the_new_version(
        records in records(),
        which in 0usize..14,
        replacement in account(),
    ) {
        let mut e = batch(&records, &[]);
        let mut changed = records.clone();
        let i = which % changed.len();
        changed[i].1 = replacement.clone();
        e.upsert(&changed[i].0, &replacement);
        prop_assert_eq!(e.partition(), batch(&changed, &[]).partition());
    }

    #[test]
    fn contacts_follow_their_employers_in_any_order(records in records(), seed in any::<u64>(), people in proptest::collection::vec((0usize..3, 0usize..14, any::<bool>()), 1..10)) {
        let firsts = ["Anna", "Hans", "Johannes"];
        let contacts: Vec<(String, ContactInput)> = people
            .iter()
            .enumerate()
            .map(|(i, (f, employer, mail))| {
                (format!("c{i:02}"), ContactInput {
                    subsidiary: "sub".into(),
                    first_name: firsts[*f].into(),
                    last_name: "Berg".into(),
                    email: mail.then(|| format!("{}.berg@nordwind.de", firsts[*f].to_lowercase())),
                    phone: None,
                    country: Some("DE".into()),
                    employer: Some(format!("r{:02}", employer % records.len())),
                })
            })
            .collect();
        let expected = Consolidation::build(opts(), records.clone(), contacts.clone(), &[], &[]);
        let mut c = Consolidation::new(opts());
        // Accounts and contacts interleaved in a shuffled order.
        let total = records.len() + contacts.len();
        for i in permutation(total, seed) {
            if i < records.len() {
                c.upsert_account(&records[i].0, &records[i].1);
            } else {
                let (k, p) = &contacts[i - records.len()];
                c.upsert_contact(k, p);
            }
        }
        prop_assert_eq!(c.accounts().partition(), expected.accounts().partition());
        prop_assert_eq!(c.contacts().partition(), expected.contacts().partition());
    }
}
