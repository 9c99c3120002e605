//! Making connections to upstreams and to other regions' gateways: TCP, then TLS where the
//! table says so (a pool's or a region's `gateways`' `tls`).
//!
//! One small API for every client the gateway has: a [`Connector`] per pool (built when a table
//! is applied, from files read then), whose [`Connector::connect`] hands back a [`Stream`] that
//! is plain TCP or TLS and reads and writes the same either way. HTTP is spoken over it by
//! whoever asked; nothing here knows HTTP.
//!
//! rustls client configs are built once per distinct content of their files ([`TlsConfigs`]),
//! so connections to every pool that trusts the same CA share one session cache, and a table
//! swap that changes nothing about TLS keeps it: reconnecting to a known server resumes its
//! session (TLS 1.3 tickets or 1.2 session ids, rustls's in-memory store) instead of doing a
//! full handshake.

use std::collections::HashMap;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use control_api::throttle::LogThrottle;
use fnv::FnvHashMap;
use router_rules::{CompiledTable, UpstreamTls};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A connection to an endpoint: plain TCP, or TLS over TCP.
pub enum Stream {
    /// Plain text.
    Plain(TcpStream),
    /// TLS, handshake done.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref().0,
        }
    }

    /// Whether this is a TLS connection.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// For TLS: whether the handshake resumed an earlier session (`None` for plain text).
    pub fn resumed(&self) -> Option<bool> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(tls) => Some(matches!(
                tls.get_ref().1.handshake_kind(),
                Some(rustls::HandshakeKind::Resumed)
            )),
        }
    }

    /// For TLS: the protocol agreed by ALPN (`http/1.1`, or `None` when the server chose none).
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(tls) => tls.get_ref().1.alpn_protocol(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(tcp) => tcp.is_write_vectored(),
            Stream::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The protocol a connection is made for, as offered by ALPN over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alpn {
    Http1,
    H2,
}

impl Alpn {
    /// The reason for a handshake whose endpoint did not agree to this protocol.
    fn refused(self, detail: &str) -> String {
        let (name, protocol) = match self {
            Alpn::Http1 => ("HTTP/1.1", "http1"),
            Alpn::H2 => ("HTTP/2", "h2"),
        };
        format!(
            "the endpoint did not agree to {name} by ALPN{detail}; does it speak it (the pool's protocol says {protocol})?"
        )
    }
}

/// Whether a handshake failed on the endpoint's `no_application_protocol` alert: it speaks
/// none of the protocols the gateway offered.
fn no_application_protocol(error: &std::io::Error) -> bool {
    matches!(
        error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::NoApplicationProtocol
        ))
    )
}

/// Why no connection could be had. Either way nothing was sent, so the request may go to
/// another endpoint as it is; the kinds differ in what they say about the endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// No TCP connection: refused, unreachable, timed out, or the name did not resolve.
    #[error("{0}")]
    Unreachable(String),
    /// Connected, but the TLS handshake failed: the endpoint's certificate was refused (not
    /// trusted, not valid for the name, expired), the endpoint refused the gateway (e.g. it
    /// wants a client certificate), or it does not speak TLS. The message names the endpoint
    /// and rustls's reason: `upstream 127.0.0.1:9443: certificate not trusted: UnknownIssuer`.
    #[error("{0}")]
    Tls(String),
}

impl ConnectError {
    /// Whether the TCP connection was made and TLS failed on it.
    pub fn is_tls(&self) -> bool {
        matches!(self, ConnectError::Tls(_))
    }
}

/// How to reach a pool's endpoints: plain TCP, or TLS with one set of settings.
pub struct Connector {
    /// `upstream` or `gateway`: how errors name the endpoint.
    role: &'static str,
    /// Tells connectors that reach an endpoint differently apart (`Connector::key`).
    key: Box<str>,
    tls: Option<TlsClient>,
    /// TLS failures are logged at most once a second per connector, with a count.
    refused: LogThrottle,
}

struct TlsClient {
    settings: UpstreamTls,
    config: Arc<rustls::ClientConfig>,
    /// Offers `http/1.1` by ALPN.
    connector: TlsConnector,
    /// Offers `h2` by ALPN, with the same trust, identity and session cache.
    h2_connector: TlsConnector,
    /// The configured server name; `None`: each endpoint's host.
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("role", &self.role)
            .field("tls", &self.tls.as_ref().map(|t| &t.settings))
            .finish()
    }
}

