//! Bearer tokens with roles. Only SHA-256 digests of tokens are kept: a leaked config or core
//! dump does not leak a usable token.

use std::collections::HashMap;
use std::path::PathBuf;

use ring::digest::{SHA256, digest};
use serde::Deserialize;

/// Shortest token accepted, in characters.
pub const MIN_TOKEN_LEN: usize = 32;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads.
    Viewer,
    /// Reads, plans and flips.
    Operator,
    /// Everything an operator may, and table writes.
    Admin,
    /// Watch and report only: what a gateway needs, nothing else.
    Gateway,
}

impl Role {
    /// The name used in configs and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Gateway => "gateway",
        }
    }

    /// Whether this role may do what `need` asks.
    pub fn allows(self, need: Need) -> bool {
        match need {
            Need::Nothing => true,
            Need::Read => matches!(self, Role::Viewer | Role::Operator | Role::Admin),
            Need::Operate => matches!(self, Role::Operator | Role::Admin),
            Need::Admin => self == Role::Admin,
            Need::Gateway => self == Role::Gateway,
        }
    }
}

/// What an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Open to all (`/healthz` only).
    Nothing,
    /// The `viewer` role or above.
    Read,
    /// The `operator` role or above.
    Operate,
    /// The `admin` role.
    Admin,
    /// The `gateway` role.
    Gateway,
}

impl Need {
    /// The roles that satisfy it, for error messages and the API document.
    pub fn roles(self) -> &'static str {
        match self {
            Need::Nothing => "none",
            Need::Read => "viewer, operator or admin",
            Need::Operate => "operator or admin",
            Need::Admin => "admin",
            Need::Gateway => "gateway",
        }
    }
}

/// A token holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Token name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// For a `gateway` token: the gateways it may speak for.
    pub binding: Option<GatewayBinding>,
}

/// The gateways one `gateway` token may speak for: ids matching a pattern, in one region. A
/// stolen gateway token cannot claim to be a gateway of another region, nor count towards
/// another region's convergence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayBinding {
    /// A gateway id, or a pattern where `*` stands for any run of characters (`hz-*`).
    pub id_pattern: String,
    /// The region.
    pub region: String,
}

impl GatewayBinding {
    /// Why a gateway `id` of `region` may not use this token, if it may not.
    pub fn refuses(&self, id: &str, region: &str) -> Option<String> {
        if region != self.region {
            return Some(format!(
                "this token is bound to region {:?}, not {region:?}",
                self.region
            ));
        }
        if !glob_matches(&self.id_pattern, id) {
            return Some(format!(
                "this token is bound to gateway ids {:?}, which {id:?} does not match",
                self.id_pattern
            ));
        }
        None
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}
/// One API token. Give its SHA-256 (`unitgate-control hash-token`) or a file holding it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it: shown in the audit log.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Hex SHA-256 of the token.
    #[serde(default)]
    pub sha256: Option<String>,
    /// A file holding the token (e.g. a mounted secret); read at start, kept only as a hash.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// `gateway` tokens: the gateway id, or a pattern with `*` (`hz-*`), the token may speak
    /// for. Required for that role.
    #[serde(default)]
    pub gateway_id: Option<String>,
    /// `gateway` tokens: the region of the gateways the token may speak for. Required for
    /// that role.
    #[serde(default)]
    pub region: Option<String>,
}

/// The tokens the control plane accepts, by digest.
#[derive(Debug)]
pub struct Tokens {
    by_digest: HashMap<[u8; 32], Principal>,
}

