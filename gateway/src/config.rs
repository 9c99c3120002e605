//! The gateway's own configuration file (YAML). Unknown fields are errors, and every error
//! names its line and column.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The most `limits.max_header_count` may be.
pub const MAX_HEADER_COUNT: usize = 256;

/// Everything a gateway process needs besides the routing table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The region this gateway serves (a region name in the routing table).
    pub region: String,
    /// Where clients connect.
    #[serde(default)]
    pub listen: Listen,
    /// The admin listener: health, readiness, metrics, the applied table.
    #[serde(default)]
    pub admin: Admin,
    /// Where the routing table comes from.
    pub table: TableSourceConfig,
    /// Directory for the last applied table, so a restart without a reachable source still
    /// serves. Absent: no cache.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Shared secret authenticating the hop marker between gateways (at least 32 bytes).
    /// Give this or `hop_secret_file`.
    #[serde(default)]
    pub hop_secret: Option<String>,
    /// File holding the hop secret.
    #[serde(default)]
    pub hop_secret_file: Option<PathBuf>,
    /// Request size limits.
    #[serde(default)]
    pub limits: RequestLimits,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Upstream health checking and ejection.
    #[serde(default)]
    pub health_check: HealthCheck,
    /// Worker threads; 0 means one per core.
    #[serde(default)]
    pub threads: usize,
    /// Serve a table cache whose content does not match its digest (`--accept-cache-as-is`);
    /// never set from the file.
    #[serde(skip)]
    pub accept_cache_as_is: bool,
    /// One access-log line per request: `true`, `false`, or its options
    /// (`{ enabled, routing_key }`).
    #[serde(default)]
    pub access_log: AccessLog,
    /// Log format.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Unix socket on which this process hands its listening sockets to a new process during
    /// a zero-downtime upgrade (`unitgate --upgrade`). Absent: no upgrades.
    #[serde(default)]
    pub upgrade_socket: Option<PathBuf>,
    /// Requests carrying this header (any value) are stress-test traffic: routed like any other,
    /// tagged to upstreams and counted apart.
    #[serde(default = "default_stress_header")]
    pub stress_test_header: String,
    /// Proxies in front of the gateway (CIDRs, e.g. a load balancer's `10.0.0.0/8`) whose
    /// `X-Forwarded-For` and `X-Forwarded-Proto` are kept (and appended to). From any other
    /// peer they are replaced: a client cannot claim another address or `https`.
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Which HTTP/1.1 implementation serves clients and talks to upstreams: `own` (the
    /// gateway's codec, the default) or `hyper` (kept as the reference the codec is tested
    /// against). HTTP/2 is always hyper's.
    #[serde(default)]
    pub http1_codec: Http1Codec,
    /// The file this was read from and where each field sits in it: problems found after
    /// parsing (a hop secret file that cannot be read) are placed like parse errors.
    #[serde(skip)]
    origin: router_rules::SourceFile,
}

/// The HTTP/1.1 implementation (`http1_codec`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Http1Codec {
    /// The gateway's own codec (`gateway::h1`).
    #[default]
    Own,
    /// hyper's.
    Hyper,
}

fn yes() -> bool {
    true
}

fn default_stress_header() -> String {
    "x-stress-test".to_owned()
}

/// The access log: one line per request. Written as `access_log: true` / `false`, or as
/// `access_log: { enabled: true, routing_key: hashed }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessLog {
    /// One line per request.
    pub enabled: bool,
    /// How each line shows the routing key: a user identifier.
    pub routing_key: RoutingKeyLog,
}

impl Default for AccessLog {
    fn default() -> Self {
        Self {
            enabled: true,
            routing_key: RoutingKeyLog::default(),
        }
    }
}

/// How the access log shows the routing key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutingKeyLog {
    /// `key_hash`: a keyed hash (HMAC-SHA256 under a key derived from the hop secret,
    /// 16 hex digits), the same on every gateway of the fleet, so lines join without the key
    /// itself.
    #[default]
    Hashed,
    /// `key`: the key as found.
    AsIs,
    /// Neither.
    Omitted,
}

