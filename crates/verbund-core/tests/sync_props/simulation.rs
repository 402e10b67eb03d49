//! 3. The owner-mediated sync simulation and 4. replicas never going back in time (see main.rs).

use super::*;

// ---------------------------------------------------------------------------------------------
// 3. owner-mediated sync simulation
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Step {
    /// The owner writes the fields in the mask directly.
    OwnerEdit { mask: u8 },
    /// A partner changes the fields in the mask and pushes the change.
    PartnerEdit { partner: usize, mask: u8 },
    /// The owner sends its state to both partners.
    Broadcast,
    /// A message leaves the network and is delivered.
    Deliver(Index),
    /// A message is delivered and stays in the network (delivered again later).
    Duplicate(Index),
    /// A message is held back until the next release.
    Delay(Index),
    /// Held-back messages go back into the network.
    Release,
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (1u8..8).prop_map(|mask| Step::OwnerEdit { mask }),
        4 => (0..PARTNERS.len(), 1u8..8).prop_map(|(partner, mask)| Step::PartnerEdit { partner, mask }),
        1 => Just(Step::Broadcast),
        5 => any::<Index>().prop_map(Step::Deliver),
        1 => any::<Index>().prop_map(Step::Duplicate),
        1 => any::<Index>().prop_map(Step::Delay),
        1 => Just(Step::Release),
    ]
}

fn fields_of(mask: u8) -> impl Iterator<Item = &'static str> {
    FIELDS
        .iter()
        .enumerate()
        .filter(move |(i, _)| mask & (1 << i) != 0)
        .map(|(_, f)| *f)
}

#[derive(Clone, Debug)]
enum Msg {
    Push {
        from: usize,
        key: u64,
        edits: Vec<FieldEdit>,
    },
    /// The owner's state after merging push `key`, at owner sequence number `seq`.
    Verdict {
        to: usize,
        key: u64,
        seq: i64,
        state: State,
    },
    /// The owner's state at sequence number `seq` (a broadcast, like a stream batch).
    OwnerState { to: usize, seq: i64, state: State },
}

/// One edit somebody made, per field.
#[derive(Clone, Debug)]
struct Made {
    author: &'static str,
    field: String,
    version: Hlc,
    base: Option<Hlc>,
}

#[derive(Debug)]
struct Owner {
    state: State,
    /// The record's change sequence number: one up whenever `state` changes.
    seq: i64,
    clock: HlcClock,
    conflicts: Vec<Conflict>,
    /// Keys of the pushes merged, with the verdict given (sequence number and state).
    verdicts: HashMap<u64, (i64, State)>,
    /// (field, version) replaced without a conflict by a writer whose base was that version.
    overwritten: BTreeSet<(String, Hlc)>,
}

#[derive(Debug)]
struct Partner {
    shadow: State,
    /// The owner's sequence number of the state the shadow holds.
    shadow_seq: i64,
    outbox: Vec<(u64, Vec<FieldEdit>)>,
    clock: HlcClock,
}

impl Partner {
    fn shown(&self) -> State {
        sync::overlay(
            (&self.shadow.0, &self.shadow.1),
            self.outbox.iter().flat_map(|(_, edits)| edits),
        )
    }

