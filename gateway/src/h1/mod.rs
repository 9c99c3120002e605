//! The gateway's own HTTP/1.1 codec, on both sides of the proxy.
//!
//! Heads are parsed in place (`httparse`) into spans of the connection's buffer; routing reads
//! those spans; the upstream head is the client's kept field lines copied as they came with the
//! gateway's own appended; bodies are relayed by their framing, checked as they pass, never
//! re-encoded. The rules of RFC 9112 a server and an intermediary MUST keep are in
//! [`request`], [`response`] and [`chunked`]; anything ambiguous is refused, never guessed at.

pub mod bridge;
pub mod chunked;
pub mod client;
pub mod fields;
pub mod request;
pub mod response;
pub mod serve;
mod via_h2;
