//! A small HTTP/1.1 client for the control-plane API, over plain TCP or rustls.
//!
//! One connection per request: the callers are a CLI and a gateway's long poll, neither of
//! which sends enough requests for a pool to matter, and a fresh connection never meets a
//! half-closed one after a control-plane restart.

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

use crate::ApiError;

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
        })
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
