//! One order for one domain: challenge published in the store (edges answer it), the CA told to
//! validate, the order finalized with a fresh key, the chain downloaded. The challenge is removed
//! from the store whatever the outcome.

use crate::AcmeError;
use instant_acme::{Account, AuthorizationStatus, Identifier, NewOrder, OrderStatus, RetryPolicy};
use spinforge_state::Store;
use spinforge_state::records::{Challenge, ChallengeType};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A published challenge expires from the store after this, even if we die before removing it.
const CHALLENGE_TTL: Duration = Duration::from_secs(600);
/// How long we give edges to learn a challenge before the CA is told to look.
const PROPAGATION: Duration = Duration::from_secs(3);

/// Returns (chain PEM, key PEM).
pub(crate) async fn issue(
    account: &Account,
    store: &Store,
    domain: &str,
    kind: ChallengeType,
    http_check: Option<SocketAddr>,
) -> Result<(String, String), AcmeError> {
    let mut tokens = Vec::new();
    let result = run(account, store, domain, kind, http_check, &mut tokens).await;
    for t in tokens {
        if let Err(e) = store.delete_challenge(&t).await {
            tracing::debug!(%domain, error = %e, "cannot remove a challenge; it expires on its own");
        }
    }
    result
}

async fn run(
    account: &Account,
    store: &Store,
    domain: &str,
    kind: ChallengeType,
    http_check: Option<SocketAddr>,
    tokens: &mut Vec<String>,
) -> Result<(String, String), AcmeError> {
    let ids = [Identifier::Dns(domain.to_string())];
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
    let acme_kind = match kind {
        ChallengeType::Http01 => instant_acme::ChallengeType::Http01,
        ChallengeType::TlsAlpn01 => instant_acme::ChallengeType::TlsAlpn01,
    };
    {
        let mut authzs = order.authorizations();
        while let Some(authz) = authzs.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                // Reused from an earlier validation (Pebble does this half the time).
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::Invalid(format!(
                        "the CA's authorization for {domain} is {other:?}"
                    )));
                }
            }
            let mut challenge = authz.challenge(acme_kind.clone()).ok_or_else(|| {
                AcmeError::Invalid(format!("the CA offers no {acme_kind:?} challenge"))
            })?;
            let key_authorization = challenge.key_authorization().as_str().to_string();
            let c = Challenge {
                token: challenge.token.clone(),
                domain: domain.to_string(),
                kind,
                key_authorization,
            };
            store.put_challenge(&c, CHALLENGE_TTL).await?;
            tokens.push(c.token.clone());
            wait_until_answered(&c, http_check).await;
            challenge.set_ready().await?;
        }
    }
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(100))
        .backoff(1.5)
        .timeout(Duration::from_secs(60));
    let status = order.poll_ready(&retry).await?;
    if status != OrderStatus::Ready {
        return Err(AcmeError::Invalid(format!(
            "the CA could not validate {domain} (order {status:?}); is it reachable on the challenge port?"
        )));
    }
    let key_pem = order.finalize().await?;
    let chain_pem = order.poll_certificate(&retry).await?;
    Ok((chain_pem, key_pem))
}

/// For HTTP-01, asks the local edge for the token until it answers it (at most [`PROPAGATION`]);
/// for TLS-ALPN-01, or an edge we cannot reach, waits a short moment.
async fn wait_until_answered(c: &Challenge, http_check: Option<SocketAddr>) {
    let deadline = tokio::time::Instant::now() + PROPAGATION;
    if let (ChallengeType::Http01, Some(addr)) = (c.kind, http_check) {
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(1), ask(addr, c)).await {
                Ok(Ok(true)) => return,
                Ok(Err(_)) => break, // nothing listens there: not our edge to check
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
}

async fn ask(addr: SocketAddr, c: &Challenge) -> std::io::Result<bool> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "GET /.well-known/acme-challenge/{} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        c.token, c.domain
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    (&mut s).take(16 * 1024).read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    Ok(text.starts_with("HTTP/1.1 200") && text.ends_with(&c.key_authorization))
}
