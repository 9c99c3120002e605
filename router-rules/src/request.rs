//! What the router needs to see of a request, independent of any HTTP library.

/// A read-only view of one request. The gateway implements it over hyper's request parts; the
/// CLI and tests use [`SimpleRequest`]. Implementations must not allocate in these methods:
/// resolution promises not to.
pub trait RequestView {
    /// The method, as sent (`GET`, `POST`, ...).
    fn method(&self) -> &str;
    /// The host the request is for (`Host` header or URI authority), port included or not.
    fn host(&self) -> Option<&str>;
    /// The path, without the query string; starts with `/`.
    fn path(&self) -> &str;
    /// The query string without `?`, if any.
    fn query(&self) -> Option<&str>;
    /// Every value of the header `name` (given in lowercase), in order.
    fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str>;

    /// The first value of the header `name` (given in lowercase).
    fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).next()
    }

    /// The values of the request's method-override fields ([`METHOD_OVERRIDE_FIELDS`]), as
    /// bytes: every one, text or not. Rails, Express, ASP.NET, Symfony and others execute the
    /// method named there instead of the request's, so a `GET` carrying
    /// `X-HTTP-Method-Override: DELETE` is a write to them. (This default sees only the
    /// values that are text; the gateway's views yield all.)
    fn method_overrides(&self) -> impl Iterator<Item = &[u8]> {
        METHOD_OVERRIDE_FIELDS
            .iter()
            .flat_map(|name| self.header_values(name))
            .map(str::as_bytes)
    }
}

/// The fields in which a client names the method a framework is to execute instead of the
/// request's (lowercase).
pub const METHOD_OVERRIDE_FIELDS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// An owned request, for the CLI, tests and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimpleRequest {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Host, if any.
    pub host: Option<String>,
    /// Path without query.
    pub path: String,
    /// Query without `?`.
    pub query: Option<String>,
    /// Headers as (lowercase name, value), in order.
    pub headers: Vec<(String, String)>,
}

impl SimpleRequest {
    /// A request with `method` for `target` (a path, optionally with `?query`).
    pub fn new(method: &str, target: &str) -> Self {
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query.to_owned())),
            None => (target, None),
        };
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        Self {
            method: method.to_owned(),
            host: None,
            path,
            query,
            headers: Vec::new(),
        }
    }

    /// Put the path in the form the gateway routes by ([`crate::path::normalize`]); an error
    /// where the gateway refuses the request.
    pub fn normalize_path(&mut self) -> Result<(), crate::path::PathError> {
        if let std::borrow::Cow::Owned(path) = crate::path::normalize(&self.path)? {
            self.path = path;
        }
        Ok(())
    }

    /// Add a header (the name is lowercased).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.add_header(name, value);
        self
    }

    /// Add a header (the name is lowercased).
    pub fn add_header(&mut self, name: &str, value: &str) {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
    }

    /// Add a cookie, appended to the `cookie` header.
    pub fn add_cookie(&mut self, name: &str, value: &str) {
        match self.headers.iter_mut().find(|(n, _)| n == "cookie") {
            Some((_, existing)) => {
                existing.push_str("; ");
                existing.push_str(name);
                existing.push('=');
                existing.push_str(value);
            }
            None => self.add_header("cookie", &format!("{name}={value}")),
        }
    }

    /// Add a query parameter (`name` and `value` are used as given: encode them first if needed).
    pub fn add_query(&mut self, name: &str, value: &str) {
        let pair = format!("{name}={value}");
        self.query = Some(match self.query.take() {
            Some(q) if !q.is_empty() => format!("{q}&{pair}"),
            _ => pair,
        });
    }
}

impl RequestView for SimpleRequest {
    fn method(&self) -> &str {
        &self.method
    }

    fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    fn path(&self) -> &str {
        &self.path
    }

    fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> {
        self.headers
            .iter()
            // Names are stored lowercase and asked for in lowercase.
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}
