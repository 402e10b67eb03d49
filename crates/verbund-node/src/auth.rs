//! The one authorization function every handler passes through.
//!
//! Today: members of the node's own organization may do everything; any other organization
//! sees nothing (reads of a record are NOT_FOUND, lists are empty) and may write nothing.
//! Later layers (partner shares, casbin policy) extend `authorize`, never the handlers.

use tonic::{Request, Status};
use verbund_core::RecordKind;

use crate::identity::Principal;
use crate::tls::ConnInfo;

/// What a caller wants to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Read,
    Create,
    Update,
    Delete,
    /// List, search and watch: reads of many records.
    Enumerate,
    /// Node administration (partners, certificates): own organization only.
    Administer,
}

impl Action {
    /// Actions a caller who may not do them is refused outright (PERMISSION_DENIED) rather
    /// than shown nothing.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Action::Create | Action::Update | Action::Delete | Action::Administer
        )
    }
}

/// Which records a permitted call may touch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every record of the kind.
    All,
    /// None: reads see nothing, as if the records did not exist.
    Nothing,
}

/// The decision for `principal` doing `action` on records of `kind` on the node of `node_org`.
/// Writes that are not allowed fail with PERMISSION_DENIED; reads are never refused outright,
/// they get a scope that hides what the caller may not see (so a foreign caller cannot tell
/// an unshared record from a missing one).
pub fn authorize(
    principal: &Principal,
    node_org: &str,
    action: Action,
    kind: Option<RecordKind>,
) -> Result<Scope, Status> {
    if principal.org == node_org {
        return Ok(Scope::All);
    }
    if action.is_write() {
        let what = kind.map_or("records", |k| k.as_str());
        return Err(Status::permission_denied(
            format!("{principal} may not {action:?} {what} on this node").to_lowercase(),
        ));
    }
    Ok(Scope::Nothing)
}

/// The principal of a request, established at the TLS handshake.
pub fn principal<T>(req: &Request<T>) -> Result<Principal, Status> {
    req.extensions()
        .get::<ConnInfo>()
        .map(|c| c.principal.clone())
        .ok_or_else(|| Status::unauthenticated("no verified client certificate on this connection"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::PrincipalKind;

    fn p(org: &str) -> Principal {
        Principal {
            org: org.into(),
            kind: PrincipalKind::User,
            name: "anna".into(),
        }
    }

    #[test]
    fn own_org_may_do_everything_foreign_nothing() {
        for a in [
            Action::Read,
            Action::Create,
            Action::Update,
            Action::Delete,
            Action::Enumerate,
            Action::Administer,
        ] {
            assert_eq!(
                authorize(&p("acme"), "acme", a, Some(RecordKind::Account)).unwrap(),
                Scope::All
            );
            let foreign = authorize(&p("globex"), "acme", a, Some(RecordKind::Account));
            if a.is_write() {
                assert_eq!(foreign.unwrap_err().code(), tonic::Code::PermissionDenied);
            } else {
                assert_eq!(foreign.unwrap(), Scope::Nothing);
            }
        }
    }
}
