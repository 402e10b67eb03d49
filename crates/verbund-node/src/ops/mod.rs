//! Operations: the plain-HTTP endpoint (`http`) that serves the metrics (collected at scrape
//! time by `collect`; the series themselves live in `crate::metrics`) with the health probes,
//! and systemd readiness notification.
//!
//! The endpoint is separate from the mutual-TLS gRPC listener and asks for no certificate:
//! load balancers, kubelets and Prometheus reach it without a Verbund identity. It shows no
//! record data, only counts, states and certificate expiry; keep it on loopback or a private
//! network all the same (`[ops] listen`).

pub mod collect;
pub mod http;

pub use http::OpsEndpoint;

/// Serial (hex) and expiry (Unix seconds) of every certificate in `pem`; unreadable ones are
/// left out (they are refused elsewhere, with a reason).
pub fn certificate_expiries(pem: &str) -> Vec<(String, i64)> {
    let Ok(ders) = crate::pki::parse_certs(pem) else {
        return Vec::new();
    };
    ders.iter()
        .filter_map(|der| {
            let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
            Some((
                hex::encode(cert.raw_serial()),
                cert.validity().not_after.timestamp(),
            ))
        })
        .collect()
}

/// Why the node's certificate in `pem` is not usable at `now_s` (Unix seconds), if it is not.
pub fn certificate_problem(pem: &str, now_s: i64) -> Option<String> {
    let ders = match crate::pki::parse_certs(pem) {
        Ok(d) => d,
        Err(e) => return Some(format!("unreadable: {e:#}")),
    };
    let Some(der) = ders.first() else {
        return Some("no certificate in the file".into());
    };
    let cert = match x509_parser::parse_x509_certificate(der) {
        Ok((_, c)) => c,
        Err(e) => return Some(format!("unreadable: {e}")),
    };
    let validity = cert.validity();
    if now_s < validity.not_before.timestamp() {
        return Some(format!("not valid before {}", validity.not_before));
    }
    if now_s > validity.not_after.timestamp() {
        return Some(format!("expired on {}", validity.not_after));
    }
    None
}

/// Tells systemd (`Type=notify`) something, e.g. `READY=1` or `STOPPING=1`, through the
/// datagram socket in `$NOTIFY_SOCKET`. Without that variable no supervisor listens: Ok(false).
pub fn notify_systemd(state: &str) -> std::io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(target) => notify_socket(&target, state).map(|()| true),
        None => Ok(false),
    }
}

/// Sends `state` to the notify socket `target`: a path, or `@name` in Linux's abstract
/// namespace.
pub fn notify_socket(target: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::net::UnixDatagram;
        let socket = UnixDatagram::unbound()?;
        if let Some(name) = target.as_encoded_bytes().strip_prefix(b"@") {
            #[cfg(target_os = "linux")]
            {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)?;
                return Ok(());
            }
            #[cfg(not(target_os = "linux"))]
            {
                let _ = name;
                return Err(std::io::Error::other(
                    "abstract NOTIFY_SOCKET addresses exist only on Linux",
                ));
            }
        }
        socket.send_to(state.as_bytes(), std::path::Path::new(target))?;
        Ok(())
    }
    #[cfg(not(unix))]
    {
        let _ = (target, state);
        Err(std::io::Error::other("NOTIFY_SOCKET needs Unix sockets"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_checks_read_the_validity() {
        let ca = crate::pki::new_ca("acme").unwrap();
        let expiries = certificate_expiries(&ca.cert_pem);
        assert_eq!(expiries.len(), 1);
        let not_after = expiries[0].1;
        let now = crate::state::now_ms() / 1000;
        assert!(not_after > now);
        assert_eq!(certificate_problem(&ca.cert_pem, now), None);
        let late = certificate_problem(&ca.cert_pem, not_after + 1).unwrap();
        assert!(late.starts_with("expired on"), "{late}");
        let early = certificate_problem(&ca.cert_pem, 0).unwrap();
        assert!(early.starts_with("not valid before"), "{early}");
        assert!(certificate_problem("garbage", now).is_some());
        assert!(certificate_expiries("garbage").is_empty());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn readiness_reaches_a_notify_socket_by_path_and_by_abstract_name() {
        use std::os::unix::net::UnixDatagram;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        notify_socket(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("verbund-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abstract_listener = UnixDatagram::bind_addr(&addr).unwrap();
        notify_socket(std::ffi::OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let n = abstract_listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");

        let missing = dir.path().join("nobody");
        assert!(notify_socket(missing.as_os_str(), "READY=1").is_err());
    }
}