/// Hex SHA-256 of a token, as configs hold it.
pub fn hash_token(token: &str) -> String {
    digest(&SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn digest_of(token: &str) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    out
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token that is not one of ours.
    Unknown,
}

impl Tokens {
    /// Load the configured tokens; refuses none, duplicates, short tokens and bad digests.
    pub fn load(configs: &[TokenConfig]) -> Result<Self, String> {
        if configs.is_empty() {
            return Err(
                "tokens: no API tokens configured; the control plane does not run open".into(),
            );
        }
        let mut by_digest = HashMap::new();
        for (i, config) in configs.iter().enumerate() {
            let at = format!("tokens[{i}] ({})", config.name);
            if config.name.trim().is_empty() {
                return Err(format!("tokens[{i}].name: empty"));
            }
            let digest = match (&config.sha256, &config.token_file) {
                (Some(hex), None) => parse_hex(hex).ok_or_else(|| {
                    format!("{at}.sha256: not 64 hex digits (make one with `unitgate-control hash-token`)")
                })?,
                (None, Some(path)) => {
                    let token = std::fs::read_to_string(path)
                        .map_err(|e| format!("{at}.token_file: {}: {e}", path.display()))?;
                    let token = token.trim();
                    if token.chars().count() < MIN_TOKEN_LEN {
                        return Err(format!(
                            "{at}.token_file: {}: the token has {} characters; at least {MIN_TOKEN_LEN} are required",
                            path.display(),
                            token.chars().count()
                        ));
                    }
                    digest_of(token)
                }
                _ => return Err(format!("{at}: give exactly one of sha256 or token_file")),
            };
            let binding = match (config.role, &config.gateway_id, &config.region) {
                (Role::Gateway, Some(id), Some(region))
                    if !id.trim().is_empty() && !region.trim().is_empty() =>
                {
                    Some(GatewayBinding {
                        id_pattern: id.clone(),
                        region: region.clone(),
                    })
                }
                (Role::Gateway, _, _) => {
                    return Err(format!(
                        "{at}: a gateway token must name the gateway_id (or a pattern such as hz-*) and the region it speaks for"
                    ));
                }
                (_, None, None) => None,
                (role, _, _) => {
                    return Err(format!(
                        "{at}: gateway_id and region bind gateway tokens only; this token's role is {}",
                        role.as_str()
                    ));
                }
            };
            let principal = Principal {
                name: config.name.clone(),
                role: config.role,
                binding,
            };
            if by_digest.insert(digest, principal).is_some() {
                return Err(format!("{at}: the same token is configured twice"));
            }
        }
        Ok(Self { by_digest })
    }

    /// Who holds the token in an `Authorization` header value.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<&Principal, AuthFailure> {
        let value = authorization.ok_or(AuthFailure::Missing)?;
        // The scheme is case-insensitive (RFC 9110, section 11.1).
        let token = value
            .split_at_checked(7)
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"bearer "))
            .and_then(|(_, t)| std::str::from_utf8(t).ok())
            .map(str::trim)
            .ok_or(AuthFailure::Missing)?;
        // Short tokens are refused before any lookup: a config can only hold digests, so this
        // is where a short token configured by digest is kept from ever working.
        if token.chars().count() < MIN_TOKEN_LEN {
            return Err(AuthFailure::Unknown);
        }
        // The map is keyed by the digest, so lookup time does not depend on how much of the
        // secret a guess got right.
        self.by_digest
            .get(&digest_of(token))
            .ok_or(AuthFailure::Unknown)
    }
}

