//! Accounts and contacts together: a contact's employer is its employer account's cluster,
//! so when accounts merge or split, the contacts working there are matched again.

use std::collections::HashMap;

use crate::accounts::{AccountInput, AccountMatcher};
use crate::contacts::{ContactInput, ContactMatcher, ContactRecord};
use crate::engine::{ClusterChange, Engine, EngineOptions, StewardDecision};
use crate::keys::{KeyKind, key};

/// What one change did to both kinds of clusters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub accounts: Vec<ClusterChange>,
    pub contacts: Vec<ClusterChange>,
}

/// The consolidated customers (account clusters) and persons (contact clusters) of a group.
pub struct Consolidation {
    accounts: Engine<AccountMatcher>,
    contacts: Engine<ContactMatcher>,
    /// Contacts by the account record they work for.
    staff: HashMap<Box<str>, Vec<Box<str>>>,
    /// The employer account record of each contact that has one.
    employer_of: HashMap<Box<str>, Box<str>>,
}

impl Consolidation {
    pub fn new(opts: EngineOptions) -> Self {
        Consolidation {
            accounts: Engine::new(AccountMatcher, opts),
            contacts: Engine::new(ContactMatcher, opts),
            staff: HashMap::new(),
            employer_of: HashMap::new(),
        }
    }

    /// Builds from whole sets at once (the same clusters as adding one by one). Accounts are
    /// consumed first, then contacts, so both may be streamed.
    pub fn build(
        opts: EngineOptions,
        accounts: impl IntoIterator<Item = (String, AccountInput)>,
        contacts: impl IntoIterator<Item = (String, ContactInput)>,
        account_decisions: &[StewardDecision],
        contact_decisions: &[StewardDecision],
    ) -> Self {
        let mut c = Self::build_accounts(opts, accounts, account_decisions);
        c.build_contacts(contacts, contact_decisions);
        c
    }

    /// The first half of [`Consolidation::build`]: accounts only.
    pub fn build_accounts(
        opts: EngineOptions,
        accounts: impl IntoIterator<Item = (String, AccountInput)>,
        decisions: &[StewardDecision],
    ) -> Self {
        Consolidation {
            accounts: Engine::build(AccountMatcher, opts, accounts, decisions),
            contacts: Engine::new(ContactMatcher, opts),
            staff: HashMap::new(),
            employer_of: HashMap::new(),
        }
    }

    /// The second half of [`Consolidation::build`]: replaces all contacts by these.
    pub fn build_contacts(
        &mut self,
        contacts: impl IntoIterator<Item = (String, ContactInput)>,
        decisions: &[StewardDecision],
    ) {
        let mut staff: HashMap<Box<str>, Vec<Box<str>>> = HashMap::new();
        let mut employer_of = HashMap::new();
        let accounts = &self.accounts;
        let records = contacts.into_iter().map(|(k, c)| {
            if let Some(e) = c.employer.as_deref() {
                staff.entry(e.into()).or_default().push(k.as_str().into());
                employer_of.insert(k.as_str().into(), e.into());
            }
            let employer_cluster = employer_cluster(accounts, &c);
            (
                k,
                ContactRecord {
                    employer_cluster,
                    contact: c,
                },
            )
        });
        let opts = self.contacts.opts;
        self.contacts = Engine::build(ContactMatcher, opts, records, decisions);
        self.staff = staff;
        self.employer_of = employer_of;
    }

    pub fn accounts(&self) -> &Engine<AccountMatcher> {
        &self.accounts
    }

    pub fn contacts(&self) -> &Engine<ContactMatcher> {
        &self.contacts
    }

    pub fn upsert_account(&mut self, record: &str, input: &AccountInput) -> Changes {
        let accounts = self.accounts.upsert(record, input);
        self.after_accounts(accounts)
    }

    pub fn remove_account(&mut self, record: &str) -> Changes {
        let accounts = self.accounts.remove(record);
        self.after_accounts(accounts)
    }

    pub fn decide_accounts(&mut self, decision: StewardDecision) -> Changes {
        let accounts = self.accounts.decide(decision);
        self.after_accounts(accounts)
    }

    pub fn unlink_account_from_cluster(&mut self, record: &str) -> Changes {
        let accounts = self.accounts.unlink_from_cluster(record);
        self.after_accounts(accounts)
    }

    pub fn upsert_contact(&mut self, record: &str, input: &ContactInput) -> Changes {
        if let Some(old) = self.employer_of.remove(record)
            && let Some(list) = self.staff.get_mut(&old)
        {
            list.retain(|c| &**c != record);
            if list.is_empty() {
                self.staff.remove(&old);
            }
        }
        if let Some(e) = input.employer.as_deref() {
            self.staff.entry(e.into()).or_default().push(record.into());
            self.employer_of.insert(record.into(), e.into());
        }
        let r = ContactRecord {
            employer_cluster: employer_cluster(&self.accounts, input),
            contact: input.clone(),
        };
        Changes {
            accounts: Vec::new(),
            contacts: self.contacts.upsert(record, &r),
        }
    }

    pub fn remove_contact(&mut self, record: &str) -> Changes {
        if let Some(old) = self.employer_of.remove(record)
            && let Some(list) = self.staff.get_mut(&old)
        {
            list.retain(|c| &**c != record);
            if list.is_empty() {
                self.staff.remove(&old);
            }
        }
        Changes {
            accounts: Vec::new(),
            contacts: self.contacts.remove(record),
        }
    }

    pub fn decide_contacts(&mut self, decision: StewardDecision) -> Changes {
        Changes {
            accounts: Vec::new(),
            contacts: self.contacts.decide(decision),
        }
    }

    /// Contacts of accounts whose cluster changed get their new employer cluster.
    fn after_accounts(&mut self, accounts: Vec<ClusterChange>) -> Changes {
        let mut contacts = Vec::new();
        for change in &accounts {
            let Some(staff) = self.staff.get(change.record.as_str()) else {
                continue;
            };
            let employer = change
                .after
                .clone()
                .unwrap_or_else(|| change.record.clone());
            let employer_key = key(KeyKind::Employer, &employer);
            for c in staff.clone() {
                contacts.extend(
                    self.contacts
                        .modify(&c, |f| f.employer = Some(employer_key)),
                );
            }
        }
        Changes { accounts, contacts }
    }
}

/// The employer's cluster key, or the employer's record key while the account is unknown
/// (a singleton's cluster key is its record key, so both agree once it arrives alone).
fn employer_cluster(accounts: &Engine<AccountMatcher>, c: &ContactInput) -> Option<String> {
    let e = c.employer.as_deref()?;
    Some(accounts.cluster_of(e).unwrap_or(e).to_owned())
}
