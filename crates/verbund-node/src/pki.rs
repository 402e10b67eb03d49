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

/// The DNS names and IP addresses in a certificate's SAN (to renew it with the same names).
pub fn dns_and_ips(der: &[u8]) -> Result<(Vec<String>, Vec<IpAddr>)> {
    use x509_parser::prelude::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).context("unparseable certificate")?;
    let (mut dns, mut ips) = (Vec::new(), Vec::new());
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())),
                    16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok((dns, ips))
}

/// The DER serial number of the first certificate in a PEM text.
pub fn serial_of(cert_pem: &str) -> Result<Vec<u8>> {
    let der = parse_certs(cert_pem)?.remove(0);
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).context("unparseable certificate")?;
    Ok(cert.raw_serial().to_vec())
}

/// Parses a serial given as hex (colons allowed).
pub fn parse_serial_hex(text: &str) -> Result<Vec<u8>> {
    let mut clean: String = text.trim().chars().filter(|c| *c != ':').collect();
    if clean.len() % 2 == 1 {
        // Tools print serials without a leading zero (`abc` is 0x0abc).
        clean.insert(0, '0');
    }
    let bytes = hex::decode(&clean).context("a serial number is hex, e.g. 1a:2b:3c")?;
    if bytes.is_empty() || bytes.len() > 20 {
        bail!("a serial number has 1 to 20 bytes");
    }
    Ok(bytes)
}

/// The CRL (DER) in a PEM text; refuses anything that is not exactly one well-formed CRL.
pub fn parse_crl(pem: &str) -> Result<rustls_pki_types::CertificateRevocationListDer<'static>> {
    use rustls_pki_types::CertificateRevocationListDer;
    let mut crls: Vec<_> = CertificateRevocationListDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .context("malformed PEM revocation list")?;
    if crls.len() != 1 {
        bail!("expected exactly one revocation list, found {}", crls.len());
    }
    let crl = crls.remove(0);
    x509_parser::parse_x509_crl(crl.as_ref())
        .map_err(|e| anyhow::anyhow!("malformed revocation list: {e}"))?;
    Ok(crl)
}

/// Serials already revoked by a CRL, with their revocation times, and its CRL number.
/// Revoked serials with their revocation times.
type RevokedEntries = Vec<(Vec<u8>, OffsetDateTime)>;

fn revoked_entries(crl_pem: &str) -> Result<(RevokedEntries, u64)> {
    let crl = parse_crl(crl_pem)?;
    let (_, parsed) = x509_parser::parse_x509_crl(crl.as_ref())
        .map_err(|e| anyhow::anyhow!("malformed revocation list: {e}"))?;
    let entries = parsed
        .iter_revoked_certificates()
        .map(|r| {
            (
                r.raw_serial().to_vec(),
                OffsetDateTime::from_unix_timestamp(r.revocation_date.timestamp())
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            )
        })
        .collect();
    let number = parsed
        .crl_number()
        .and_then(|n| n.to_u64_digits().first().copied())
        .unwrap_or(0);
    Ok((entries, number))
}

/// How long a CRL is valid before the CA must publish a new one.
pub const CRL_VALIDITY_DAYS: i64 = 30;

/// A new CRL signed by `ca`: the entries of `existing` (if any) plus `serials`. Returns the
/// PEM and whether anything new was revoked.
pub fn revoke(
    ca: &CertPair,
    existing: Option<&str>,
    serials: &[Vec<u8>],
) -> Result<(String, bool)> {
    let (mut entries, number) = match existing {
        Some(pem) => revoked_entries(pem)?,
        None => (Vec::new(), 0),
    };
    let now = OffsetDateTime::now_utc();
    let mut added = false;
    for s in serials {
        if !entries.iter().any(|(e, _)| e == s) {
            entries.push((s.clone(), now));
            added = true;
        }
    }
    let ca_key = KeyPair::from_pem(&ca.key_pem).context("CA key")?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).context("CA certificate")?;
    let params = rcgen::CertificateRevocationListParams {
        this_update: now - Duration::minutes(5),
        next_update: now + Duration::days(CRL_VALIDITY_DAYS),
        crl_number: SerialNumber::from(number + 1),
        issuing_distribution_point: None,
        revoked_certs: entries
            .into_iter()
            .map(|(serial, at)| rcgen::RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: at,
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    Ok((params.signed_by(&issuer)?.pem()?, added))
}

#[cfg(test)]
mod tests {

    #[test]
    fn serials_with_an_odd_number_of_digits_have_a_leading_zero() {
        assert_eq!(parse_serial_hex("abc").unwrap(), vec![0x0a, 0xbc]);
        assert_eq!(parse_serial_hex("1a:2b").unwrap(), vec![0x1a, 0x2b]);
        assert!(parse_serial_hex("xyz").is_err());
    }

    use super::*;
    use crate::identity::{IdentityError, principal_from_cert};

    #[test]
    fn revocation_lists_accumulate() {
        let ca = new_ca("acme").unwrap();
        let a = issue(&ca, "acme", PrincipalKind::User, "a", &[], &[], 30).unwrap();
        let b = issue(&ca, "acme", PrincipalKind::User, "b", &[], &[], 30).unwrap();
        let (first, added) = revoke(&ca, None, &[serial_of(&a.cert_pem).unwrap()]).unwrap();
        assert!(added);
        let (second, added) =
            revoke(&ca, Some(&first), &[serial_of(&b.cert_pem).unwrap()]).unwrap();
        assert!(added);
        let (entries, number) = revoked_entries(&second).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(number, 2);
        let (_, again) = revoke(&ca, Some(&second), &[serial_of(&a.cert_pem).unwrap()]).unwrap();
        assert!(!again, "revoking twice adds nothing");
        assert!(parse_crl("garbage").is_err());
        assert!(parse_crl(&ca.cert_pem).is_err());
        assert_eq!(parse_serial_hex("1a:2B").unwrap(), vec![0x1a, 0x2b]);
        assert!(parse_serial_hex("zz").is_err());
    }

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