/// A new random token: 32 random bytes, URL-safe base64 without padding (43 characters).
pub fn new_token() -> String {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 32];
    // SystemRandom reads the OS generator; it fails only when the OS has none.
    if SystemRandom::new().fill(&mut bytes).is_err() {
        bytes.iter_mut().for_each(|b| *b = fastrand::u8(..));
    }
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, role: Role, sha256: String) -> TokenConfig {
        TokenConfig {
            name: name.into(),
            role,
            sha256: Some(sha256),
            token_file: None,
            gateway_id: None,
            region: None,
        }
    }

    #[test]
    fn gateway_tokens_are_bound_to_ids_and_a_region() {
        let token = new_token();
        let unbound = Tokens::load(&[config("gw", Role::Gateway, hash_token(&token))])
            .expect_err("a gateway token needs a binding");
        assert!(unbound.contains("gateway_id"), "{unbound}");
        let tokens = Tokens::load(&[TokenConfig {
            gateway_id: Some("hz-*".into()),
            region: Some("hz".into()),
            ..config("gw", Role::Gateway, hash_token(&token))
        }])
        .expect("bound");
        let who = tokens
            .authenticate(Some(format!("bearer {token}").as_bytes()))
            .expect("the scheme is case-insensitive");
        let binding = who.binding.as_ref().expect("binding");
        assert_eq!(binding.refuses("hz-gw-1", "hz"), None);
        assert!(binding.refuses("sh-gw-1", "hz").is_some());
        assert!(binding.refuses("hz-gw-1", "sh").is_some());
        let viewer = Tokens::load(&[TokenConfig {
            region: Some("hz".into()),
            ..config("v", Role::Viewer, hash_token(&token))
        }])
        .expect_err("only gateway tokens are bound");
        assert!(viewer.contains("role is viewer"), "{viewer}");
    }

    #[test]
    fn globs() {
        for (pattern, text, matches) in [
            ("hz-*", "hz-1", true),
            ("hz-*", "hz-", true),
            ("hz-*", "sh-1", false),
            ("hz-1", "hz-1", true),
            ("hz-1", "hz-12", false),
            ("*", "", true),
            ("*-gw-*", "hz-gw-3", true),
            ("*-gw-*", "hz-gx-3", false),
            ("a*a", "a", false),
            ("a*a", "aa", true),
        ] {
            assert_eq!(glob_matches(pattern, text), matches, "{pattern} ~ {text}");
        }
    }

    #[test]
    fn tokens_are_known_by_digest_only() {
        let token = new_token();
        assert_eq!(token.len(), 43);
        let tokens = Tokens::load(&[config("ops", Role::Operator, hash_token(&token))])
            .expect("one token loads");
        let header = format!("Bearer {token}");
        let who = tokens
            .authenticate(Some(header.as_bytes()))
            .expect("the configured token authenticates");
        assert_eq!((who.name.as_str(), who.role), ("ops", Role::Operator));
        assert_eq!(
            tokens.authenticate(Some(format!("Bearer {}", new_token()).as_bytes())),
            Err(AuthFailure::Unknown)
        );
        assert_eq!(tokens.authenticate(None), Err(AuthFailure::Missing));
        assert_eq!(
            tokens.authenticate(Some(token.as_bytes())),
            Err(AuthFailure::Missing),
            "no Bearer scheme"
        );
    }

    #[test]
    fn a_short_token_never_authenticates_even_when_its_digest_is_configured() {
        let short = "short-token";
        let tokens = Tokens::load(&[config("weak", Role::Admin, hash_token(short))])
            .expect("digests cannot be checked for length");
        assert_eq!(
            tokens.authenticate(Some(format!("Bearer {short}").as_bytes())),
            Err(AuthFailure::Unknown)
        );
    }

    #[test]
    fn refuses_no_tokens_bad_digests_short_files_and_duplicates() {
        assert!(Tokens::load(&[]).is_err());
        let bad = Tokens::load(&[config("x", Role::Viewer, "abc".into())]).expect_err("refused");
        assert!(bad.contains("tokens[0] (x).sha256"), "{bad}");
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("token");
        std::fs::write(&file, "too-short\n").expect("write");
        let short = Tokens::load(&[TokenConfig {
            name: "gw".into(),
            role: Role::Gateway,
            sha256: None,
            token_file: Some(file),
            gateway_id: Some("*".into()),
            region: Some("hz".into()),
        }])
        .expect_err("refused");
        assert!(short.contains("at least 32"), "{short}");
        let digest = hash_token(&new_token());
        let twice = Tokens::load(&[
            config("a", Role::Viewer, digest.clone()),
            config("b", Role::Admin, digest),
        ])
        .expect_err("refused");
        assert!(twice.contains("twice"), "{twice}");
    }

    #[test]
    fn role_matrix() {
        use Need::*;
        let table = [
            (Role::Viewer, [true, true, false, false, false]),
            (Role::Operator, [true, true, true, false, false]),
            (Role::Admin, [true, true, true, true, false]),
            (Role::Gateway, [true, false, false, false, true]),
        ];
        for (role, expected) in table {
            let got = [Nothing, Read, Operate, Admin, Gateway].map(|n| role.allows(n));
            assert_eq!(got, expected, "{role:?}");
        }
    }
}
