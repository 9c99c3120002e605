//! rustls configurations from PEM files, for every unitgate listener and client.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Every certificate in a PEM file; an error names the file.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("{}: cannot read certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    Ok(certs)
}

/// A server config for a certificate chain and key, offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    server_config_with_client_ca(cert, key, None)
}

/// A private key from a PEM file; an error names the file.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{}: cannot read private key: {e}", path.display()))
}

/// The system's trust store (`SSL_CERT_FILE` and `SSL_CERT_DIR` stand for it when set, as for
/// OpenSSL); certificates that do not parse are skipped, as other TLS clients do. An error when
/// it holds no certificate at all.
pub fn system_roots() -> Result<rustls::RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(format!(
            "no certificate found in the system's trust store{}",
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({})", why.join("; "))
            }
        ));
    }
    Ok(roots)
}

/// The CA certificates of a PEM file as a trust store; an error names the file.
pub fn roots_from(ca_file: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(ca_file)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca_file.display()))?;
    }
    Ok(roots)
}

/// [`server_config`] that, with `client_ca`, demands of every client a certificate issued by
/// one of the CAs in that PEM file (mutual TLS).
pub fn server_config_with_client_ca(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = certificates(cert)?;
    let key = private_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(client_ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots_from(client_ca)?),
                provider,
            )
            .build()
            .map_err(|e| format!("{}: {e}", client_ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // One TLS 1.3 session ticket per handshake, not rustls's default of two: a client resumes
    // with the latest ticket it holds, and each connection brings it a fresh one. OpenSSL (and
    // so nginx) sends one after a resumed handshake too. Half the tickets to make, store in the
    // session cache, encrypt and send on every new connection; bench/tls.sh, a new connection
    // per request (docs/BENCHMARKS.md, "TLS and HTTP/2"): CPU and p50 unchanged within the
    // noise, RSS 1.7-1.9 MiB lower.
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}
