//! A small HTTP/1.1 client for the control-plane API, over plain TCP or rustls.
//!
//! One connection per request: the callers are a CLI and a gateway's long poll, neither of
//! which sends enough requests for a pool to matter, and a fresh connection never meets a
//! half-closed one after a control-plane restart.
//!
//! One typed method per endpoint ([`Client::status`], [`Client::put_table`],
//! [`Client::start_flip`], ...) builds the path from [`crate::paths`] and reads the answer as
//! the API's type; an error status comes back as [`ClientError::Api`] with the status and the
//! server's [`ApiError`]. [`Client::send`] stays for requests the typed methods do not make.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::paths::{self, fill};
use crate::{
    ApiError, AuditEntry, FlipAccepted, FlipRecord, FlipRequest, FlipSignalled, GatewayReport,
    GatewayStatus, PlanResult, PutResult, ResolveRequest, ResolveResult, Status, StoredTable,
};

/// How long a typed call may take unless [`Client::with_timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request got no answer, or an answer that is not the one wanted.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad server URL or CA file.
    #[error("{0}")]
    Setup(String),
    /// Could not connect or the exchange broke off.
    #[error("{server}: {message}")]
    Transport {
        /// The server.
        server: String,
        /// What went wrong.
        message: String,
    },
    /// No answer in time.
    #[error("{server}: no answer within {seconds:.1} s")]
    Timeout {
        /// The server.
        server: String,
        /// The time allowed.
        seconds: f64,
    },
    /// The server answered with an error status.
    #[error("{status}: {}", .error.message)]
    Api {
        /// The status.
        status: StatusCode,
        /// The body.
        error: ApiError,
    },
    /// The answer could not be read as the expected JSON.
    #[error("unexpected answer ({status}): {message}")]
    Decode {
        /// The status.
        status: StatusCode,
        /// What did not parse.
        message: String,
    },
}

impl ClientError {
    /// The status the server answered, when it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } | ClientError::Decode { status, .. } => Some(*status),
            ClientError::Setup(_) | ClientError::Transport { .. } | ClientError::Timeout { .. } => {
                None
            }
        }
    }

    /// The server's error body, when it sent one.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            ClientError::Api { error, .. } => Some(error),
            _ => None,
        }
    }

    /// The server's error code (`stale_version`, `moves_units`, ...), when it sent one.
    pub fn code(&self) -> Option<&str> {
        self.api_error().map(|e| e.error.as_str())
    }
}

/// A whole answer.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// The body as `T` when the status is a success; the API error otherwise.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        if !self.status.is_success() {
            return Err(self.api_error());
        }
        serde_json::from_slice(&self.body).map_err(|e| ClientError::Decode {
            status: self.status,
            message: e.to_string(),
        })
    }

    /// Nothing when the status is a success; the API error otherwise.
    pub fn success(&self) -> Result<(), ClientError> {
        if self.status.is_success() {
            Ok(())
        } else {
            Err(self.api_error())
        }
    }

    /// The error this answer carries.
    pub fn api_error(&self) -> ClientError {
        match serde_json::from_slice::<ApiError>(&self.body) {
            Ok(error) => ClientError::Api {
                status: self.status,
                error,
            },
            Err(_) => ClientError::Decode {
                status: self.status,
                message: String::from_utf8_lossy(&self.body)
                    .chars()
                    .take(200)
                    .collect(),
            },
        }
    }
}

/// The certificates an https server's chain is verified against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trust<'a> {
    /// The system's trust store (on Linux the OpenSSL store, or `SSL_CERT_FILE` and
    /// `SSL_CERT_DIR` when set).
    pub system: bool,
    /// PEM certificates to trust as well, e.g. a private CA.
    pub ca_file: Option<&'a Path>,
}

impl<'a> Trust<'a> {
    /// The system's store and, when given, `ca_file` too: a private CA added to the public ones.
    pub fn system_and(ca_file: Option<&'a Path>) -> Self {
        Self {
            system: true,
            ca_file,
        }
    }

    /// `ca_file` alone when given (a private CA, trusted instead of the public ones); the
    /// system's store otherwise.
    pub fn only(ca_file: Option<&'a Path>) -> Self {
        Self {
            system: ca_file.is_none(),
            ca_file,
        }
    }
}

