//! Request paths as routing reads them: in the form a server that decodes and resolves them
//! acts on, so that no route, no frozen or protected unit and no key taken from the path can be
//! dodged by spelling the same path another way (`/order/42/../5042` is `/order/5042`;
//! `/%6Frder/5042` is `/order/5042`; `//order` is `/order`). The gateway routes by the
//! normalized path and sends it upstream; the dry-run shows the same. What servers read in
//! different ways is refused instead: encoded separators, a backslash, dot segments with
//! parameters (`..;`, which Tomcat and Jetty read as `..`).

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
    /// A `\`, a separator to some servers.
    Backslash,
    /// A dot segment with parameters (`..;x`, `.;x`, `..%3B`, spelt with escapes or not): `..` to
    /// servers that drop parameters; or a segment of parameters only (`/;x/`), an empty one
    /// to them.
    SegmentParameters,
    /// Neither `*` nor starting with `/`.
    NotAbsolute,
}

impl PathError {
    /// What is wrong, for error bodies and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            PathError::EncodedSeparator => "encoded '/' or '\\' (%2F, %5C) in the path",
            PathError::EncodedNul => "encoded NUL (%00) in the path",
            PathError::BadEscape => "'%' not followed by two hex digits in the path",
            PathError::Backslash => "'\\' in the path",
            PathError::SegmentParameters => {
                "dot or empty segment with parameters ('..;', '/;') in the path"
            }
            PathError::NotAbsolute => "path does not start with '/'",
        }
    }
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for PathError {}

/// `path` (starting with `/`, or `*`) with its percent-encoded unreserved characters decoded,
/// its dot segments removed (RFC 3986 sections 6.2.2.2 and 5.2.4) and runs of `/` made one;
/// borrowed as it came when that changes nothing, as for nearly every path. Other escapes are
/// kept as they are. The result normalizes to itself.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if path == "*" {
        return Ok(Cow::Borrowed(path));
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if !needs_change(path.as_bytes())? {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path.as_bytes());
    remove_dot_segments(&decoded).map(Cow::Owned)
}

/// Bytes that may make a path change or be refused: `%`, `.`, `\\` and `/` (in a run).
static LOOK_CLOSER: [bool; 256] = {
    let mut table = [false; 256];
    table[b'%' as usize] = true;
    table[b'.' as usize] = true;
    table[b'\\' as usize] = true;
    table[b'/' as usize] = true;
    table[b';' as usize] = true;
    table
};

/// Whether `path` has an escape to decode, a dot segment or a run of `/`; an error for what
/// is refused. Every request's path comes here: one pass, a table lookup a byte.
fn needs_change(path: &[u8]) -> Result<bool, PathError> {
    let mut change = false;
    for (at, &b) in path.iter().enumerate() {
        if !LOOK_CLOSER[usize::from(b)] {
            continue;
        }
        match b {
            b'\\' => return Err(PathError::Backslash),
            b'/' => change |= path.get(at + 1) == Some(&b'/'),
            b';' if path[at - 1] == b'/' => return Err(PathError::SegmentParameters),
            b'%' => {
                let byte = escaped(path, at).ok_or(PathError::BadEscape)?;
                match byte {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0 => return Err(PathError::EncodedNul),
                    // Checked with the segment it ends (`remove_dot_segments`).
                    b';' => change = true,
                    _ => change |= is_unreserved(byte),
                }
            }
            b'.' if at == 0 || path[at - 1] == b'/' => {
                let rest = &path[at + 1..];
                let rest = rest.strip_prefix(b".").unwrap_or(rest);
                match rest.first() {
                    None | Some(b'/') => change = true,
                    Some(b';') => return Err(PathError::SegmentParameters),
                    _ => {}
                }
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

/// `path` with the escapes of unreserved characters decoded (every escape checked already);
/// its other bytes, UTF-8 among them, as they came.
fn decode_unreserved(path: &[u8]) -> String {
    let mut out = Vec::with_capacity(path.len());
    let mut at = 0;
    while at < path.len() {
        if path[at] == b'%'
            && let Some(byte) = escaped(path, at).filter(|b| is_unreserved(*b))
        {
            out.push(byte);
            at += 3;
            continue;
        }
        out.push(path[at]);
        at += 1;
    }
    // UTF-8 as it came, with ASCII bytes put for escapes.
    String::from_utf8(out).unwrap_or_default()
}

/// RFC 3986 section 5.2.4 for an absolute path: `.` segments go, `..` takes the one before
/// with it (none above the root), and a path that ended in either ends in `/`; empty segments
/// go too (`//` is `/` to most servers), but a last one (`/a/` stays `/a/`).
/// The decoded path's dot segments with parameters (`%2e%2e;`) are refused here.
fn remove_dot_segments(path: &str) -> Result<String, PathError> {
    let mut kept: Vec<&str> = Vec::new();
    let mut segments = path.strip_prefix('/').unwrap_or(path).split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        // `;` escaped counts too: servers that decode the path before reading parameters
        // take `..%3B` for `..;`.
        let name = segment.split(';').next().unwrap_or_default();
        let name = name.split("%3B").next().unwrap_or_default();
        let name = name.split("%3b").next().unwrap_or_default();
        if name.len() < segment.len() && matches!(name, "" | "." | "..") {
            return Err(PathError::SegmentParameters);
        }
        match segment {
            "" if !last => {}
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
    Ok(out)
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
            "/a/b/",
            "/a;v=1/b;jsessionid=x",
            "*",
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
            ("/a//../b", "/b"),
            ("//private/x", "/private/x"),
            ("/.//private", "/private"),
            ("/a///b//", "/a/b/"),
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
            ("/a%3Bb/c%3b", "/a%3Bb/c%3b"),
            ("/pub/\u{e9}/%2e/x", "/pub/\u{e9}/x"),
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
            ("/pub/\\..\\private", PathError::Backslash),
            ("/order/10/..;/5042", PathError::SegmentParameters),
            ("/pub/.;x/private", PathError::SegmentParameters),
            ("/pub/%2e%2e;/private", PathError::SegmentParameters),
            ("/pub/.%2E;x/private", PathError::SegmentParameters),
            ("/pub/%2e;/private", PathError::SegmentParameters),
            ("/;/private", PathError::SegmentParameters),
            ("/;x/private", PathError::SegmentParameters),
            ("//;/private", PathError::SegmentParameters),
            ("/order/;jsessionid=1/4321", PathError::SegmentParameters),
            ("/order/10/..%3B/5042", PathError::SegmentParameters),
            ("/order/10/%2e%2e%3bx/5042", PathError::SegmentParameters),
            ("/pub/%3Bx/private", PathError::SegmentParameters),
            ("?x=1", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
        ] {
            assert_eq!(norm(path), Err(error), "{path}");
        }
    }
}
