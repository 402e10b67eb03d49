//! What the sync links are doing, for `partner status`: per partner the link state and its
//! last errors, the cursor each partner acknowledged of ours (owner side), what partners
//! report they hold in quarantine, and the clock note of this node. Shared state only; the
//! links themselves run in `links`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

/// The state of one link, as `partner status` and the `link_state` metric name it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LinkState {
    /// No link runs (not started yet, or nothing reported).
    #[default]
    Idle,
    /// Dialing the partner and saying Hello.
    Connecting,
    /// The session is up: the stream is followed, edits are pushed.
    Connected,
    /// The last session failed; the link waits before it dials again.
    BackingOff,
    /// The partner speaks another protocol version; retried slowly.
    Incompatible,
    /// Another process sharing the database runs this link (it holds the lease).
    Standby,
}

impl LinkState {
    pub const ALL: [LinkState; 6] = [
        LinkState::Idle,
        LinkState::Connecting,
        LinkState::Connected,
        LinkState::BackingOff,
        LinkState::Incompatible,
        LinkState::Standby,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Idle => "idle",
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::BackingOff => "backing-off",
            LinkState::Incompatible => "incompatible",
            LinkState::Standby => "standby",
        }
    }

    pub fn parse(s: &str) -> Option<LinkState> {
        LinkState::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

impl std::fmt::Display for LinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one link is doing, for `partner status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkStatus {
    pub state: LinkState,
    pub endpoint: String,
    pub last_error: String,
    pub last_error_ms: i64,
    /// The last failed Push or anti-entropy round while the session stays up (cleared by
    /// the next one that works): they never end the session, which keeps the stream going.
    pub push_error: String,
    pub repair_error: String,
}

/// The links of this node.
pub struct Links {
    status: Mutex<HashMap<String, LinkStatus>>,
    /// Owner side: the cursor each partner last acknowledged, and when it was last written.
    acks: Mutex<HashMap<String, (i64, std::time::Instant)>>,
    /// Bumped on every local edit of a replica: outbox pushers wake up.
    pub(crate) outbox: watch::Sender<u64>,
    /// Owner side: what each partner reports it keeps in quarantine of our stream.
    partner_quarantine: Mutex<HashMap<String, (i64, String)>>,
    /// What the node did about its clock at start (for `partner status`).
    clock_note: Mutex<String>,
}

impl Default for Links {
    fn default() -> Self {
        Links {
            status: Mutex::new(HashMap::new()),
            acks: Mutex::new(HashMap::new()),
            outbox: watch::channel(0).0,
            partner_quarantine: Mutex::new(HashMap::new()),
            clock_note: Mutex::new(String::new()),
        }
    }
}

impl Links {
    pub fn outbox_changed(&self) {
        self.outbox.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn set(&self, org: &str, f: impl FnOnce(&mut LinkStatus)) {
        let mut map = self.status.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(org.to_string()).or_default());
    }

    pub(crate) fn remove(&self, org: &str) {
        let mut map = self.status.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(org);
    }

    /// Notes a partner's acknowledged cursor; true when it is time to write it down.
    pub fn note_ack(&self, org: &str, cursor: i64) -> bool {
        let mut acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        match acks.get_mut(org) {
            Some((c, written)) => {
                *c = cursor;
                if now.duration_since(*written) >= Duration::from_secs(1) {
                    *written = now;
                    return true;
                }
                false
            }
            None => {
                acks.insert(org.to_string(), (cursor, now));
                true
            }
        }
    }

    /// Owner side: a partner's report of the items of ours it keeps in quarantine.
    pub fn note_partner_quarantine(&self, org: &str, total: i64, note: String) {
        let mut map = self
            .partner_quarantine
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.insert(org.to_string(), (total, note));
    }

    pub fn partner_quarantine(&self) -> HashMap<String, (i64, String)> {
        self.partner_quarantine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_clock_note(&self, note: String) {
        *self.clock_note.lock().unwrap_or_else(|p| p.into_inner()) = note;
    }

    pub fn clock_note(&self) -> String {
        self.clock_note
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The latest acknowledged cursor per partner (owner side).
    pub fn acked(&self) -> HashMap<String, i64> {
        self.acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(org, (c, _))| (org.clone(), *c))
            .collect()
    }

    pub fn snapshot(&self) -> HashMap<String, LinkStatus> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_states_keep_their_names() {
        let names: Vec<&str> = LinkState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "idle",
                "connecting",
                "connected",
                "backing-off",
                "incompatible",
                "standby"
            ]
        );
        for s in LinkState::ALL {
            assert_eq!(LinkState::parse(s.as_str()), Some(s));
            assert_eq!(s.to_string(), s.as_str());
        }
        assert_eq!(LinkState::parse("backing_off"), None);
        assert_eq!(LinkStatus::default().state, LinkState::Idle);
    }
}
