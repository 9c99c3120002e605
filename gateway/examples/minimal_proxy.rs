//! The floor under unitgate's request path: a hyper proxy with the same server, client and
//! runtime as the gateway and none of its work (no routing, headers, limits or metrics). It
//! picks an upstream by a hash of `X-User-Id`. bench/proxy.sh measures it beside unitgate, so
//! the cost of the gateway's own work is the difference.
//!
//! Usage: cargo run --release --example minimal_proxy -- LISTEN UPSTREAM[,UPSTREAM...]

use std::convert::Infallible;
use std::hash::Hasher;

use gateway::upstream::{Body, BoxError, Upstream};
use http::uri::Authority;
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

async fn forward(
    upstream: Upstream,
    upstreams: &[Authority],
    request: Request<Incoming>,
) -> Response<Body> {
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(
        request
            .headers()
            .get("x-user-id")
            .map(|v| v.as_bytes())
            .unwrap_or_default(),
    );
    let target = &upstreams[(hasher.finish() % upstreams.len() as u64) as usize];
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = path.parse::<Uri>().unwrap_or_default();
    let request = Request::from_parts(parts, body.map_err(|e| Box::new(e) as BoxError).boxed());
    match upstream.send(target, request).await {
        Ok(response) => response.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed()),
        Err(_) => {
            let mut response = Response::new(gateway::upstream::empty());
            *response.status_mut() = http::StatusCode::BAD_GATEWAY;
            response
        }
    }
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:19000".to_owned());
    let upstreams: Vec<Authority> = args
        .next()
        .unwrap_or_default()
        .split(',')
        .filter_map(|a| a.parse().ok())
        .collect();
    let upstreams: &'static [Authority] = Vec::leak(upstreams);
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        let upstream = Upstream::new(&gateway::config::Timeouts::default());
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let upstream = upstream.clone();
                    async move { Ok::<_, Infallible>(forward(upstream, upstreams, request).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
