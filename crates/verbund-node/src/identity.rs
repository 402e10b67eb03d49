//! Who is calling: the principal derived from a verified client certificate.

use std::fmt;
use x509_parser::prelude::*;

/// User or node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PrincipalKind {
    User,
    Node,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::Node => "node",
        }
    }
}

/// The identity of a caller: organization (from the trust anchor that verified the chain), kind
/// and name (from the certificate's `verbund://<org>/<kind>/<name>` URI SAN).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal {
    pub org: String,
    pub kind: PrincipalKind,
    pub name: String,
}

impl Principal {
    pub fn uri(&self) -> String {
        format!(
            "verbund://{}/{}/{}",
            self.org,
            self.kind.as_str(),
            self.name
        )
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// A user or node name: 1–64 characters of a-z 0-9 . _ -, starting with a letter or digit.
pub fn is_valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("client certificate cannot be parsed")]
    Unparseable,
    #[error("client certificate is a CA certificate and cannot identify a caller")]
    IsCa,
    #[error("client certificate must carry exactly one verbund:// URI SAN, found {0}")]
    UriSanCount(usize),
    #[error("malformed principal URI {0:?} (expected verbund://<org>/(user|node)/<name>)")]
    MalformedUri(String),
    #[error(
        "certificate claims organization {claimed:?} but was verified by the trust anchor of {verified:?}"
    )]
    OrgMismatch { claimed: String, verified: String },
    #[error("no client certificate presented")]
    Missing,
    #[error("organization {0:?} is not ours and not a registered partner")]
    UnknownOrg(String),
}

/// Parses `verbund://<org>/(user|node)/<name>`.
pub fn parse_principal_uri(uri: &str) -> Result<Principal, IdentityError> {
    let bad = || IdentityError::MalformedUri(uri.to_string());
    let rest = uri.strip_prefix("verbund://").ok_or_else(bad)?;
    let mut parts = rest.split('/');
    let (Some(org), Some(kind), Some(name), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let kind = match kind {
        "user" => PrincipalKind::User,
        "node" => PrincipalKind::Node,
        _ => return Err(bad()),
    };
    if !verbund_core::schema::is_valid_org_id(org) || !is_valid_name(name) {
        return Err(bad());
    }
    Ok(Principal {
        org: org.to_string(),
        kind,
        name: name.to_string(),
    })
}

/// The principal an end-entity certificate (DER) claims, before anyone vouched for it: it
/// must not be a CA and must carry exactly one `verbund://` URI SAN. The verifier then checks
/// the chain against exactly the trust anchor of the claimed organization.
pub fn claimed_principal(der: &[u8]) -> Result<Principal, IdentityError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Unparseable)?;
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => return Err(IdentityError::IsCa),
        Err(_) => return Err(IdentityError::Unparseable),
        _ => {}
    }
    let mut uris = Vec::new();
    match cert.subject_alternative_name() {
        Ok(Some(san)) => {
            for name in &san.value.general_names {
                if let GeneralName::URI(u) = name {
                    uris.push(u.to_string());
                }
            }
        }
        Ok(None) => {}
        Err(_) => return Err(IdentityError::Unparseable),
    }
    let verbund_uris: Vec<&String> = uris.iter().filter(|u| u.starts_with("verbund:")).collect();
    match verbund_uris.as_slice() {
        [uri] => parse_principal_uri(uri),
        other => Err(IdentityError::UriSanCount(other.len())),
    }
}

/// Derives the principal from an end-entity certificate that `verified_org`'s trust anchor has
/// verified: an anchor can only vouch for identities of its own organization.
pub fn principal_from_cert(der: &[u8], verified_org: &str) -> Result<Principal, IdentityError> {
    let p = claimed_principal(der)?;
    if p.org != verified_org {
        return Err(IdentityError::OrgMismatch {
            claimed: p.org,
            verified: verified_org.to_string(),
        });
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        let p = parse_principal_uri("verbund://acme/user/anna.weber").unwrap();
        assert_eq!(
            (p.org.as_str(), p.kind, p.name.as_str()),
            ("acme", PrincipalKind::User, "anna.weber")
        );
        assert_eq!(p.uri(), "verbund://acme/user/anna.weber");
        for bad in [
            "verbund://acme/admin/x",
            "verbund://Acme/user/x",
            "verbund://acme/user/",
            "verbund://acme/user/x/y",
            "https://acme/user/x",
            "verbund://acme/user/X",
        ] {
            assert!(parse_principal_uri(bad).is_err(), "{bad}");
        }
    }
}
