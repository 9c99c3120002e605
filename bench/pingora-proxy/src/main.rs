//! A minimal pingora proxy for the benchmark: picks an upstream by a hash of `X-User-Id`, as
//! the nginx and HAProxy configurations of bench/proxy.sh do.
//!
//! Usage: pingora-proxy-bench LISTEN UPSTREAM[,UPSTREAM...] -c CONF.yaml

use std::hash::Hasher;

use async_trait::async_trait;
use pingora::prelude::*;

struct ByUser {
    upstreams: Vec<String>,
}

#[async_trait]
impl ProxyHttp for ByUser {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let key = session
            .req_header()
            .headers
            .get("x-user-id")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let mut hasher = fnv::FnvHasher::default();
        hasher.write(key);
        let index = (hasher.finish() % self.upstreams.len() as u64) as usize;
        Ok(Box::new(HttpPeer::new(
            self.upstreams[index].as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().expect("LISTEN");
    let upstreams: Vec<String> = args
        .next()
        .expect("UPSTREAMS")
        .split(',')
        .map(str::to_owned)
        .collect();
    let rest: Vec<String> = std::iter::once("pingora-proxy-bench".to_owned())
        .chain(args)
        .collect();
    let opt = Opt::parse_from_args(rest);
    let mut server = Server::new(Some(opt)).expect("server");
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, ByUser { upstreams });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