impl Connector {
    /// Plain TCP to upstreams.
    pub fn plain() -> Self {
        Self::plain_for("upstream")
    }

    fn plain_for(role: &'static str) -> Self {
        Self {
            role,
            key: "plain".into(),
            tls: None,
            refused: LogThrottle::new(),
        }
    }

    /// TLS with `settings`, whose files `configs` reads (or has read, for the same content).
    /// An error names the file and what is wrong with it.
    pub fn tls(
        role: &'static str,
        settings: &UpstreamTls,
        configs: &TlsConfigs,
    ) -> Result<Self, TlsSetupError> {
        let server_name = match &settings.server_name {
            None => None,
            Some(name) => {
                Some(
                    ServerName::try_from(name.to_string()).map_err(|e| TlsSetupError {
                        field: "server_name",
                        message: format!("{name:?}: {e}"),
                    })?,
                )
            }
        };
        let config = configs.config(settings)?;
        // A clone shares the session store: a session resumes whichever protocol it was for.
        let mut h2_config = (*config).clone();
        h2_config.alpn_protocols = vec![b"h2".to_vec()];
        // The config stands for its files' content (`TlsConfigs` builds one per content).
        let key = format!(
            "tls/{:p}/{}",
            Arc::as_ptr(&config),
            settings.server_name.as_deref().unwrap_or("")
        );
        Ok(Self {
            role,
            key: key.into(),
            tls: Some(TlsClient {
                settings: settings.clone(),
                connector: TlsConnector::from(config.clone()),
                h2_connector: TlsConnector::from(Arc::new(h2_config)),
                config,
                server_name,
            }),
            refused: LogThrottle::new(),
        })
    }

    /// The same for connectors that reach an endpoint the same way (plain, or TLS with the same
    /// trust, identity and server name), different otherwise: connections made by one may
    /// serve another with the same key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether connections are TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether `other` connects exactly as this one does (same role, same TLS settings, same
    /// file content).
    pub fn same_as(&self, other: &Connector) -> bool {
        self.role == other.role
            && match (&self.tls, &other.tls) {
                (None, None) => true,
                (Some(a), Some(b)) => a.settings == b.settings && Arc::ptr_eq(&a.config, &b.config),
                _ => false,
            }
    }

    /// Connect to `endpoint` (`host:port`) for HTTP/1.1, the TLS handshake included (ALPN
    /// `http/1.1`), within `timeout`. TLS failures are also logged here (throttled), since
    /// they are a configuration problem an operator must see: the client only gets a `502`.
    pub async fn connect(&self, endpoint: &str, timeout: Duration) -> Result<Stream, ConnectError> {
        self.connect_for(endpoint, timeout, Alpn::Http1).await
    }

    /// The same for HTTP/2: over TLS, ALPN `h2`, which the endpoint must agree to (HTTP/2 over
    /// TLS is only ever negotiated so, RFC 9113 section 3.2); plain TCP is HTTP/2 with prior
    /// knowledge.
    pub async fn connect_h2(
        &self,
        endpoint: &str,
        timeout: Duration,
    ) -> Result<Stream, ConnectError> {
        self.connect_for(endpoint, timeout, Alpn::H2).await
    }

