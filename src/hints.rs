//! Start-up failures told as cause and fix: a port that is taken or needs a capability, an
//! address the machine does not have, Redis not answering.

use spinforge_state::config::{Config, RedisUrl};
use std::io::ErrorKind;
use std::net::SocketAddr;

/// The first I/O error in `error`'s chain.
fn io_cause<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e std::io::Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        next = e.source();
    }
    None
}

/// Why `addr` (the config's `key`) could not be listened on, and what to do; `None` when the
/// error is not one this knows.
pub fn listen(
    error: &(dyn std::error::Error + 'static),
    addr: SocketAddr,
    key: &str,
    config: &Config,
) -> Option<String> {
    let io = io_cause(error)?;
    let port = addr.port();
    let file = config.file.display();
    let fix = match io.kind() {
        ErrorKind::AddrInUse => format!(
            "another process is listening on port {port}. Find it with `ss -ltnp 'sport = :{port}'` \
             and stop it, or give {key} another port in {file}"
        ),
        ErrorKind::PermissionDenied if port < 1024 => {
            let exe = std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "/usr/bin/spinforge".into());
            format!(
                "ports below 1024 need root or the CAP_NET_BIND_SERVICE capability. Grant it to \
                 the binary: `sudo setcap cap_net_bind_service=+ep {exe}`; under systemd, \
                 `AmbientCapabilities=CAP_NET_BIND_SERVICE` in the unit (conf/spinforge.service \
                 has it); or give {key} a port from 1024 up in {file} (e.g. {}:8080)",
                addr.ip()
            )
        }
        ErrorKind::AddrNotAvailable => format!(
            "{} is not an address of this machine. Give {key} one it has in {file} (0.0.0.0 for \
             all of them, 127.0.0.1 for this machine only)",
            addr.ip()
        ),
        _ => return None,
    };
    Some(format!("cannot listen on {addr} ({key}): {io}: {fix}"))
}

/// What to do when Redis does not answer.
pub fn redis(url: &RedisUrl, config: &Config, role: &str) -> String {
    let port = url
        .expose()
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty())
        .unwrap_or("6379");
    let embedded = if role == "up" {
        ", or remove state.redis to keep state in memory (one machine, `spinforge up` only)"
    } else {
        ""
    };
    format!(
        "Redis at {url} (state.redis in {file}) does not answer: start it (`sudo systemctl start \
         redis-server`, or `redis-server --port {port}`), or correct state.redis{embedded}",
        file = config.file.display(),
    )
}

/// Connects to `url`'s host and port once, quickly: whether Redis is there at all, so that the
/// hint comes at once rather than after the whole wait.
pub async fn redis_refuses(url: &RedisUrl) -> bool {
    let Some(rest) = url.expose().split_once("://").map(|(_, r)| r) else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let target = if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:6379")
    };
    let connect = tokio::net::TcpStream::connect(target);
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(2), connect).await,
        Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused
    )
}
