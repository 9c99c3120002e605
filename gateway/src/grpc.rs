//! The gateway's own answers (no route, frozen unit, upstream down, flow control, ...) as a gRPC
//! client understands them.
//!
//! gRPC reads a call's outcome from `grpc-status` and `grpc-message`, not from the HTTP status:
//! a gRPC client shown a `503` with a JSON body reports a protocol error, not `UNAVAILABLE`. So
//! a gRPC request (`content-type: application/grpc`, `application/grpc+proto`, ...) gets a
//! *Trailers-Only* response (gRPC over HTTP/2, PROTOCOL-HTTP2.md): HTTP status 200,
//! `content-type: application/grpc`, `grpc-status` and the percent-encoded `grpc-message` in the
//! one header block, and no body — on HTTP/2 a single HEADERS frame with END_STREAM.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::{BodyExt, Empty};

use crate::upstream::Body;

/// `grpc-status`.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`.
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// `grpc-timeout`: the client's deadline for the call.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The `grpc-timeout` value for the time left until `deadline`, in milliseconds (at least 1): a
/// client's deadline goes on to the next hop as what is left of it, so that the upstream, or
/// another region's gateway, stops when the client has stopped waiting.
pub fn time_left(deadline: std::time::Instant) -> String {
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    // Eight digits at most: about 27 hours of milliseconds.
    let millis = left.as_millis().clamp(1, 99_999_999);
    format!("{millis}m")
}

/// A `grpc-timeout` value as a duration: at most 8 digits and a unit, `H`ours, `M`inutes,
/// `S`econds, `m`illiseconds, `u`microseconds or `n`anoseconds (PROTOCOL-HTTP2.md). `None` for
/// anything else: a value the gateway cannot read is passed on, not acted on.
pub fn timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Whether a request (or response) with `headers` is gRPC: its content type is
/// `application/grpc`, alone or with a `+format` or parameters. gRPC-Web
/// (`application/grpc-web`) carries its status in the body and is not.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    let value = value.as_bytes();
    value
        .get(..16)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"application/grpc"))
        && matches!(value.get(16), None | Some(b'+' | b';'))
}

/// The gRPC status code for an answer the gateway made with HTTP status `status`: what a
/// client should do about it, by the codes' documented meanings (the retryable ones are
/// `UNAVAILABLE` and, for the caller's own deadline, `DEADLINE_EXCEEDED`).
pub fn code_for(status: StatusCode) -> u8 {
    match status.as_u16() {
        // A missing or invalid routing key, a malformed request.
        400 => 3,  // INVALID_ARGUMENT
        401 => 16, // UNAUTHENTICATED
        403 => 7,  // PERMISSION_DENIED
        // No route for this method: to the caller the method is not served here.
        404 => 12, // UNIMPLEMENTED
        // The client's body came too slowly; the upstream did not answer in time.
        408 | 504 => 4, // DEADLINE_EXCEEDED
        // Flow control and size limits.
        413 | 414 | 429 | 431 => 8, // RESOURCE_EXHAUSTED
        501 => 12,                  // UNIMPLEMENTED
        // Upstream unreachable, unit write-frozen, no table yet, gateways that disagree for
        // the moment on where a request belongs: all pass; retry later.
        502 | 503 | 508 => 14, // UNAVAILABLE
        500 => 13,             // INTERNAL
        _ => 2,                // UNKNOWN
    }
}

/// The Trailers-Only response for an answer the gateway made with `status` and the JSON
/// `body` it would send a plain HTTP client: `body` becomes the `grpc-message`.
pub fn trailers_only(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Empty::<Bytes>::new().map_err(|n| match n {}).boxed());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(GRPC_STATUS, HeaderValue::from(u16::from(code_for(status))));
    headers.insert(GRPC_MESSAGE, encode_message(&body.to_string()));
    response
}

/// `text` as a `grpc-message` value: printable ASCII but `%` as it is, every other byte as
/// `%XX` (PROTOCOL-HTTP2.md, Status-Message).
pub fn encode_message(text: &str) -> HeaderValue {
    let mut encoded = Vec::with_capacity(text.len());
    for &byte in text.as_bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(byte);
        } else {
            encoded.extend_from_slice(format!("%{byte:02X}").as_bytes());
        }
    }
    HeaderValue::from_bytes(&encoded).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_type(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(value).expect("value"),
        );
        headers
    }

    #[test]
    fn grpc_timeouts_are_read_by_their_unit() {
        let read = |value: &str| timeout(value.as_bytes());
        assert_eq!(read("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(read("2M"), Some(Duration::from_secs(120)));
        assert_eq!(read("3S"), Some(Duration::from_secs(3)));
        assert_eq!(read("250m"), Some(Duration::from_millis(250)));
        assert_eq!(read("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(read("5n"), Some(Duration::from_nanos(5)));
        // More than 8 digits, no digits, no or an unknown unit, a sign, a space: not read.
        for bad in [
            "123456789m",
            "m",
            "100",
            "100x",
            "-1S",
            "+1S",
            " 1S",
            "1 S",
            "1s",
            "",
        ] {
            assert_eq!(read(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn grpc_is_told_by_its_content_type() {
        for grpc in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC+json",
            "application/grpc;charset=utf-8",
        ] {
            assert!(is_grpc(&with_type(grpc)), "{grpc}");
        }
        for other in [
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/json",
            "application/grp",
            "",
        ] {
            assert!(!is_grpc(&with_type(other)), "{other}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn the_gateways_answers_become_trailers_only_responses() {
        let response = trailers_only(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"error": "unit is write-frozen", "unit": "u03", "note": "100% ünïcode"}),
        );
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers[header::CONTENT_TYPE], "application/grpc");
        assert_eq!(headers[GRPC_STATUS], "14");
        assert_eq!(
            headers[GRPC_MESSAGE],
            r#"{"error":"unit is write-frozen","note":"100%25 %C3%BCn%C3%AFcode","unit":"u03"}"#
        );
        assert!(hyper::body::Body::is_end_stream(response.body()));

        let codes = [
            (400, 3),
            (404, 12),
            (408, 4),
            (413, 8),
            (429, 8),
            (502, 14),
            (503, 14),
            (504, 4),
            (508, 14),
            (418, 2),
        ];
        for (http, grpc) in codes {
            let status = StatusCode::from_u16(http).expect("status");
            assert_eq!(code_for(status), grpc, "{http}");
        }
    }
}