/// A client for one control-plane server.
#[derive(Clone)]
pub struct Client {
    server: String,
    authority: String,
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    authorization: Option<HeaderValue>,
    timeout: Duration,
}

impl Client {
    /// A client for `server` (`http://host:port` or `https://host:port`) authenticating with
    /// `token` (none: no `Authorization` header). An https server is verified against
    /// `ca_file`, the PEM certificates to trust, when given, and against the system's trust
    /// store otherwise ([`Trust::only`]).
    pub fn new(
        server: &str,
        token: Option<&str>,
        ca_file: Option<&Path>,
    ) -> Result<Self, ClientError> {
        Self::with_trust(server, token, Trust::only(ca_file))
    }

    /// A client for `server` authenticating with `token`, verifying an https server against
    /// the certificates `trust` names.
    pub fn with_trust(
        server: &str,
        token: Option<&str>,
        trust: Trust<'_>,
    ) -> Result<Self, ClientError> {
        let setup = |m: String| ClientError::Setup(m);
        let uri: Uri = server
            .trim_end_matches('/')
            .parse()
            .map_err(|e| setup(format!("server URL {server:?}: {e}")))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(setup(format!(
                    "server URL {server:?}: must start with http:// or https://"
                )));
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| setup(format!("server URL {server:?}: no host")))?;
        let host = authority.host().trim_matches(['[', ']']).to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            Some(tls_connector(trust, &host)?)
        } else {
            None
        };
        let authorization = token
            .map(|token| HeaderValue::try_from(format!("Bearer {token}")))
            .transpose()
            .map_err(|_| setup("the token holds characters not allowed in a header".into()))?;
        Ok(Self {
            server: server.trim_end_matches('/').to_owned(),
            authority: authority.to_string(),
            host,
            port,
            tls,
            authorization,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// This client with `timeout` for each typed call ([`DEFAULT_TIMEOUT`] otherwise).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long each typed call may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The server URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Send a request and read the whole answer, within `timeout`.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(header::HeaderName, HeaderValue)],
        body: Option<(Bytes, &'static str)>,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        match tokio::time::timeout(
            timeout,
            self.exchange(method, path_and_query, headers, body),
        )
        .await
        {
            Ok(reply) => reply,
            Err(_) => Err(ClientError::Timeout {
                server: self.server.clone(),
                seconds: timeout.as_secs_f64(),
            }),
        }
    }

    /// `GET` a JSON document.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        path_and_query: &str,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        self.send(Method::GET, path_and_query, &[], None, timeout)
            .await?
            .json()
    }

    /// Send a JSON body, read a JSON answer.
    pub async fn send_json<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Setup(e.to_string()))?;
        self.send(
            method,
            path,
            &[],
            Some((body.into(), "application/json")),
            timeout,
        )
        .await?
        .json()
    }

    async fn exchange(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(header::HeaderName, HeaderValue)],
        body: Option<(Bytes, &'static str)>,
    ) -> Result<Reply, ClientError> {
        let transport = |message: String| ClientError::Transport {
            server: self.server.clone(),
            message,
        };
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| transport(format!("cannot connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let mut builder = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(header::HOST, &self.authority);
        if let Some(authorization) = &self.authorization {
            builder = builder.header(header::AUTHORIZATION, authorization);
        }
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let (body, content_type) = body.unwrap_or((Bytes::new(), ""));
        if !content_type.is_empty() {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        let request = builder
            .body(Full::new(body))
            .map_err(|e| ClientError::Setup(format!("request {path_and_query:?}: {e}")))?;
        let response = match &self.tls {
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| transport(format!("TLS: {e}")))?;
                send_on(TokioIo::new(stream), request).await
            }
            None => send_on(TokioIo::new(tcp), request).await,
        }
        .map_err(transport)?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| transport(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// A table as [`Client::plan`] and [`Client::put_table`] send it: its text and its media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableText {
    /// The text.
    pub body: Bytes,
    /// `application/json` or `application/yaml`.
    pub content_type: &'static str,
}

impl TableText {
    /// A table in JSON.
    pub fn json(body: impl Into<Bytes>) -> Self {
        Self {
            body: body.into(),
            content_type: "application/json",
        }
    }

    /// A table in YAML.
    pub fn yaml(body: impl Into<Bytes>) -> Self {
        Self {
            body: body.into(),
            content_type: "application/yaml",
        }
    }

    /// `table` as JSON.
    pub fn of(table: &router_rules::RawTable) -> Self {
        Self::json(serde_json::to_vec(table).unwrap_or_default())
    }

    /// The text of a table file at `path`: JSON or YAML by its extension
    /// ([`crate::files::is_json`]).
    pub fn of_file(path: &Path, text: impl Into<Bytes>) -> Self {
        if crate::files::is_json(path) {
            Self::json(text)
        } else {
            Self::yaml(text)
        }
    }
}

/// How [`Client::put_table`] stores a table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutTable<'a> {
    /// The version in force that the table is an edit of (`If-Match`; 0 for the first table):
    /// if another version is in force, the control plane refuses it (`409 stale_version`).
    pub if_match: u64,
    /// Why (`X-Unitgate-Reason`, UTF-8), kept on the version and in the audit log.
    pub reason: Option<&'a str>,
    /// Admins: store it although it moves units without a flip (`X-Unitgate-Force`, UTF-8),
    /// with this reason.
    pub force: Option<&'a str>,
}

/// What a gateway's `GET /v1/watch` says about itself and asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchQuery<'a> {
    /// Answer with the first version newer than this.
    pub after: u64,
    /// The version the gateway serves (0: none).
    pub applied: u64,
    /// The digest of the table it serves.
    pub digest: Option<&'a str>,
    /// Its id.
    pub gateway: &'a str,
    /// Its region.
    pub region: &'a str,
    /// How long the control plane may hold the request for a new version, in seconds (0:
    /// answer at once).
    pub hold_s: u64,
}

