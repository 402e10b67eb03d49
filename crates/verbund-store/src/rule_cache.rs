//! The share rules, kept in memory by the embedded SQLite backend, where this process is the
//! only writer. Every look-up of what a partner reaches reads them (the sync stream for every
//! batch, a partner's Push, List and Watch of a foreign caller), and they change rarely: only
//! through the writer, which moves the generation on after committing a change of them.
//! A reader stores what it read only if the generation did not move while it read, so a
//! read from before a change can never stand in for the state after it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use verbund_core::access::ShareRule;

#[derive(Debug, Default)]
pub struct RuleCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    generation: u64,
    /// By organization (None: every rule), with the generation they were read in.
    rules: HashMap<Option<String>, (u64, Arc<Vec<ShareRule>>)>,
}

impl RuleCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| {
            let mut inner = poisoned.into_inner();
            inner.rules.clear();
            inner.generation += 1;
            inner
        })
    }

    /// The rules of `org` as last read, if no change of the rules was committed since; else
    /// None and the generation to pass to `store`.
    pub fn get(&self, org: Option<&str>) -> Result<Arc<Vec<ShareRule>>, u64> {
        let inner = self.lock();
        match inner.rules.get(&org.map(str::to_string)) {
            Some((generation, rules)) if *generation == inner.generation => Ok(rules.clone()),
            _ => Err(inner.generation),
        }
    }

    /// Keeps what a reader read in generation `generation`, unless a change committed since.
    pub fn store(&self, org: Option<&str>, generation: u64, rules: Arc<Vec<ShareRule>>) {
        let mut inner = self.lock();
        if inner.generation == generation {
            inner
                .rules
                .insert(org.map(str::to_string), (generation, rules));
        }
    }

    /// A change of the rules committed: whatever was read before it is stale.
    pub fn changed(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.rules.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;
    use verbund_core::access::RuleMatch;

    fn rule(org: &str) -> ShareRule {
        ShareRule {
            id: Uuid::now_v7(),
            org: org.into(),
            rule: RuleMatch::AccountTag("key".into()),
            profile: "full".into(),
            created_at_ms: 1,
            created_by: "admin".into(),
        }
    }

    #[test]
    fn a_read_from_before_a_change_is_not_kept() {
        let cache = RuleCache::default();
        let g = cache.get(Some("globex")).unwrap_err();
        cache.store(Some("globex"), g, Arc::new(vec![rule("globex")]));
        assert_eq!(cache.get(Some("globex")).unwrap().len(), 1);
        assert!(cache.get(None).is_err(), "kept per organization");
        // A reader starts, a change commits, the reader comes back with the old rules.
        let g = cache.get(Some("initech")).unwrap_err();
        cache.changed();
        cache.store(Some("initech"), g, Arc::new(vec![]));
        assert!(cache.get(Some("initech")).is_err());
        assert!(
            cache.get(Some("globex")).is_err(),
            "every organization's rules are stale"
        );
        let g = cache.get(Some("initech")).unwrap_err();
        cache.store(Some("initech"), g, Arc::new(vec![rule("initech")]));
        assert_eq!(cache.get(Some("initech")).unwrap()[0].org, "initech");
    }
}