/// `access_log`'s options, in the map form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessLogOptions {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    routing_key: RoutingKeyLog,
}

impl<'de> Deserialize<'de> for AccessLog {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Form;
        impl<'de> serde::de::Visitor<'de> for Form {
            type Value = AccessLog;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false, or a map of enabled and routing_key")
            }
            fn visit_bool<E: serde::de::Error>(self, enabled: bool) -> Result<AccessLog, E> {
                Ok(AccessLog {
                    enabled,
                    ..AccessLog::default()
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<AccessLog, A::Error> {
                let options = AccessLogOptions::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(AccessLog {
                    enabled: options.enabled,
                    routing_key: options.routing_key,
                })
            }
        }
        deserializer.deserialize_any(Form)
    }
}

/// Client listeners.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Plain HTTP listeners (HTTP/1.1, and HTTP/2 with prior knowledge).
    #[serde(default)]
    pub http: Vec<SocketAddr>,
    /// HTTPS listeners (HTTP/2 and HTTP/1.1 by ALPN).
    #[serde(default)]
    pub https: Vec<TlsListen>,
}

/// One HTTPS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListen {
    /// Address to listen on.
    pub address: SocketAddr,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificates: when given, every client must present a certificate issued by one
    /// of them (mutual TLS), e.g. the other regions' gateways forwarding to this one.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

impl TlsListen {
    /// The rustls server config for this listener (HTTP/2 and HTTP/1.1 by ALPN), demanding
    /// client certificates when it has a `client_ca`. An error names the file at fault.
    pub fn server_config(&self) -> Result<std::sync::Arc<rustls::ServerConfig>, String> {
        control_api::tls::server_config_with_client_ca(
            &self.cert,
            &self.key,
            self.client_ca.as_deref(),
        )
    }
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Address; loopback by default so the admin surface is not exposed unless asked for.
    #[serde(default = "default_admin")]
    pub listen: SocketAddr,
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9100))
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            listen: default_admin(),
        }
    }
}

/// Where the routing table comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSourceConfig {
    /// A YAML (or `.json`) table file, reloaded when it changes and on SIGHUP.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// How often the file is checked for changes, in milliseconds.
    #[serde(default = "default_poll_ms")]
    pub poll_interval_ms: u64,
    /// The control plane: the gateway long-polls it for every new version and reports what
    /// it applied or refused.
    #[serde(default)]
    pub control_plane: Option<ControlPlaneSource>,
}

/// Where and how to reach the control plane.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneSource {
    /// `http://host:port` or `https://host:port`.
    pub url: String,
    /// A file holding this gateway's token (role `gateway`).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The token itself, for demos and tests; prefer `token_file`.
    #[serde(default)]
    pub token: Option<String>,
    /// PEM certificates to trust for `https://`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// This gateway's id as the control plane shows it. Default: region, host name and the
    /// admin port.
    #[serde(default)]
    pub gateway_id: Option<String>,
}

impl ControlPlaneSource {
    /// The token, from `token` or `token_file`.
    pub fn token(&self) -> Result<String, String> {
        match (&self.token, &self.token_file) {
            (Some(token), None) => Ok(token.trim().to_owned()),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|t| t.trim().to_owned())
                .map_err(|e| format!("table.control_plane.token_file: {}: {e}", path.display())),
            _ => Err("table.control_plane: give exactly one of token or token_file".into()),
        }
    }
}

fn default_poll_ms() -> u64 {
    1000
}

/// Request size and connection limits.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestLimits {
    /// Most client connections open at once, over every proxy listener; further ones are
    /// closed as soon as they are accepted. 0: as many as the process's file-descriptor limit
    /// allows, less a reserve for upstream connections, the admin listener and the table
    /// source.
    #[serde(default)]
    pub max_connections: usize,
    /// Most client connections open at once from one IP address (0: no per-address limit).
    /// Behind a load balancer that does not pass client addresses, every connection comes
    /// from the balancer: raise it or set 0 there.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Most headers in a request.
    #[serde(default = "default_max_headers")]
    pub max_header_count: usize,
    /// Most bytes of request head (request line and headers).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most bytes of request body.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    /// Most bytes of request bodies held whole in memory at once, over the whole gateway (an
    /// HTTP/1.1 client's request to an `h2` pool is read whole before it is sent): a body that
    /// would not fit is refused with `503`. At least `max_body_bytes`.
    #[serde(default = "default_max_buffered_body")]
    pub max_buffered_body_bytes: u64,
}