impl WatchQuery<'_> {
    /// The request's path and query.
    pub fn path_and_query(&self) -> String {
        let digest = self
            .digest
            .map(|d| format!("&digest={}", paths::encode(d)))
            .unwrap_or_default();
        format!(
            "{}?after={}&applied={}{digest}&gateway={}&region={}&timeout_s={}",
            paths::WATCH,
            self.after,
            self.applied,
            paths::encode(self.gateway),
            paths::encode(self.region),
            self.hold_s
        )
    }
}

/// One typed method per endpoint, each within [`Client::timeout`] unless it takes its own.
impl Client {
    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(header::HeaderName, HeaderValue)],
        body: Option<(Bytes, &'static str)>,
    ) -> Result<Reply, ClientError> {
        self.send(method, path, headers, body, self.timeout).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, &[], None).await?.json()
    }

    async fn post<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send_json(Method::POST, path, body, self.timeout).await
    }

    /// `GET /healthz`: whether the process answers.
    pub async fn health(&self) -> Result<(), ClientError> {
        self.call(Method::GET, paths::HEALTHZ, &[], None)
            .await?
            .success()
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let reply = self.call(Method::GET, paths::METRICS, &[], None).await?;
        reply.success()?;
        Ok(String::from_utf8_lossy(&reply.body).into_owned())
    }

    /// `GET /v1/openapi.json`: the API document.
    pub async fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        self.get(paths::OPENAPI).await
    }

    /// `GET /v1/status`: units and gateways in one look.
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.get(paths::STATUS).await
    }

    /// `GET /v1/table`: the version in force.
    pub async fn table(&self) -> Result<StoredTable, ClientError> {
        self.get(paths::TABLE).await
    }

    /// `GET /v1/table/versions/{n}`: one stored version.
    pub async fn table_version(&self, n: u64) -> Result<StoredTable, ClientError> {
        self.get(&fill(paths::TABLE_VERSION, &[&n.to_string()]))
            .await
    }

    /// `POST /v1/table/plan`: validate `table` and show what it would change; stores nothing.
    pub async fn plan(&self, table: &TableText) -> Result<PlanResult, ClientError> {
        let body = Some((table.body.clone(), table.content_type));
        self.call(Method::POST, paths::TABLE_PLAN, &[], body)
            .await?
            .json()
    }

    /// `PUT /v1/table`: store `table` as the next version, as `put` says.
    pub async fn put_table(
        &self,
        table: &TableText,
        put: &PutTable<'_>,
    ) -> Result<PutResult, ClientError> {
        // UTF-8 text; control characters cannot be sent in a header.
        let text = |name: &'static str, value: &str| {
            HeaderValue::from_bytes(value.as_bytes()).map_err(|_| {
                ClientError::Setup(format!(
                    "{name}: no control characters (it is sent in an HTTP header)"
                ))
            })
        };
        let mut headers = vec![(header::IF_MATCH, HeaderValue::from(put.if_match))];
        if let Some(reason) = put.reason {
            headers.push((
                header::HeaderName::from_static(crate::REASON_HEADER),
                text(crate::REASON_HEADER, reason)?,
            ));
        }
        if let Some(force) = put.force {
            headers.push((
                header::HeaderName::from_static(crate::FORCE_HEADER),
                text(crate::FORCE_HEADER, force)?,
            ));
        }
        let body = Some((table.body.clone(), table.content_type));
        self.call(Method::PUT, paths::TABLE, &headers, body)
            .await?
            .json()
    }

    /// `POST /v1/units/{unit}/flip`: start a flip of `unit`.
    pub async fn start_flip(
        &self,
        unit: &str,
        request: &FlipRequest,
    ) -> Result<FlipAccepted, ClientError> {
        self.post(&fill(paths::UNIT_FLIP, &[unit]), request).await
    }

    /// `POST /v1/flips`: start one flip of several units.
    pub async fn start_flips(
        &self,
        request: &crate::MultiFlipRequest,
    ) -> Result<FlipAccepted, ClientError> {
        self.post(paths::FLIPS, request).await
    }

    /// `POST /v1/regions/{region}/evacuate`: move every unit living in `region` out of it.
    pub async fn evacuate(
        &self,
        region: &str,
        request: &crate::EvacuateRequest,
    ) -> Result<FlipAccepted, ClientError> {
        self.post(&fill(paths::REGION_EVACUATE, &[region]), request)
            .await
    }

    /// `POST /v1/regions/{region}/restore`: undo `region`'s last evacuation.
    pub async fn restore(
        &self,
        region: &str,
        request: &crate::RestoreRequest,
    ) -> Result<FlipAccepted, ClientError> {
        self.post(&fill(paths::REGION_RESTORE, &[region]), request)
            .await
    }

    /// `POST /v1/flips/{id}/extend`: wait `seconds` longer for flip `id`'s confirmation.
    pub async fn extend_flip(&self, id: &str, seconds: u64) -> Result<FlipSignalled, ClientError> {
        self.post(
            &fill(paths::FLIP_EXTEND, &[id]),
            &crate::ExtendRequest { seconds },
        )
        .await
    }

    /// `POST /v1/explain`: where `request` would go, against the table in force.
    pub async fn explain(
        &self,
        request: &crate::ExplainRequest,
    ) -> Result<crate::ExplainResult, ClientError> {
        self.post(paths::EXPLAIN, request).await
    }

    /// `GET /v1/flips`: every flip, oldest first.
    pub async fn flips(&self) -> Result<Vec<FlipRecord>, ClientError> {
        self.get(paths::FLIPS).await
    }

    /// `GET /v1/flips/{id}`: one flip.
    pub async fn flip(&self, id: &str) -> Result<FlipRecord, ClientError> {
        self.get(&fill(paths::FLIP, &[id])).await
    }

    /// `POST /v1/flips/{id}/confirm`: the data caught up.
    pub async fn confirm_flip(&self, id: &str) -> Result<FlipSignalled, ClientError> {
        self.call(Method::POST, &fill(paths::FLIP_CONFIRM, &[id]), &[], None)
            .await?
            .json()
    }

    /// `POST /v1/flips/{id}/cancel`: roll the flip back.
    pub async fn cancel_flip(&self, id: &str) -> Result<FlipSignalled, ClientError> {
        self.call(Method::POST, &fill(paths::FLIP_CANCEL, &[id]), &[], None)
            .await?
            .json()
    }

    /// `POST /v1/units/{unit}/resolve`: settle a unit whose flip could not be recovered.
    pub async fn resolve_unit(
        &self,
        unit: &str,
        request: &ResolveRequest,
    ) -> Result<ResolveResult, ClientError> {
        self.post(&fill(paths::UNIT_RESOLVE, &[unit]), request)
            .await
    }

    /// `GET /v1/gateways`: every gateway seen.
    pub async fn gateways(&self) -> Result<Vec<GatewayStatus>, ClientError> {
        self.get(paths::GATEWAYS).await
    }

    /// `DELETE /v1/gateways/{id}`: forget a gateway taken out of service.
    pub async fn forget_gateway(&self, id: &str) -> Result<(), ClientError> {
        self.call(Method::DELETE, &fill(paths::GATEWAY, &[id]), &[], None)
            .await?
            .success()
    }

    /// `GET /v1/audit`: the audit log, oldest first; only the last `limit` entries when given.
    pub async fn audit(&self, limit: Option<usize>) -> Result<Vec<AuditEntry>, ClientError> {
        match limit {
            Some(n) => self.get(&format!("{}?limit={n}", paths::AUDIT)).await,
            None => self.get(paths::AUDIT).await,
        }
    }

    /// `GET /v1/watch` within `timeout` (allow for the hold): the answer with the table
    /// (`200`, its version and digest in [`crate::VERSION_HEADER`] and [`crate::DIGEST_HEADER`])
    /// or none when no version came within the hold (`204`).
    pub async fn watch(
        &self,
        query: &WatchQuery<'_>,
        timeout: Duration,
    ) -> Result<Option<Reply>, ClientError> {
        let reply = self
            .send(Method::GET, &query.path_and_query(), &[], None, timeout)
            .await?;
        match reply.status {
            StatusCode::OK => Ok(Some(reply)),
            StatusCode::NO_CONTENT => Ok(None),
            _ => Err(reply.api_error()),
        }
    }

    /// `POST /v1/report`: what this gateway applied or refused.
    pub async fn report(&self, report: &GatewayReport) -> Result<(), ClientError> {
        let body = serde_json::to_vec(report).map_err(|e| ClientError::Setup(e.to_string()))?;
        self.call(
            Method::POST,
            paths::REPORT,
            &[],
            Some((body.into(), "application/json")),
        )
        .await?
        .success()
    }
}