    /// Takes in the owner's state at sequence number `seq` (a verdict for `verdict_key`, or a
    /// broadcast), which may be stale or repeated: an older one than the shadow's leaves the
    /// shadow as it is. Returns how the replica went back in time doing so, if it did: per
    /// field of its shadow and of what it shows, a version that got lower or disappeared.
    fn take(
        &mut self,
        verdict_key: Option<u64>,
        seq: i64,
        state: &State,
        wall: u64,
    ) -> Vec<String> {
        let (shadow_before, shown_before) = (self.shadow.1.clone(), self.shown().1);
        if let Some(key) = verdict_key {
            self.outbox.retain(|(k, _)| *k != key);
        }
        if let Some(taken) = sync::take_owner_state(
            (&self.shadow.0, &self.shadow.1),
            self.shadow_seq,
            (&state.0, &state.1),
            seq,
        ) {
            self.shadow = taken;
            self.shadow_seq = seq;
        } else {
            assert!(seq < self.shadow_seq, "a current state was not taken");
        }
        for v in state.1.values() {
            self.clock.receive(v, wall).expect("within the skew bound");
        }
        // A field the shadow keeps never goes to an older version, however stale the state.
        for (field, v) in &shadow_before {
            if let Some(now) = self.shadow.1.get(field) {
                assert!(now >= v, "shadow {field} went from {v} back to {now}");
            }
        }
        let mut back = Vec::new();
        for (what, before, after) in [
            ("shadow", &shadow_before, &self.shadow.1),
            ("shown", &shown_before, &self.shown().1),
        ] {
            for (field, v) in before {
                let now = after.get(field);
                if now.is_none_or(|n| n < v) {
                    back.push(format!(
                        "{}: {what} {field} went from {v} back to {now:?}",
                        self.clock.node()
                    ));
                }
            }
        }
        back
    }
}

#[derive(Debug)]
struct Sim {
    owner: Owner,
    partners: Vec<Partner>,
    bag: Vec<Msg>,
    delayed: Vec<Msg>,
    made: Vec<Made>,
    /// Every time a partner's replica went back in time (see `Partner::take`).
    went_back: Vec<String>,
    next_key: u64,
    step: u64,
    /// Per node (owner, partners): how far its wall clock runs ahead of the step counter.
    offsets: [u64; 3],
}

impl Sim {
    fn new(offsets: [u64; 3]) -> Sim {
        let mut sim = Sim {
            owner: Owner {
                state: (FieldMap::new(), VersionMap::new()),
                seq: 0,
                clock: HlcClock::new(OWNER, MAX_SKEW_MS),
                conflicts: Vec::new(),
                verdicts: HashMap::new(),
                overwritten: BTreeSet::new(),
            },
            partners: PARTNERS
                .iter()
                .map(|node| Partner {
                    shadow: (FieldMap::new(), VersionMap::new()),
                    shadow_seq: 0,
                    outbox: Vec::new(),
                    clock: HlcClock::new(*node, MAX_SKEW_MS),
                })
                .collect(),
            bag: Vec::new(),
            delayed: Vec::new(),
            made: Vec::new(),
            went_back: Vec::new(),
            next_key: 0,
            step: 0,
            offsets,
        };
        // The owner creates the record with "name" set; both partners took that state.
        sim.owner_edit(1);
        let (seq, state) = (sim.owner.seq, sim.owner.state.clone());
        for i in 0..sim.partners.len() {
            let wall = sim.wall(i + 1);
            sim.partners[i].take(None, seq, &state, wall);
        }
        sim
    }

    fn wall(&self, node: usize) -> u64 {
        self.step + self.offsets[node]
    }

    fn owner_edit(&mut self, mask: u8) {
        let wall = self.wall(0);
        let version = self.owner.clock.tick(wall);
        self.owner.seq += 1; // the mask is never empty: the state changes
        for field in fields_of(mask) {
            let prev = self.owner.state.1.get(field).cloned();
            if let Some(p) = &prev {
                assert!(version > *p, "owner tick {version} not above {p}");
                self.owner
                    .overwritten
                    .insert((field.to_string(), p.clone()));
            }
            write(&mut self.owner.state, field, &version);
            self.made.push(Made {
                author: OWNER,
                field: field.to_string(),
                version: version.clone(),
                base: prev,
            });
        }
    }