    async fn connect_for(
        &self,
        endpoint: &str,
        timeout: Duration,
        alpn: Alpn,
    ) -> Result<Stream, ConnectError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let tcp = match tokio::time::timeout_at(deadline, TcpStream::connect(endpoint)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(error)) => {
                return Err(ConnectError::Unreachable(format!(
                    "{} {endpoint}: {error}",
                    self.role
                )));
            }
            Err(_) => {
                return Err(ConnectError::Unreachable(format!(
                    "{} {endpoint}: connect timed out after {} ms",
                    self.role,
                    timeout.as_millis()
                )));
            }
        };
        let _ = tcp.set_nodelay(true);
        let _ = rustix::net::sockopt::set_socket_keepalive(&tcp, true);
        let Some(tls) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let name = match &tls.server_name {
            Some(name) => name.clone(),
            None => match host_name(endpoint) {
                Some(name) => name,
                None => {
                    return Err(self.tls_failed(
                        endpoint,
                        format!("{endpoint:?} has no host usable as a TLS server name; give tls.server_name"),
                    ));
                }
            },
        };
        let connector = match alpn {
            Alpn::Http1 => &tls.connector,
            Alpn::H2 => &tls.h2_connector,
        };
        match tokio::time::timeout_at(deadline, connector.connect(name, tcp)).await {
            Ok(Ok(stream)) => {
                let agreed = stream.get_ref().1.alpn_protocol();
                if alpn == Alpn::H2 && agreed != Some(b"h2") {
                    let chose = agreed.map_or_else(
                        || "none".to_owned(),
                        |p| String::from_utf8_lossy(p).into_owned(),
                    );
                    return Err(
                        self.tls_failed(endpoint, alpn.refused(&format!(" (it chose {chose})")))
                    );
                }
                Ok(Stream::Tls(Box::new(stream)))
            }
            Ok(Err(error)) if no_application_protocol(&error) => {
                Err(self.tls_failed(endpoint, alpn.refused("")))
            }
            Ok(Err(error)) => Err(self.tls_failed(endpoint, describe(&error))),
            Err(_) => Err(self.tls_failed(
                endpoint,
                format!("TLS handshake timed out after {} ms", timeout.as_millis()),
            )),
        }
    }

    fn tls_failed(&self, endpoint: &str, reason: String) -> ConnectError {
        let error = ConnectError::Tls(format!("{} {endpoint}: {reason}", self.role));
        if let Some(occurrences) = self.refused.occurred() {
            tracing::warn!(endpoint, occurrences, "{error}");
        }
        error
    }
}

/// The endpoint's host as a server name: an IP address or a DNS name.
fn host_name(endpoint: &str) -> Option<ServerName<'static>> {
    let (host, _port) = endpoint.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned()).ok()
}

/// rustls's reason for a failed handshake, in words an operator can act on.
fn describe(error: &std::io::Error) -> String {
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return format!("TLS handshake failed: {error}");
    };
    use rustls::CertificateError as C;
    match tls {
        rustls::Error::InvalidCertificate(why) => match why {
            C::UnknownIssuer | C::BadSignature | C::UnhandledCriticalExtension | C::BadEncoding => {
                format!("certificate not trusted: {why}")
            }
            _ => format!("certificate refused: {why}"),
        },
        rustls::Error::AlertReceived(alert) => {
            format!("the TLS handshake was refused by the endpoint: {alert:?}")
        }
        other => format!("TLS handshake failed: {other}"),
    }
}

/// A TLS setting the gateway cannot use: which field, and why (naming the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSetupError {
    /// The `tls` field at fault: `ca_file`, `client_cert`, `client_key`, `server_name`.
    pub field: &'static str,
    /// What is wrong, naming the file.
    pub message: String,
}

/// rustls client configs by the content they were built from (the CA file, or the system
/// store, and the client certificate and key), kept across table swaps: the same content gives
/// the same config, hence the same session cache. The files are read again at each table
/// applied, so a rotated certificate takes effect with the next table and a missing file is
/// found then.
#[derive(Default)]
pub struct TlsConfigs {
    built: Mutex<HashMap<[u8; 32], Arc<rustls::ClientConfig>>>,
    /// The system's trust store, loaded the first time a setting without `ca_file` needs it.
    system: Mutex<Option<Arc<rustls::RootCertStore>>>,
}

