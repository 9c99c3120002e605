//! The web console at `/console/`: three static files (control-plane/console/), embedded in the
//! binary and served on the API's own listener, with its TLS. The page holds no data of its
//! own: it calls the API with the token the operator types in, kept in the browser's
//! `sessionStorage` and sent as `Authorization: Bearer`. The files themselves need no token.
//!
//! Every answer carries a strict Content-Security-Policy: scripts, styles and API calls from
//! this origin only, no inline script or style, no framing.

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;

/// The console's path prefix.
pub const PREFIX: &str = "/console";

/// The Content-Security-Policy of every console answer.
pub const CSP: &str =
    "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The console's files: name under `/console/`, content type, content.
pub const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../console/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../console/app.css"),
    ),
];

/// The answer to `method path` when it is a console path (`/console`, `/console/`,
/// `/console/<file>`); `None` for every other path, which the API routes. `GET` and `HEAD`
/// only (a `HEAD` answer's body is dropped by the server); other methods get `405`.
pub fn serve(method: &Method, path: &str) -> Option<Response<Full<Bytes>>> {
    let rest = path.strip_prefix(PREFIX)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    if method != Method::GET && method != Method::HEAD {
        let mut reply = answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            b"the console is read with GET\n",
        );
        reply
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Some(reply);
    }
    if rest.is_empty() {
        // Relative asset paths need the trailing slash.
        let mut reply = answer(
            StatusCode::MOVED_PERMANENTLY,
            "text/plain; charset=utf-8",
            b"",
        );
        reply
            .headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/console/"));
        return Some(reply);
    }
    let name = match &rest[1..] {
        "" => "index.html",
        name => name,
    };
    Some(match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => answer(StatusCode::OK, content_type, body),
        None => answer(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            b"no such console file\n",
        ),
    })
}

fn answer(
    status: StatusCode,
    content_type: &'static str,
    body: &'static [u8],
) -> Response<Full<Bytes>> {
    let mut reply = Response::new(Full::new(Bytes::from_static(body)));
    *reply.status_mut() = status;
    let headers = reply.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Option<Response<Full<Bytes>>> {
        serve(&Method::GET, path)
    }

    #[test]
    fn serves_the_page_and_its_files_with_their_types_and_policy() {
        for (path, content_type) in [
            ("/console/", "text/html; charset=utf-8"),
            ("/console/index.html", "text/html; charset=utf-8"),
            ("/console/app.js", "text/javascript; charset=utf-8"),
            ("/console/app.css", "text/css; charset=utf-8"),
        ] {
            let reply = get(path).expect(path);
            assert_eq!(reply.status(), StatusCode::OK, "{path}");
            let h = reply.headers();
            assert_eq!(h[header::CONTENT_TYPE], content_type, "{path}");
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], CSP);
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
            assert_eq!(h[header::CACHE_CONTROL], "no-cache");
        }
        let reply = get("/console").expect("redirect");
        assert_eq!(reply.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(reply.headers()[header::LOCATION], "/console/");
        assert_eq!(
            serve(&Method::HEAD, "/console/app.js").map(|r| r.status()),
            Some(StatusCode::OK)
        );
    }

    #[test]
    fn leaves_other_paths_to_the_api() {
        for path in [
            "/",
            "/v1/status",
            "/consoles",
            "/console.js",
            "/v1/console/",
        ] {
            assert!(get(path).is_none(), "{path}");
        }
        assert_eq!(
            get("/console/nope.js").map(|r| r.status()),
            Some(StatusCode::NOT_FOUND)
        );
        assert_eq!(
            get("/console/../v1/status").map(|r| r.status()),
            Some(StatusCode::NOT_FOUND)
        );
        let post = serve(&Method::POST, "/console/").expect("post");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn assets_are_small_and_self_contained() {
        let total: usize = ASSETS.iter().map(|(_, _, body)| body.len()).sum();
        assert!(total < 300 * 1024, "console assets are {total} bytes");
        for (name, _, body) in ASSETS {
            let text = std::str::from_utf8(body).expect("UTF-8");
            let lower = text.to_ascii_lowercase();
            for banned in ["http://", "https://", "//cdn", "innerhtml", "outerhtml"] {
                assert!(!lower.contains(banned), "{name} contains {banned:?}");
            }
            assert!(
                !lower.contains("insertadjacenthtml") && !lower.contains("document.write"),
                "{name} writes HTML from strings"
            );
            assert!(!lower.contains("eval("), "{name} calls eval");
            // Inline handlers (onclick=, onerror=, ...) as attributes or properties: the CSP
            // refuses the first, and handlers are attached with addEventListener.
            let bytes = lower.as_bytes();
            for (i, _) in lower.match_indices("on") {
                let before = i.checked_sub(1).map(|j| bytes[j]);
                if !matches!(
                    before,
                    Some(b' ' | b'\t' | b'\n' | b'"' | b'\'' | b'.' | b'<')
                ) {
                    continue;
                }
                let word: String = lower[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphabetic())
                    .collect();
                let after = lower[i + word.len()..].trim_start();
                assert!(
                    word.len() <= 3 || !after.starts_with('=') || after.starts_with("=="),
                    "{name}: inline handler {word}="
                );
            }
            if *name == "index.html" {
                assert!(!lower.contains("style="), "{name}: inline style");
                assert!(!lower.contains("<style"), "{name}: inline style");
                for script in lower.split("<script").skip(1) {
                    let tag_end = script.find('>').expect("script tag");
                    assert!(script[..tag_end].contains("src="), "{name}: inline script");
                    assert!(
                        script[tag_end + 1..].trim_start().starts_with("</script>"),
                        "{name}: inline script"
                    );
                }
                assert!(!lower.contains("javascript:"), "{name}: javascript: URL");
            }
            if *name == "app.js" {
                // Handlers are attached with addEventListener, never as attributes.
                assert!(
                    !lower.contains("setattribute(\"on"),
                    "{name}: handler attribute"
                );
                assert!(
                    !lower.contains("setattribute('on"),
                    "{name}: handler attribute"
                );
                // The token is never put into a URL, a cookie or the console's log.
                assert!(!lower.contains("document.cookie"), "{name}: cookie");
                assert!(!lower.contains("localstorage"), "{name}: localStorage");
                assert!(!lower.contains("console.log"), "{name}: logging");
            }
        }
    }
}