    fn partner_edit(&mut self, i: usize, mask: u8) {
        let wall = self.wall(i + 1);
        let key = self.next_key;
        self.next_key += 1;
        let p = &mut self.partners[i];
        let shown = p.shown();
        let version = p.clock.tick(wall);
        let edits: Vec<FieldEdit> = fields_of(mask)
            .map(|field| {
                let base = shown.1.get(field).cloned();
                if let Some(b) = &base {
                    assert!(
                        version > *b,
                        "partner tick {version} not above its base {b}"
                    );
                }
                FieldEdit {
                    field: field.to_string(),
                    value: value_of(field, &version),
                    version: version.clone(),
                    base,
                }
            })
            .collect();
        for e in &edits {
            self.made.push(Made {
                author: PARTNERS[i],
                field: e.field.clone(),
                version: e.version.clone(),
                base: e.base.clone(),
            });
        }
        p.outbox.push((key, edits.clone()));
        let shown = p.shown();
        for e in &edits {
            assert_eq!(
                shown.1.get(&e.field),
                Some(&e.version),
                "the edit does not show"
            );
            assert_eq!(shown.0.get(&e.field), e.value.as_ref());
        }
        self.bag.push(Msg::Push {
            from: i,
            key,
            edits,
        });
    }

    fn broadcast(&mut self) {
        for to in 0..self.partners.len() {
            self.bag.push(Msg::OwnerState {
                to,
                seq: self.owner.seq,
                state: self.owner.state.clone(),
            });
        }
    }

    fn deliver(&mut self, msg: Msg) {
        match msg {
            Msg::Push { from, key, edits } => {
                if let Some((seq, state)) = self.owner.verdicts.get(&key) {
                    // Already merged: answer the stored verdict again, merge nothing.
                    let (seq, state) = (*seq, state.clone());
                    self.bag.push(Msg::Verdict {
                        to: from,
                        key,
                        seq,
                        state,
                    });
                    return;
                }
                let wall = self.wall(0);
                let o = &mut self.owner;
                let merged_into = o.state.clone();
                for e in &edits {
                    o.clock
                        .receive(&e.version, wall)
                        .expect("within the skew bound");
                    let before = o.state.1.get(&e.field).cloned();
                    match sync::merge_edit(&mut o.state.0, &mut o.state.1, e) {
                        EditOutcome::Applied => {
                            if let Some(prev) = before {
                                assert_eq!(
                                    e.base.as_ref(),
                                    Some(&prev),
                                    "applied over a version its author did not see"
                                );
                                o.overwritten.insert((e.field.clone(), prev));
                            }
                        }
                        EditOutcome::Duplicate => {}
                        EditOutcome::Conflict { conflict, .. } => o.conflicts.push(conflict),
                    }
                }
                if o.state != merged_into {
                    o.seq += 1;
                }
                let (seq, state) = (o.seq, o.state.clone());
                o.verdicts.insert(key, (seq, state.clone()));
                self.bag.push(Msg::Verdict {
                    to: from,
                    key,
                    seq,
                    state,
                });
            }
            Msg::Verdict {
                to,
                key,
                seq,
                state,
            } => {
                let wall = self.wall(to + 1);
                let back = self.partners[to].take(Some(key), seq, &state, wall);
                self.went_back.extend(back);
            }
            Msg::OwnerState { to, seq, state } => {
                let wall = self.wall(to + 1);
                let back = self.partners[to].take(None, seq, &state, wall);
                self.went_back.extend(back);
            }
        }
    }

    fn run(&mut self, step: Step) {
        self.step += 1;
        match step {
            Step::OwnerEdit { mask } => self.owner_edit(mask),
            Step::PartnerEdit { partner, mask } => self.partner_edit(partner, mask),
            Step::Broadcast => self.broadcast(),
            Step::Deliver(i) if !self.bag.is_empty() => {
                let msg = self.bag.remove(i.index(self.bag.len()));
                self.deliver(msg);
            }
            Step::Duplicate(i) if !self.bag.is_empty() => {
                let msg = self.bag[i.index(self.bag.len())].clone();
                self.deliver(msg);
            }
            Step::Delay(i) if !self.bag.is_empty() => {
                let msg = self.bag.remove(i.index(self.bag.len()));
                self.delayed.push(msg);
            }
            Step::Release => self.bag.append(&mut self.delayed),
            Step::Deliver(_) | Step::Duplicate(_) | Step::Delay(_) => {}
        }
    }