fn default_max_headers() -> usize {
    100
}
fn default_max_connections_per_ip() -> usize {
    1024
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_max_body() -> u64 {
    16 * 1024 * 1024
}
fn default_max_buffered_body() -> u64 {
    64 * 1024 * 1024
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_connections: 0,
            max_connections_per_ip: default_max_connections_per_ip(),
            max_header_count: default_max_headers(),
            max_header_bytes: default_max_header_bytes(),
            max_body_bytes: default_max_body(),
            max_buffered_body_bytes: default_max_buffered_body(),
        }
    }
}

/// Timeouts, in milliseconds (drain in seconds).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Connecting to an upstream or a remote gateway.
    #[serde(default = "default_connect_ms")]
    pub connect_ms: u64,
    /// Waiting for the upstream's response head after sending the request.
    #[serde(default = "default_read_ms")]
    pub read_ms: u64,
    /// The whole exchange up to the response head, retries included.
    #[serde(default = "default_total_ms")]
    pub total_ms: u64,
    /// Reading a client's request head; also how long a new connection may wait for its
    /// first byte, and a keep-alive connection may sit idle between requests.
    #[serde(default = "default_header_read_ms")]
    pub client_header_ms: u64,
    /// A client's TLS handshake.
    #[serde(default = "default_tls_handshake_ms")]
    pub tls_handshake_ms: u64,
    /// On SIGTERM (or after an upgrade), how long in-flight requests may take to finish.
    #[serde(default = "default_drain_s")]
    pub drain_s: u64,
    /// How long a tunnel (after `101 Switching Protocols`) stays open with nothing passing
    /// either way.
    #[serde(default = "default_tunnel_idle_ms")]
    pub tunnel_idle_ms: u64,
    /// How long a write in flight to a unit that a newer table moved or froze may go on before
    /// the gateway ends it: until it ends, the gateway does not vouch for the newer table, and
    /// the unit's flip waits (a flip gives up after its `converge_timeout_s`, 30 s by default).
    #[serde(default = "default_moved_write_grace_ms")]
    pub moved_write_grace_ms: u64,
}

fn default_connect_ms() -> u64 {
    1000
}
fn default_read_ms() -> u64 {
    30_000
}
fn default_total_ms() -> u64 {
    60_000
}
fn default_header_read_ms() -> u64 {
    10_000
}
fn default_drain_s() -> u64 {
    30
}
fn default_tls_handshake_ms() -> u64 {
    10_000
}
fn default_tunnel_idle_ms() -> u64 {
    300_000
}
fn default_moved_write_grace_ms() -> u64 {
    10_000
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect_ms: default_connect_ms(),
            read_ms: default_read_ms(),
            total_ms: default_total_ms(),
            client_header_ms: default_header_read_ms(),
            tls_handshake_ms: default_tls_handshake_ms(),
            drain_s: default_drain_s(),
            tunnel_idle_ms: default_tunnel_idle_ms(),
            moved_write_grace_ms: default_moved_write_grace_ms(),
        }
    }
}

impl Timeouts {
    /// Connect timeout.
    pub fn connect(&self) -> Duration {
        Duration::from_millis(self.connect_ms)
    }
    /// Response-head timeout.
    pub fn read(&self) -> Duration {
        Duration::from_millis(self.read_ms)
    }
    /// Whole-exchange timeout.
    pub fn total(&self) -> Duration {
        Duration::from_millis(self.total_ms)
    }
    /// Drain time.
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_s)
    }
    /// Client head (and first byte, and keep-alive idle) timeout.
    pub fn client_header(&self) -> Duration {
        Duration::from_millis(self.client_header_ms)
    }
    /// Client TLS handshake timeout.
    pub fn tls_handshake(&self) -> Duration {
        Duration::from_millis(self.tls_handshake_ms)
    }
    /// Idle tunnel timeout.
    pub fn tunnel_idle(&self) -> Duration {
        Duration::from_millis(self.tunnel_idle_ms)
    }
    /// Grace of a write to a unit a newer table moved or froze.
    pub fn moved_write_grace(&self) -> Duration {
        Duration::from_millis(self.moved_write_grace_ms)
    }
}