async fn send_on<I>(
    io: I,
    request: Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))
}

fn tls_connector(
    trust: Trust<'_>,
    host: &str,
) -> Result<(TlsConnector, ServerName<'static>), ClientError> {
    let setup = |m: String| ClientError::Setup(m);
    let mut roots = rustls::RootCertStore::empty();
    let mut system_errors = Vec::new();
    if trust.system {
        // SSL_CERT_FILE and SSL_CERT_DIR, when set, stand for the system's store (as for
        // OpenSSL). Certificates that do not parse are skipped, as other TLS clients do.
        let found = rustls_native_certs::load_native_certs();
        system_errors = found.errors.iter().map(ToString::to_string).collect();
        roots.add_parsable_certificates(found.certs);
    }
    if let Some(ca_file) = trust.ca_file {
        for cert in crate::tls::certificates(ca_file).map_err(setup)? {
            roots
                .add(cert)
                .map_err(|e| setup(format!("{}: {e}", ca_file.display())))?;
        }
    }
    if roots.is_empty() {
        let why = if system_errors.is_empty() {
            String::new()
        } else {
            format!(" ({})", system_errors.join("; "))
        };
        return Err(setup(format!(
            "https: no certificate to trust: none found in the system's trust store{why}; give the CA's PEM file"
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| setup(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| setup(format!("server name {host:?}: {e}")))?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A server that answers one request with `status` and `body`, and hands back the
    /// request's head and body as text.
    async fn answer_once(
        status: u16,
        headers: &'static str,
        body: &'static str,
    ) -> (Client, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = stream.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).into_owned();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(str::to_owned)
                        })
                        .and_then(|n| n.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length || n == 0 {
                        break;
                    }
                }
            }
            let reply = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n{headers}connection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&request).into_owned()
        });
        let client = Client::new(&format!("http://{addr}"), Some("t0k3n"), None)
            .unwrap()
            .with_timeout(Duration::from_secs(10));
        (client, seen)
    }

    #[tokio::test]
    async fn a_typed_call_reads_the_api_type() {
        let (client, seen) =
            answer_once(200, "", r#"{"version":7,"units":[],"gateways":[]}"#).await;
        let status = client.status().await.unwrap();
        assert_eq!(status.version, 7);
        let request = seen.await.unwrap();
        assert!(
            request.starts_with("GET /v1/status HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("authorization: Bearer t0k3n\r\n"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn an_error_keeps_the_status_and_the_servers_body() {
        let (client, seen) = answer_once(
            409,
            "content-type: application/json\r\n",
            r#"{"error":"stale_version","message":"version 3 is in force"}"#,
        )
        .await;
        let put = PutTable {
            if_match: 2,
            reason: Some("more slots"),
            force: Some("hz à l'arrêt"),
        };
        let error = client
            .put_table(&TableText::yaml("version: 2\n"), &put)
            .await
            .unwrap_err();
        assert_eq!(error.status(), Some(StatusCode::CONFLICT));
        assert_eq!(error.code(), Some("stale_version"));
        assert_eq!(error.to_string(), "409 Conflict: version 3 is in force");
        let request = seen.await.unwrap();
        assert!(
            request.starts_with("PUT /v1/table HTTP/1.1\r\n"),
            "{request}"
        );
        for header in [
            "if-match: 2\r\n",
            "x-unitgate-reason: more slots\r\n",
            "x-unitgate-force: hz à l'arrêt\r\n",
            "content-type: application/yaml\r\n",
        ] {
            assert!(request.contains(header), "{header:?} in {request}");
        }
        assert!(request.ends_with("\r\n\r\nversion: 2\n"), "{request}");
    }

    #[tokio::test]
    async fn a_header_that_cannot_be_sent_is_refused_before_sending() {
        let client = Client::new("http://127.0.0.1:9", None, None).unwrap();
        let put = PutTable {
            reason: Some("line\nbreak"),
            ..PutTable::default()
        };
        let error = client
            .put_table(&TableText::json("{}"), &put)
            .await
            .unwrap_err();
        assert!(matches!(error, ClientError::Setup(_)), "{error}");
        assert_eq!(error.status(), None);
    }

    #[tokio::test]
    async fn parameters_are_filled_into_the_path() {
        let (client, seen) = answer_once(202, "", r#"{"id":"f1","signal":"cancel"}"#).await;
        let answer = client.cancel_flip("f1").await.unwrap();
        assert_eq!(answer.signal, "cancel");
        let request = seen.await.unwrap();
        assert!(
            request.starts_with("POST /v1/flips/f1/cancel HTTP/1.1\r\n"),
            "{request}"
        );

        let (client, seen) = answer_once(204, "", "").await;
        client.forget_gateway("hz 1/x").await.unwrap();
        let request = seen.await.unwrap();
        assert!(
            request.starts_with("DELETE /v1/gateways/hz%201%2Fx HTTP/1.1\r\n"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn a_watch_without_a_new_version_is_none() {
        let (client, seen) = answer_once(204, "", "").await;
        let query = WatchQuery {
            after: 4,
            applied: 4,
            digest: Some("sha256:00ff"),
            gateway: "hz-1",
            region: "hz",
            hold_s: 25,
        };
        assert!(
            client
                .watch(&query, Duration::from_secs(10))
                .await
                .unwrap()
                .is_none()
        );
        let request = seen.await.unwrap();
        assert!(
            request.starts_with(
                "GET /v1/watch?after=4&applied=4&digest=sha256:00ff&gateway=hz-1&region=hz&timeout_s=25 HTTP/1.1\r\n"
            ),
            "{request}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_server_has_no_status() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = Client::new(&format!("http://{addr}"), None, None).unwrap();
        let error = client.health().await.unwrap_err();
        assert!(matches!(error, ClientError::Transport { .. }), "{error}");
        assert_eq!(error.status(), None);
    }
}