    /// Delivers the first message in flight that `which` picks.
    fn deliver_first(&mut self, which: impl Fn(&Msg) -> bool) {
        let i = self
            .bag
            .iter()
            .position(which)
            .expect("no such message in flight");
        let msg = self.bag.remove(i);
        self.deliver(msg);
    }

    /// Delivers every message, picking them in the order `picks` says (cycled; first if none).
    fn drain(&mut self, picks: &[Index]) {
        let mut n = 0;
        while !self.bag.is_empty() {
            self.step += 1;
            let i = picks
                .get(n % picks.len().max(1))
                .map_or(0, |p| p.index(self.bag.len()));
            n += 1;
            let msg = self.bag.remove(i);
            self.deliver(msg);
        }
    }

    fn finish(&mut self, picks: &[Index]) {
        self.bag.append(&mut self.delayed);
        self.drain(picks);
        // Partners retry whatever is still in their outbox (same keys).
        for (from, p) in self.partners.iter().enumerate() {
            for (key, edits) in &p.outbox {
                self.bag.push(Msg::Push {
                    from,
                    key: *key,
                    edits: edits.clone(),
                });
            }
        }
        self.drain(picks);
        self.broadcast();
        self.drain(picks);
    }
}

/// Whether `version` of `field` is accounted for at the owner: still current, kept as a
/// conflict's loser, or replaced by a writer that had seen it. The last is exact: the owner
/// held it when an edit based on exactly that version was applied (or the owner overwrote it
/// directly). "Some merged edit has base >= v" would be too weak: a base is only what its
/// author showed, and versions are totally but not causally ordered, so a higher base does
/// not mean its author saw `v`. `merge_edit` only overwrites without a conflict when the base
/// equals the current version, and this exact accounting holds.
fn accounted(o: &Owner, field: &str, version: &Hlc) -> bool {
    o.state.1.get(field) == Some(version)
        || o.conflicts
            .iter()
            .any(|c| c.field == field && &c.loser.version == version)
        || o.overwritten
            .contains(&(field.to_string(), version.clone()))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn owner_mediated_sync_converges_and_loses_nothing(
        offsets in [0u64..8, 0u64..8, 0u64..8],
        steps in prop::collection::vec(step_strategy(), 0..80),
        picks in prop::collection::vec(any::<Index>(), 0..16),
    ) {
        let mut sim = Sim::new(offsets);
        for step in steps {
            sim.run(step);
        }
        sim.finish(&picks);
        let o = &sim.owner;

        // a) Every partner shows exactly the owner's state, with nothing left pending.
        for (i, p) in sim.partners.iter().enumerate() {
            prop_assert!(p.outbox.is_empty(), "{} still has pending edits", PARTNERS[i]);
            prop_assert_eq!(&p.shown(), &o.state, "{} diverged", PARTNERS[i]);
        }

        // The owner holds, per field, the highest version anybody wrote, with its value.
        let mut highest = VersionMap::new();
        for m in &sim.made {
            let h = highest.entry(m.field.clone()).or_insert_with(|| m.version.clone());
            if m.version > *h {
                *h = m.version.clone();
            }
        }
        prop_assert_eq!(&o.state, &state_from(&highest));

        // b) Nothing silently lost.
        for m in &sim.made {
            prop_assert!(
                accounted(o, &m.field, &m.version),
                "{}'s edit of {} at {} (base {:?}) vanished; conflicts: {:#?}",
                m.author, m.field, m.version, m.base, o.conflicts
            );
        }
        // Every conflict's loser is an edit somebody made, with the value it made.
        for c in &o.conflicts {
            prop_assert!(sim.made.iter().any(|m| m.field == c.field && m.version == c.loser.version));
            prop_assert_eq!(&c.loser.value, &value_of(&c.field, &c.loser.version));
            prop_assert_eq!(&c.winner.value, &value_of(&c.field, &c.winner.version));
        }

        // c) Winners beat losers, and a winner is what the owner holds or was superseded.
        for c in &o.conflicts {
            prop_assert!(c.winner.version > c.loser.version);
            prop_assert!(o.state.1.get(&c.field).is_some_and(|v| *v >= c.winner.version));
            prop_assert!(accounted(o, &c.field, &c.winner.version));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. replicas never go back in time
// ---------------------------------------------------------------------------------------------
//
// A replica that showed older data than it already had would base an edit made meanwhile on
// that older version, and the owner would record a conflict that is none (the partner had
// seen the value it "conflicts" with). Two ways it could happen, each with a minimal schedule
// below:
//
// 1. A stale owner state (a broadcast or stream batch sent before a field was first written,
//    arriving after a verdict that already carried the field) lacks the field just as a shrunk
//    projection does. The owner's sequence number tells them apart: `take_owner_state` ignores
//    a state older than the shadow's.
// 2. When the verdict for a partner's second edit of a field arrives before the verdict for its
//    first, the first (older, certain to lose) edit is still pending: `overlay` does not show a
//    pending edit older than the shadow's version of its field.

proptest! {
    #![proptest_config(config())]

    #[test]
    fn replicas_never_go_back_in_time(
        offsets in [0u64..8, 0u64..8, 0u64..8],
        steps in prop::collection::vec(step_strategy(), 0..80),
        picks in prop::collection::vec(any::<Index>(), 0..16),
    ) {
        let mut sim = Sim::new(offsets);
        for step in steps {
            sim.run(step);
        }
        sim.finish(&picks);
        prop_assert!(sim.went_back.is_empty(), "{:#?}", sim.went_back);
    }
}

fn is_push(m: &Msg) -> bool {
    matches!(m, Msg::Push { .. })
}

#[test]
fn a_stale_owner_state_does_not_drop_a_field_the_replica_took() {
    let mut sim = Sim::new([0; 3]); // acme/n holds {name}; both partners took it
    sim.run(Step::Broadcast); // {name} on its way to both partners
    sim.run(Step::PartnerEdit {
        partner: 0,
        mask: 0b010, // globex/n sets phone
    });
    sim.deliver_first(is_push); // the owner applies it
    sim.deliver_first(|m| matches!(m, Msg::Verdict { .. })); // globex/n takes {name, phone}
    assert_eq!(sim.partners[0].shown(), sim.owner.state);
    sim.deliver_first(|m| matches!(m, Msg::OwnerState { to: 0, .. })); // the older {name}
    assert!(sim.went_back.is_empty(), "{:#?}", sim.went_back);
    assert_eq!(
        sim.partners[0].shown(),
        sim.owner.state,
        "globex/n lost its own phone"
    );
}

#[test]
fn a_late_verdict_does_not_bring_back_an_older_pending_value() {
    let mut sim = Sim::new([0; 3]);
    let phone_twice = Step::PartnerEdit {
        partner: 0,
        mask: 0b010,
    };
    sim.run(phone_twice.clone()); // globex/n: phone = p1 (key 0)
    sim.run(phone_twice); // globex/n: phone = p2, based on p1 (key 1)
    sim.deliver_first(is_push); // the owner applies p1
    sim.deliver_first(is_push); // and p2
    sim.deliver_first(|m| matches!(m, Msg::Verdict { key: 1, .. })); // p2's verdict first
    assert!(sim.went_back.is_empty(), "{:#?}", sim.went_back);
    // globex/n's next edit of phone is based on what it shows: that should be p2, which it had
    // seen (p1 makes the owner record p2 as a conflict's loser against globex/n's own p3).
    assert_eq!(
        sim.partners[0].shown().1.get("phone"),
        sim.owner.state.1.get("phone")
    );
}