/// Upstream health checking.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Interval between active checks of each local endpoint, in milliseconds; 0 turns active
    /// checks off.
    #[serde(default = "default_hc_interval")]
    pub interval_ms: u64,
    /// Timeout of one check.
    #[serde(default = "default_hc_timeout")]
    pub timeout_ms: u64,
    /// HTTP path to GET (any 2xx is healthy); absent: a TCP connect is the check.
    #[serde(default)]
    pub path: Option<String>,
    /// Consecutive failed requests (connect errors, timeouts) that eject an endpoint.
    #[serde(default = "default_eject_after")]
    pub eject_after_failures: u32,
    /// How long an ejected endpoint sits out, in milliseconds.
    #[serde(default = "default_eject_for")]
    pub eject_for_ms: u64,
}

fn default_hc_interval() -> u64 {
    2000
}
fn default_hc_timeout() -> u64 {
    500
}
fn default_eject_after() -> u32 {
    3
}
fn default_eject_for() -> u64 {
    10_000
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            interval_ms: default_hc_interval(),
            timeout_ms: default_hc_timeout(),
            path: None,
            eject_after_failures: default_eject_after(),
            eject_for_ms: default_eject_for(),
        }
    }
}

pub use control_api::logging::LogFormat;

/// The least hop-secret length, in bytes.
pub const MIN_HOP_SECRET_LEN: usize = 32;

impl GatewayConfig {
    /// Parse a config file's text; `origin` names it in errors. Every error reads
    /// `origin:line:col: path: message` (see [`router_rules::render_problems`]), one line per
    /// problem.
    pub fn parse(text: &str, origin: &str) -> Result<Self, String> {
        let (mut config, map) =
            router_rules::from_yaml::<Self>(text).map_err(|problem| problem.render(origin))?;
        config.origin = router_rules::SourceFile::new(origin, map);
        config.check()?;
        Ok(config)
    }

