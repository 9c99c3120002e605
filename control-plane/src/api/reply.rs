//! Answers and request parts shared by the handlers: JSON answers, JSON errors carried out of
//! a handler with `?`, bodies read within the size limit, query parameters.

use std::borrow::Cow;

use bytes::Bytes;
use control_api::ApiError;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::refused::{Kind, Refused};
use crate::store::StoreError;

/// An answer.
pub type Reply = Response<Full<Bytes>>;

/// A handler's answer: an error answer comes out with `?`.
pub type Handled = Result<Reply, Refusal>;

/// A JSON answer.
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Reply {
    let bytes = serde_json::to_vec_pretty(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A JSON error answer.
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Reply {
    api_error(
        status,
        ApiError {
            error: code.into(),
            message: message.into(),
            problems: Vec::new(),
        },
    )
}

fn api_error(status: StatusCode, body: ApiError) -> Reply {
    let mut reply = json(status, &body);
    reply.extensions_mut().insert(ErrorMessage(body.message));
    reply
}

/// An answer without a body.
pub fn empty(status: StatusCode) -> Reply {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// The message of an error answer, kept beside the body for the audit log.
#[derive(Debug, Clone)]
struct ErrorMessage(String);

/// What the audit log's `detail` says of a successful call (an error's is its message).
#[derive(Debug, Clone)]
struct AuditDetail(String);

/// `reply` with `detail` for the audit log's entry of the call.
pub fn with_audit_detail(mut reply: Reply, detail: String) -> Reply {
    reply.extensions_mut().insert(AuditDetail(detail));
    reply
}

/// The message of an error answer, or the detail a successful one carries for the audit log.
pub fn reply_message(reply: &Reply) -> Option<String> {
    let extensions = reply.extensions();
    extensions
        .get::<ErrorMessage>()
        .map(|m| m.0.clone())
        .or_else(|| extensions.get::<AuditDetail>().map(|d| d.0.clone()))
}

/// An error answer, carried out of a handler with `?` (boxed: answers are large).
pub struct Refusal(pub Box<Reply>);

impl Refusal {
    /// An error answer with this status, code and message.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self(Box::new(error(status, code, message)))
    }
}

/// The HTTP status of each kind of refusal.
fn status_of(kind: Kind) -> StatusCode {
    match kind {
        Kind::BadRequest => StatusCode::BAD_REQUEST,
        Kind::NotFound => StatusCode::NOT_FOUND,
        Kind::Conflict => StatusCode::CONFLICT,
        Kind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
        Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<Refused> for Refusal {
    fn from(refused: Refused) -> Self {
        Self(Box::new(api_error(
            status_of(refused.kind),
            ApiError {
                error: refused.code.into(),
                message: refused.message,
                problems: refused.problems,
            },
        )))
    }
}

impl From<StoreError> for Refusal {
    fn from(error: StoreError) -> Self {
        Refused::from(error).into()
    }
}

/// `ETag` of a version.
pub fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// The request body within `limit` bytes, and whether its content type says JSON.
pub async fn read_body(request: Request<Incoming>, limit: usize) -> Result<(Bytes, bool), Refusal> {
    let too_large = || {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => Ok((collected.to_bytes(), json)),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(e) => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("cannot read the request body: {e}"),
        )),
    }
}

/// The request's JSON body as `T`, read within `limit` bytes.
pub async fn json_body<T: DeserializeOwned>(
    request: Request<Incoming>,
    limit: usize,
) -> Result<T, Refusal> {
    let (body, _) = read_body(request, limit).await?;
    parse_json_body(&body)
}

/// Parse a JSON body as `T`, naming the field path of any error. A whole number written as a
/// float (`5.0`, an integer to JSON Schema, and what some serialisers write) is taken as the
/// integer it is.
pub fn parse_json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    let invalid = |at: String, message: String| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("{at}: {message}"),
        )
    };
    let mut value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| invalid("body".to_owned(), e.to_string()))?;
    whole_floats_as_integers(&mut value);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." || path.is_empty() {
            "body".to_owned()
        } else {
            format!("body.{path}")
        };
        invalid(at, e.inner().to_string())
    })
}

/// Every float without a fractional part that an integer type can hold, as that integer.
fn whole_floats_as_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // 2^64 and -2^63 as floats: the bounds of u64 and i64, exclusive and inclusive.
            if f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f) {
                *value = Value::from(f as u64);
            } else if f.fract() == 0.0 && (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
                *value = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_floats_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(whole_floats_as_integers),
        _ => {}
    }
}

/// A header's value as text: absent is `None`; present but not UTF-8 is refused, naming the
/// header (a reason in any language is UTF-8; a header that cannot be read is never taken
/// for an absent one).
pub fn header_text(headers: &http::HeaderMap, name: &str) -> Result<Option<String>, Refusal> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    std::str::from_utf8(value.as_bytes())
        .map(|v| Some(v.trim().to_owned()))
        .map_err(|_| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                "bad_header",
                format!("{name}: not UTF-8 text"),
            )
        })
}

/// The value of `name` in a query string, percent-decoded (`%3A` is `:`, as form encoding
/// sends it); bytes that are not UTF-8 become U+FFFD, which no parameter's check accepts.
pub fn query<'q>(query: Option<&'q str>, name: &str) -> Option<Cow<'q, str>> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_encoding::percent_decode_str(v).decode_utf8_lossy())
}

/// A gateway or region name as the API accepts it.
pub fn is_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'))
}

/// A table digest as the API accepts it: `sha256:` and 64 hex digits.
pub fn is_digest(value: &str) -> bool {
    value
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        let q = Some("after=3&gateway=hz%3A1%40a&flag&digest=sha256%3Aab");
        assert_eq!(query(q, "after").as_deref(), Some("3"));
        assert_eq!(query(q, "gateway").as_deref(), Some("hz:1@a"));
        assert_eq!(query(q, "flag").as_deref(), Some(""));
        assert_eq!(query(q, "digest").as_deref(), Some("sha256:ab"));
        assert_eq!(query(q, "region"), None);
        assert!(!is_name(
            &query(Some("gateway=hz%FF"), "gateway").expect("gateway")
        ));
    }

    #[test]
    fn whole_floats_are_integers_and_others_stay() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Body {
            n: u64,
            i: i64,
            x: f64,
        }
        let body: Body = parse_json_body(br#"{"n": 5.0, "i": -3.0, "x": 2.5}"#)
            .unwrap_or_else(|_| panic!("refused"));
        assert_eq!(
            body,
            Body {
                n: 5,
                i: -3,
                x: 2.5
            }
        );
        for refused in [
            &br#"{"n": 5.5, "i": 0, "x": 0}"#[..],
            br#"{"n": 1e20, "i": 0, "x": 0}"#,
        ] {
            assert!(parse_json_body::<Body>(refused).is_err());
        }
    }
}
