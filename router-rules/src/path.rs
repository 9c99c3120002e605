//! Request paths as routing reads them: in the form a server that decodes and resolves them
//! acts on, so that no route, no frozen or protected unit and no key taken from the path can be
//! dodged by spelling the same path another way (`/order/42/../5042` is `/order/5042`;
//! `/%6Frder/5042` is `/order/5042`). The gateway routes by the normalized path and sends it
//! upstream; the dry-run shows the same.

use std::borrow::Cow;

/// Why a path is refused rather than normalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%2F` or `%5C`: an encoded `/` or `\`, a separator to some servers and not to others.
    EncodedSeparator,
    /// `%00`: an encoded NUL, which ends the path early in some servers.
    EncodedNul,
    /// `%` not followed by two hex digits.
    BadEscape,
}

impl PathError {
    /// What is wrong, for error bodies and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            PathError::EncodedSeparator => "encoded '/' or '\\' (%2F, %5C) in the path",
            PathError::EncodedNul => "encoded NUL (%00) in the path",
            PathError::BadEscape => "'%' not followed by two hex digits in the path",
        }
    }
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for PathError {}

/// `path` (starting with `/`) with its percent-encoded unreserved characters decoded and its
/// dot segments removed (RFC 3986 sections 6.2.2.2 and 5.2.4); borrowed as it came when that
/// changes nothing, as for nearly every path. Other escapes are kept as they are. The result
/// normalizes to itself.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !needs_change(path.as_bytes())? {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path.as_bytes());
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// Whether `path` has an escape to decode or a dot segment; an error for an escape refused.
fn needs_change(path: &[u8]) -> Result<bool, PathError> {
    // Every request's path comes here: most have neither byte, found out in one vector scan.
    let Some(first) = memchr::memchr2(b'%', b'.', path) else {
        return Ok(false);
    };
    let mut change = false;
    for (at, &b) in path.iter().enumerate().skip(first) {
        match b {
            b'%' => {
                let byte = escaped(path, at).ok_or(PathError::BadEscape)?;
                match byte {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0 => return Err(PathError::EncodedNul),
                    _ => change |= is_unreserved(byte),
                }
            }
            b'.' if at == 0 || path[at - 1] == b'/' => {
                let rest = &path[at + 1..];
                let segment_ends = |rest: &[u8]| rest.is_empty() || rest[0] == b'/';
                change |= segment_ends(rest) || (rest[0] == b'.' && segment_ends(&rest[1..]));
            }
            _ => {}
        }
    }
    Ok(change)
}

/// The byte the escape at `at` (a `%`) stands for.
fn escaped(path: &[u8], at: usize) -> Option<u8> {
    let hex = path.get(at + 1..at + 3)?;
    let digit = |b: u8| char::from(b).to_digit(16);
    Some((digit(hex[0])? * 16 + digit(hex[1])?) as u8)
}

/// RFC 3986 section 2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// `path` with the escapes of unreserved characters decoded (every escape checked already).
fn decode_unreserved(path: &[u8]) -> String {
    let mut out = String::with_capacity(path.len());
    let mut at = 0;
    while at < path.len() {
        if path[at] == b'%'
            && let Some(byte) = escaped(path, at).filter(|b| is_unreserved(*b))
        {
            out.push(char::from(byte));
            at += 3;
            continue;
        }
        out.push(char::from(path[at]));
        at += 1;
    }
    out
}

/// RFC 3986 section 5.2.4 for an absolute path: `.` segments go, `..` takes the one before
/// with it (none above the root), and a path that ended in either ends in `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut segments = path.strip_prefix('/').unwrap_or(path).split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "." | ".." => {
                if segment == ".." {
                    kept.pop();
                }
                if last {
                    kept.push("");
                }
            }
            _ => kept.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, PathError> {
        normalize(path).map(Cow::into_owned)
    }

    #[test]
    fn usual_paths_are_borrowed_as_they_are() {
        for path in [
            "/",
            "/order/42",
            "/static/app.v2.js",
            "/a/.hidden/..x/...",
            "/a//b/",
            "/q%20r/%E4%BD%A0",
            "/%25/%3F",
        ] {
            assert!(
                matches!(normalize(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
    }

    #[test]
    fn dot_segments_are_removed_as_rfc_3986_says() {
        for (path, normal) in [
            ("/order/42/../5042", "/order/5042"),
            ("/a/./b", "/a/b"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/../../etc", "/etc"),
            ("/a/../../b/./c/..", "/b/"),
            ("/a//../b", "/a/b"),
        ] {
            assert_eq!(norm(path).as_deref(), Ok(normal), "{path}");
        }
    }

    #[test]
    fn escapes_of_unreserved_characters_are_decoded_before_dot_segments_go() {
        for (path, normal) in [
            ("/%70rivate/x", "/private/x"),
            ("/%6f%72der/42", "/order/42"),
            ("/order/42/%2e%2E/5042", "/order/5042"),
            ("/order/42/.%2E/5042", "/order/5042"),
            ("/~a/%7E%2D%5F", "/~a/~-_"),
            ("/keep/%20/%25/%e4", "/keep/%20/%25/%e4"),
        ] {
            assert_eq!(norm(path).as_deref(), Ok(normal), "{path}");
            assert_eq!(norm(normal).as_deref(), Ok(normal), "{normal} again");
        }
    }

    #[test]
    fn escapes_servers_disagree_about_are_refused() {
        for (path, error) in [
            ("/order/42%2F..%2F5042", PathError::EncodedSeparator),
            ("/a%2fb", PathError::EncodedSeparator),
            ("/a%5Cb", PathError::EncodedSeparator),
            ("/a%00.json", PathError::EncodedNul),
            ("/a%", PathError::BadEscape),
            ("/a%4", PathError::BadEscape),
            ("/a%zz", PathError::BadEscape),
        ] {
            assert_eq!(norm(path), Err(error), "{path}");
        }
    }
}
