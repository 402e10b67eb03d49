//! `verbund health`: asks a node's operations endpoint whether it is alive (`/healthz`) or
//! ready (`/readyz`). For container HEALTHCHECKs and exec probes, where no HTTP client is
//! installed; plain HTTP/1.1 over std's TcpStream (the endpoint needs no certificate).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use verbund_node::config::NodeConfig;

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// The node's config: the ops address comes from its [ops] section.
    #[arg(long, short = 'c', env = "VERBUND_CONFIG")]
    config: Option<PathBuf>,
    /// host:port of the ops endpoint (instead of the config's).
    #[arg(long)]
    ops: Option<String>,
    /// Ask whether the node is ready to serve (/readyz) instead of alive (/healthz).
    #[arg(long)]
    ready: bool,
}

const TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(args: HealthArgs) -> Result<()> {
    let addr = ops_address(&args)?;
    let path = if args.ready { "/readyz" } else { "/healthz" };
    let (status, body) = get(addr, path).with_context(|| format!("asking http://{addr}{path}"))?;
    print!("{body}");
    if status != 200 {
        bail!("http://{addr}{path} answered {status}");
    }
    Ok(())
}

fn ops_address(args: &HealthArgs) -> Result<SocketAddr> {
    if let Some(ops) = &args.ops {
        return ops
            .to_socket_addrs()
            .with_context(|| format!("--ops {ops}"))?
            .next()
            .with_context(|| format!("--ops {ops} resolves to no address"));
    }
    let Some(config) = &args.config else {
        bail!("pass --config <node.toml> or --ops <host:port>");
    };
    let cfg = NodeConfig::load(config)?;
    let Some(mut addr) = cfg.ops_listen() else {
        bail!(
            "the ops endpoint is disabled in {} ([ops] enabled = false)",
            config.display()
        );
    };
    if addr.port() == 0 {
        bail!(
            "the ops port in {} is chosen at start (0): pass --ops with the address the node printed",
            config.display()
        );
    }
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(addr)
}

/// GET `path`: the status code and the body.
fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("not an HTTP answer")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status line")?;
    Ok((status, body.to_string()))
}