    /// Read and parse a config file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let origin = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("{origin}: cannot read: {e}"))?;
        Self::parse(&text, &origin)
    }

    /// A problem with the field at `path`, as `file:line:col: path: message`: for problems
    /// found after parsing, e.g. when the table names no region of this config's `region`.
    pub fn problem(&self, path: &str, message: impl Into<String>) -> String {
        self.origin.problem(path, message)
    }

    fn check(&self) -> Result<(), String> {
        use router_rules::Problem;
        let mut problems = Vec::new();
        if self.listen.http.is_empty() && self.listen.https.is_empty() {
            problems.push(Problem::at(
                "listen",
                "no listeners; give listen.http or listen.https",
            ));
        }
        match (&self.table.file, &self.table.control_plane) {
            (None, None) => problems.push(Problem::at(
                "table",
                "no table source; give table.file or table.control_plane",
            )),
            (Some(_), Some(_)) => problems.push(Problem::at(
                "table",
                "give table.file or table.control_plane, not both (two sources would fight over versions)",
            )),
            _ => {}
        }
        if let Some(source) = &self.table.control_plane {
            if !(source.url.starts_with("http://") || source.url.starts_with("https://")) {
                problems.push(Problem::at(
                    "table.control_plane.url",
                    format!("{:?} must start with http:// or https://", source.url),
                ));
            }
            if source.token.is_some() == source.token_file.is_some() {
                problems.push(Problem::at(
                    "table.control_plane",
                    "give exactly one of token or token_file",
                ));
            }
        }
        match (&self.hop_secret, &self.hop_secret_file) {
            (Some(_), Some(_)) => problems.push(Problem::at(
                "hop_secret",
                "give hop_secret or hop_secret_file, not both",
            )),
            (None, None) => problems.push(Problem::at(
                "hop_secret",
                format!(
                    "missing; gateways authenticate forwarded requests with a shared secret of at least {MIN_HOP_SECRET_LEN} bytes (hop_secret or hop_secret_file)"
                ),
            )),
            (Some(secret), None) if secret.len() < MIN_HOP_SECRET_LEN => {
                problems.push(Problem::at(
                    "hop_secret",
                    format!(
                        "{} bytes; at least {MIN_HOP_SECRET_LEN} are needed",
                        secret.len()
                    ),
                ));
            }
            _ => {}
        }
        for (field, value) in [
            ("connect_ms", self.timeouts.connect_ms),
            ("read_ms", self.timeouts.read_ms),
            ("total_ms", self.timeouts.total_ms),
        ] {
            if value == 0 {
                problems.push(Problem::at(format!("timeouts.{field}"), "must be above 0"));
            }
        }
        if self.limits.max_header_count > MAX_HEADER_COUNT {
            problems.push(Problem::at(
                "limits.max_header_count",
                format!(
                    "{} is above the most the gateway allows, {MAX_HEADER_COUNT}",
                    self.limits.max_header_count
                ),
            ));
        }
        if self.limits.max_buffered_body_bytes < self.limits.max_body_bytes {
            problems.push(Problem::at(
                "limits.max_buffered_body_bytes",
                format!(
                    "{} is below limits.max_body_bytes ({}): a body the gateway must hold whole could never fit",
                    self.limits.max_buffered_body_bytes, self.limits.max_body_bytes
                ),
            ));
        }
        if self.table.poll_interval_ms == 0 {
            problems.push(Problem::at("table.poll_interval_ms", "must be above 0"));
        }
        if let Some(path) = &self.health_check.path
            && !path.starts_with('/')
        {
            problems.push(Problem::at(
                "health_check.path",
                format!("{path:?} must start with '/'"),
            ));
        }
        if http::HeaderName::from_bytes(self.stress_test_header.as_bytes()).is_err() {
            problems.push(Problem::at(
                "stress_test_header",
                format!("{:?} is not a header name", self.stress_test_header),
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(self.origin.render(problems))
        }
    }

    /// The hop secret, read from the file if configured that way.
    pub fn hop_secret(&self) -> Result<Vec<u8>, String> {
        match (&self.hop_secret, &self.hop_secret_file) {
            (Some(secret), _) => Ok(secret.as_bytes().to_vec()),
            (None, Some(path)) => {
                let bytes = std::fs::read(path).map_err(|e| {
                    self.problem(
                        "hop_secret_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                let trimmed = bytes.trim_ascii().to_vec();
                if trimmed.len() < MIN_HOP_SECRET_LEN {
                    return Err(self.problem(
                        "hop_secret_file",
                        format!(
                            "{}: {} bytes; at least {MIN_HOP_SECRET_LEN} are needed",
                            path.display(),
                            trimmed.len()
                        ),
                    ));
                }
                Ok(trimmed)
            }
            (None, None) => Err(self.problem("hop_secret", "no hop secret configured")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "region: hz\nlisten: { http: [\"127.0.0.1:0\"] }\ntable: { file: t.yaml }\nhop_secret: 0123456789abcdef0123456789abcdef\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let config = GatewayConfig::parse(MINIMAL, "gw.yaml").expect("valid");
        assert_eq!(config.admin.listen, "127.0.0.1:9100".parse().expect("addr"));
        assert_eq!(config.timeouts.connect_ms, 1000);
        assert_eq!(
            config.access_log,
            AccessLog {
                enabled: true,
                routing_key: RoutingKeyLog::Hashed
            }
        );
    }

    #[test]
    fn access_log_is_a_switch_or_its_options() {
        let with = |access_log: &str| {
            GatewayConfig::parse(&format!("{MINIMAL}access_log: {access_log}\n"), "gw.yaml")
                .map(|c| c.access_log)
        };
        let hashed = RoutingKeyLog::Hashed;
        assert_eq!(
            with("false"),
            Ok(AccessLog {
                enabled: false,
                routing_key: hashed
            })
        );
        assert_eq!(
            with("true"),
            Ok(AccessLog {
                enabled: true,
                routing_key: hashed
            })
        );
        assert_eq!(
            with("{ routing_key: as_is }"),
            Ok(AccessLog {
                enabled: true,
                routing_key: RoutingKeyLog::AsIs
            })
        );
        assert_eq!(
            with("\n  enabled: false\n  routing_key: omitted"),
            Ok(AccessLog {
                enabled: false,
                routing_key: RoutingKeyLog::Omitted
            })
        );
        let typo = with("{ routing_keys: as_is }").expect_err("typo");
        assert!(typo.contains("unknown field `routing_keys`"), "{typo}");
        let value = with("{ routing_key: sha256 }").expect_err("unknown mode");
        assert!(value.contains("sha256"), "{value}");
        assert!(with("maybe").is_err());
    }

    #[test]
    fn typos_are_errors_with_line_and_column() {
        let text = MINIMAL.replace("region: hz", "region: hz\ntimeout: { connect_ms: 5 }");
        let error = GatewayConfig::parse(&text, "gw.yaml").expect_err("typo");
        assert!(
            error.starts_with("gw.yaml:2:1: timeout: unknown field `timeout`, expected one of "),
            "{error}"
        );
        assert!(!error.contains("at line"), "{error}");
    }

    #[test]
    fn wrong_types_and_bad_syntax_name_the_field() {
        let text = MINIMAL.replace("\"127.0.0.1:0\"", "\"nope\"");
        assert_eq!(
            GatewayConfig::parse(&text, "gw.yaml").expect_err("type"),
            "gw.yaml:2:18: listen.http[0]: invalid socket address syntax"
        );
        assert_eq!(
            GatewayConfig::parse("region: hz\nlisten: { http: [\n", "gw.yaml").expect_err("syntax"),
            "gw.yaml:2:17: listen.http: unclosed bracket '['"
        );
    }

    #[test]
    fn short_secrets_are_refused() {
        let text = MINIMAL.replace("0123456789abcdef0123456789abcdef", "short");
        let error = GatewayConfig::parse(&text, "gw.yaml").expect_err("short");
        assert_eq!(
            error,
            "gw.yaml:4:13: hop_secret: 5 bytes; at least 32 are needed"
        );
    }

    #[test]
    fn every_problem_on_a_line_of_its_own_at_its_field() {
        let text = MINIMAL
            .replace(
                "table: { file: t.yaml }",
                "table: { file: t.yaml, poll_interval_ms: 0 }\ntimeouts:\n  read_ms: 0",
            )
            .replace("hop_secret: 0123456789abcdef0123456789abcdef\n", "");
        let error = GatewayConfig::parse(&text, "gw.yaml").expect_err("refused");
        assert_eq!(
            error.lines().collect::<Vec<_>>(),
            [
                // In source order; a missing field is placed at its parent, here the document.
                "gw.yaml:1:1: hop_secret: missing; gateways authenticate forwarded requests with a shared secret of at least 32 bytes (hop_secret or hop_secret_file)",
                "gw.yaml:3:42: table.poll_interval_ms: must be above 0",
                "gw.yaml:5:12: timeouts.read_ms: must be above 0",
            ]
        );
    }

    #[test]
    fn a_body_budget_below_the_body_limit_is_refused() {
        let text =
            format!("{MINIMAL}limits:\n  max_body_bytes: 2000\n  max_buffered_body_bytes: 1000\n");
        let error = GatewayConfig::parse(&text, "gw.yaml").expect_err("refused");
        assert!(
            error.contains(
                "limits.max_buffered_body_bytes: 1000 is below limits.max_body_bytes (2000)"
            ),
            "{error}"
        );
    }

    #[test]
    fn an_unreadable_hop_secret_file_is_placed_at_its_field() {
        let text = MINIMAL.replace(
            "hop_secret: 0123456789abcdef0123456789abcdef",
            "hop_secret_file: /nonexistent/hop",
        );
        let config = GatewayConfig::parse(&text, "gw.yaml").expect("parses");
        let error = config.hop_secret().expect_err("unreadable");
        assert!(
            error.starts_with("gw.yaml:4:18: hop_secret_file: cannot read /nonexistent/hop: "),
            "{error}"
        );
    }
}
