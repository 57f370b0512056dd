//! The ACME account and its HTTP client: HTTP/1.1 with TCP_NODELAY (instant-acme's default client
//! speaks HTTP/2 without it, stalling ~45 ms per request), trusting the web PKI plus every
//! certificate in `tls.acme.ca_bundle`.

use crate::AcmeError;
use bytes::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{Account, AccountCredentials, BodyWrapper, NewAccount};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use spinforge_state::config::AcmeConfig;
use std::sync::Arc;
use std::time::Duration;

/// How long one ACME request may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn http_client(acme: &AcmeConfig) -> Result<Box<dyn instant_acme::HttpClient>, AcmeError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(bundle) = &acme.ca_bundle {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(bundle)
            .and_then(|it| it.collect())
            .map_err(|e| {
                AcmeError::Invalid(format!("tls.acme.ca_bundle {}: {e}", bundle.display()))
            })?;
        for c in certs {
            roots.add(c).map_err(|e| {
                AcmeError::Invalid(format!("tls.acme.ca_bundle {}: {e}", bundle.display()))
            })?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| AcmeError::Invalid(format!("TLS client: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    let client: Client<_, BodyWrapper<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    Ok(Box::new(client))
}

/// Creates an account; returns it with its credentials as JSON (a secret).
pub(crate) async fn create(acme: &AcmeConfig) -> Result<(Account, String), AcmeError> {
    let contact: Vec<String> = acme.email.iter().map(|e| format!("mailto:{e}")).collect();
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, creds) = Account::builder_with_http(http_client(acme)?)
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            acme.directory.clone(),
            None,
        )
        .await?;
    let json = serde_json::to_string(&creds)
        .map_err(|e| AcmeError::Invalid(format!("account credentials: {e}")))?;
    Ok((account, json))
}

/// The account from stored credentials.
pub(crate) async fn restore(acme: &AcmeConfig, json: String) -> Result<Account, AcmeError> {
    let creds: AccountCredentials = serde_json::from_str(&json)
        .map_err(|e| AcmeError::Invalid(format!("stored ACME account is not valid: {e}")))?;
    Ok(Account::builder_with_http(http_client(acme)?)
        .from_credentials(creds)
        .await?)
}

/// Whether stored credentials belong to `directory` (a config moved from staging to production
/// needs a new account).
pub(crate) fn for_directory(json: &str, directory: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v.get("directory")?.as_str().map(|d| d == directory))
        .unwrap_or(false)
}
