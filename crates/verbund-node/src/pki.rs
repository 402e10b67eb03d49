//! Certificates of an organization: its CA, node server certificates and client certificates.

use std::net::IpAddr;

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use crate::identity::{PrincipalKind, is_valid_name};

/// A certificate and its private key, PEM encoded.
#[derive(Clone, Debug)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

pub const CA_VALIDITY_DAYS: i64 = 3650;
pub const LEAF_VALIDITY_DAYS: i64 = 397;

fn random_serial() -> SerialNumber {
    let mut bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and without a leading zero byte
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    // Back-date a little so a peer whose clock runs slightly behind accepts the certificate.
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(days);
}

/// A new self-signed CA for `org`.
pub fn new_ca(org: &str) -> Result<CertPair> {
    if !verbund_core::schema::is_valid_org_id(org) {
        bail!(
            "invalid organization id {org:?}: use lowercase letters, digits, '-' and '.', 2-63 characters, starting with a letter"
        );
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("Verbund CA {org}"));
    dn.push(DnType::OrganizationName, org);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    validity(&mut params, CA_VALIDITY_DAYS);
    let cert = params.self_signed(&key)?;
    Ok(CertPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues an end-entity certificate for `verbund://<org>/<kind>/<name>`. Node certificates
/// also serve TLS (server auth, with the given DNS names and IP addresses) and dial partners.
pub fn issue(
    ca: &CertPair,
    org: &str,
    kind: PrincipalKind,
    name: &str,
    dns_names: &[String],
    ips: &[IpAddr],
    days: i64,
) -> Result<CertPair> {
    if !is_valid_name(name) {
        bail!(
            "invalid {} name {name:?}: use 1-64 characters of a-z 0-9 . _ -",
            kind.as_str()
        );
    }
    let ca_key = KeyPair::from_pem(&ca.key_pem).context("CA key")?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).context("CA certificate")?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("{name} ({} of {org})", kind.as_str()),
    );
    dn.push(DnType::OrganizationName, org);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match kind {
        PrincipalKind::Node => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        PrincipalKind::User => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    let mut sans = vec![SanType::URI(
        format!("verbund://{org}/{}/{name}", kind.as_str()).try_into()?,
    )];
    for d in dns_names {
        sans.push(SanType::DnsName(d.clone().try_into()?));
    }
    for ip in ips {
        sans.push(SanType::IpAddress(*ip));
    }
    params.subject_alt_names = sans;
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// All certificates in a PEM text.
pub fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .context("malformed PEM certificate")?;
    if certs.is_empty() {
        bail!("no certificate found in PEM");
    }
    Ok(certs)
}

pub fn parse_key(pem: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).context("malformed PEM private key")
}

/// SHA-256 of the DER certificate, as lowercase hex: what operators compare out of band.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{IdentityError, principal_from_cert};

    #[test]
    fn issued_certs_carry_the_principal() {
        let ca = new_ca("acme").unwrap();
        let user = issue(&ca, "acme", PrincipalKind::User, "anna", &[], &[], 30).unwrap();
        let der = parse_certs(&user.cert_pem).unwrap().remove(0);
        let p = principal_from_cert(&der, "acme").unwrap();
        assert_eq!(p.uri(), "verbund://acme/user/anna");
        assert!(matches!(
            principal_from_cert(&der, "globex"),
            Err(IdentityError::OrgMismatch { .. })
        ));
        let ca_der = parse_certs(&ca.cert_pem).unwrap().remove(0);
        assert_eq!(
            principal_from_cert(&ca_der, "acme"),
            Err(IdentityError::IsCa)
        );
        assert_eq!(fingerprint(&ca_der).len(), 64);
        assert!(issue(&ca, "acme", PrincipalKind::User, "Bad Name", &[], &[], 30).is_err());
        assert!(new_ca("Not Valid").is_err());
    }
}