impl TlsConfigs {
    /// The config for `settings`: the one built before for the same content, or a new one.
    pub fn config(
        &self,
        settings: &UpstreamTls,
    ) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
        let read = |field: &'static str, path: &str| {
            std::fs::read(path).map_err(|e| TlsSetupError {
                field,
                message: format!("{path}: cannot read: {e}"),
            })
        };
        let mut key = ring::digest::Context::new(&ring::digest::SHA256);
        let ca = match &settings.ca_file {
            Some(path) => {
                let bytes = read("ca_file", path)?;
                key.update(b"ca\0");
                key.update(&bytes);
                Some((path, bytes))
            }
            None => {
                key.update(b"system\0");
                None
            }
        };
        let client = match &settings.client_auth {
            Some(auth) => {
                let cert = read("client_cert", &auth.cert_file)?;
                let private = read("client_key", &auth.key_file)?;
                for part in [&cert, &private] {
                    key.update(&(part.len() as u64).to_le_bytes());
                    key.update(part);
                }
                Some((auth, cert, private))
            }
            None => None,
        };
        let mut digest = [0u8; 32];
        digest.copy_from_slice(key.finish().as_ref());
        if let Some(config) = self.lock().get(&digest) {
            return Ok(config.clone());
        }
        let roots = match ca {
            Some((path, bytes)) => Arc::new(roots_from_pem(path, &bytes)?),
            None => self.system_roots()?,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError {
                field: "ca_file",
                message: format!("TLS: {e}"),
            })?
            .with_root_certificates(roots);
        let mut config = match client {
            None => builder.with_no_client_auth(),
            Some((auth, cert, private)) => {
                let chain =
                    pem_certificates(&auth.cert_file, &cert).map_err(|message| TlsSetupError {
                        field: "client_cert",
                        message,
                    })?;
                let private = pem_key(&auth.key_file, &private)?;
                builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|e| TlsSetupError {
                        field: "client_key",
                        message: format!(
                            "{} does not go with {}: {e}",
                            auth.key_file, auth.cert_file
                        ),
                    })?
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        self.lock().insert(digest, config.clone());
        Ok(config)
    }

    /// Keep only the configs `keep` uses (those of the table in force): a config a table no
    /// longer names is dropped with its sessions once no connector holds it.
    pub fn retain(&self, keep: &[Arc<rustls::ClientConfig>]) {
        self.lock()
            .retain(|_, config| keep.iter().any(|k| Arc::ptr_eq(k, config)));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Arc<rustls::ClientConfig>>> {
        self.built.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn system_roots(&self) -> Result<Arc<rustls::RootCertStore>, TlsSetupError> {
        let mut system = self.system.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(roots) = &*system {
            return Ok(roots.clone());
        }
        let roots =
            Arc::new(
                control_api::tls::system_roots().map_err(|message| TlsSetupError {
                    field: "ca_file",
                    message: format!("{message}; give ca_file"),
                })?,
            );
        *system = Some(roots.clone());
        Ok(roots)
    }
}

fn pem_certificates(
    path: &str,
    pem: &[u8],
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{path}: cannot read certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path}: no certificate found"));
    }
    Ok(certs)
}

fn roots_from_pem(path: &str, pem: &[u8]) -> Result<rustls::RootCertStore, TlsSetupError> {
    let failed = |message| TlsSetupError {
        field: "ca_file",
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in pem_certificates(path, pem).map_err(failed)? {
        roots
            .add(cert)
            .map_err(|e| failed(format!("{path}: {e}")))?;
    }
    Ok(roots)
}

fn pem_key(
    path: &str,
    pem: &[u8],
) -> Result<rustls::pki_types::PrivateKeyDer<'static>, TlsSetupError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsSetupError {
        field: "client_key",
        message: format!("{path}: cannot read private key: {e}"),
    })
}

/// How to connect to every address of the tables applied so far, by address: what a client
/// that is handed only an endpoint's address (the hyper client in [`crate::upstream`]) looks
/// up when it makes a new connection.
///
/// The router refuses a table that lists an address twice with different settings, so an
/// address maps to one connector. Entries are replaced when a table changes how an address
/// is reached and are never removed (like endpoint health): a request routed by the previous
/// table may still connect to an address the new one dropped, and it must do so the way that
/// table said, never in plain text by default. [`Connectors::epoch`] grows whenever an
/// address's settings change, so that pooled connections made the old way are not reused.
pub struct Connectors {
    by_address: ArcSwap<FnvHashMap<Box<str>, Arc<Connector>>>,
    epoch: AtomicU64,
    plain: Arc<Connector>,
}

impl Default for Connectors {
    fn default() -> Self {
        Self {
            by_address: ArcSwap::from_pointee(FnvHashMap::default()),
            epoch: AtomicU64::new(0),
            plain: Arc::new(Connector::plain()),
        }
    }
}

impl Connectors {
    /// The connector for `address`: plain TCP for an address no table named.
    pub fn get(&self, address: &str) -> Arc<Connector> {
        self.by_address
            .load()
            .get(address)
            .cloned()
            .unwrap_or_else(|| self.plain.clone())
    }

    /// Grows whenever an address is reached differently than before.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Take in how `table` reaches each address; an address reached as before keeps its
    /// connector.
    pub fn update(&self, table: &TableConnectors) {
        let current = self.by_address.load();
        let mut next: FnvHashMap<Box<str>, Arc<Connector>> = (**current).clone();
        let mut changed = false;
        for (address, connector) in &table.by_address {
            match next.get(address) {
                Some(old) if old.same_as(connector) => {}
                old => {
                    changed |= old.is_some();
                    next.insert(address.clone(), connector.clone());
                }
            }
        }
        self.by_address.store(Arc::new(next));
        if changed {
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// The connectors a table needs, built (and its files read) before it is applied.
#[derive(Default)]
pub struct TableConnectors {
    /// Per region, per service (see [`CompiledTable::services`]).
    pub pools: Vec<Vec<Option<Arc<Connector>>>>,
    /// Per region: to its gateways.
    pub gateways: Vec<Arc<Connector>>,
    /// Every address with its connector.
    by_address: Vec<(Box<str>, Arc<Connector>)>,
}

impl TableConnectors {
    /// Build the connectors of `table`, reading the files its TLS settings name (a config
    /// built before from the same content is reused). An error names the table field and the
    /// file: `regions[0].pools.cart.tls.ca_file: /etc/unitgate/ca.pem: cannot read: No such
    /// file or directory (os error 2)`.
    pub fn build(
        table: &CompiledTable,
        configs: &TlsConfigs,
    ) -> Result<Self, Vec<router_rules::Problem>> {
        let mut built = TableConnectors::default();
        let mut problems = Vec::new();
        let mut configs_used: Vec<Arc<rustls::ClientConfig>> = Vec::new();
        let mut make = |role: &'static str,
                        tls: Option<&UpstreamTls>,
                        path: String,
                        addresses: &mut dyn Iterator<Item = &str>|
         -> Arc<Connector> {
            let connector = match tls {
                None => Connector::plain_for(role),
                Some(settings) => match Connector::tls(role, settings, configs) {
                    Ok(connector) => connector,
                    Err(error) => {
                        problems.push(router_rules::Problem::at(
                            format!("{path}.tls.{}", error.field),
                            error.message,
                        ));
                        Connector::plain_for(role)
                    }
                },
            };
            if let Some(tls) = &connector.tls {
                configs_used.push(tls.config.clone());
            }
            let connector = Arc::new(connector);
            for address in addresses {
                built.by_address.push((address.into(), connector.clone()));
            }
            connector
        };
        for (r, region) in table.regions().iter().enumerate() {
            let pools = (0..table.services().len())
                .map(|s| {
                    region.pool(s).map(|pool| {
                        make(
                            "upstream",
                            pool.tls.as_ref(),
                            format!("regions[{r}].pools.{}", table.services()[s]),
                            &mut pool.endpoints.iter().map(|e| &*e.address),
                        )
                    })
                })
                .collect();
            let gateways = make(
                "gateway",
                region.gateway_tls.as_ref(),
                format!("regions[{r}].gateways"),
                &mut region.gateways.iter().map(|g| &**g),
            );
            built.pools.push(pools);
            built.gateways.push(gateways);
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        configs.retain(&configs_used);
        Ok(built)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A one-region table whose pool `app` is `pool` (YAML).
    fn table(version: u64, pool: &str) -> CompiledTable {
        router_rules::load_yaml(&format!(
            "version: {version}\nregions: [{{ name: r, pools: {{ app: {pool} }} }}]\nunits: [{{ name: u, center: true, slots: [[0, 9999]], region: r }}]\nroutes: [{{ name: a, match: {{ path_prefix: / }}, service: app, class: P }}]\n"
        ))
        .unwrap()
    }

    fn ca_file(dir: &std::path::Path, name: &str) -> String {
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_owned()]).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, ca.cert.pem()).unwrap();
        path.display().to_string()
    }

    #[test]
    fn configs_are_shared_by_content_and_addresses_keep_their_connector() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_file(dir.path(), "ca.pem");
        let tls =
            |ca: &str| format!("{{ endpoints: [\"127.0.0.1:9443\"], tls: {{ ca_file: {ca} }} }}");
        let configs = TlsConfigs::default();
        let connectors = Connectors::default();
        assert!(!connectors.get("127.0.0.1:9443").is_tls(), "unknown: plain");

        let first = TableConnectors::build(&table(1, &tls(&ca)), &configs).unwrap();
        connectors.update(&first);
        let held = connectors.get("127.0.0.1:9443");
        assert!(held.is_tls());
        assert_eq!(connectors.epoch(), 0, "a new address is no change");

        // The same settings and file content: the same config (and session cache), the same
        // connector kept, no change.
        let second = TableConnectors::build(&table(2, &tls(&ca)), &configs).unwrap();
        let (a, b) = (&first.pools[0][0], &second.pools[0][0]);
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        assert!(!Arc::ptr_eq(a, b) && a.same_as(b));
        connectors.update(&second);
        assert!(Arc::ptr_eq(&held, &connectors.get("127.0.0.1:9443")));
        assert_eq!(connectors.epoch(), 0);

        // The file's content changed (a rotated CA): a new config, a change.
        std::fs::write(
            &ca,
            std::fs::read(ca_file(dir.path(), "other.pem")).unwrap(),
        )
        .unwrap();
        let third = TableConnectors::build(&table(3, &tls(&ca)), &configs).unwrap();
        assert!(!third.pools[0][0].as_ref().unwrap().same_as(b));
        connectors.update(&third);
        assert_eq!(connectors.epoch(), 1);

        // Plain text again: a change; the address is kept, never dropped.
        let plain = TableConnectors::build(&table(4, "[\"127.0.0.1:9443\"]"), &configs).unwrap();
        connectors.update(&plain);
        assert_eq!(connectors.epoch(), 2);
        assert!(!connectors.get("127.0.0.1:9443").is_tls());
        let other = TableConnectors::build(&table(5, "[\"127.0.0.1:9444\"]"), &configs).unwrap();
        connectors.update(&other);
        assert_eq!(connectors.epoch(), 2);
        assert_eq!(
            connectors.by_address.load().len(),
            2,
            "an address the table dropped keeps its connector"
        );
    }

    #[test]
    fn files_that_cannot_be_used_are_named_with_their_field() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_file(dir.path(), "ca.pem");
        let configs = TlsConfigs::default();
        let problems = |tls: &str| {
            let pool = format!("{{ endpoints: [\"127.0.0.1:9443\"], tls: {tls} }}");
            TableConnectors::build(&table(1, &pool), &configs)
                .err()
                .unwrap()
                .iter()
                .map(|p| format!("{}: {}", p.path, p.message))
                .collect::<Vec<_>>()
        };
        let missing = dir.path().join("missing.pem").display().to_string();
        assert_eq!(
            problems(&format!("{{ ca_file: {missing} }}")),
            [format!(
                "regions[0].pools.app.tls.ca_file: {missing}: cannot read: No such file or directory (os error 2)"
            )]
        );
        let key = dir.path().join("key.pem");
        std::fs::write(&key, "not a key").unwrap();
        let found = problems(&format!(
            "{{ ca_file: {ca}, client_cert: {ca}, client_key: {} }}",
            key.display()
        ));
        assert_eq!(found.len(), 1);
        assert!(
            found[0].starts_with(&format!(
                "regions[0].pools.app.tls.client_key: {}: cannot read private key",
                key.display()
            )),
            "{found:?}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert_eq!(
            problems(&format!("{{ ca_file: {} }}", empty.display())),
            [format!(
                "regions[0].pools.app.tls.ca_file: {}: no certificate found",
                empty.display()
            )]
        );
    }

    #[test]
    fn hosts_become_server_names() {
        assert!(matches!(
            host_name("127.0.0.1:9443"),
            Some(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            host_name("[::1]:9443"),
            Some(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            host_name("cart.hz.internal:443"),
            Some(ServerName::DnsName(_))
        ));
        assert!(host_name("nonsense").is_none());
    }
}
