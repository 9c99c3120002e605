//! Proxy workers: how client connections spread over them.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Open a connection to `addr`, send one keep-alive request and wait for its status line.
async fn open_and_use(addr: std::net::SocketAddr, user: usize) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!("GET /items HTTP/1.1\r\nHost: gateway\r\nX-User-Id: {user}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.windows(12).any(|w| w == b"HTTP/1.1 200") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n > 0, "connection closed before a response");
        seen.extend_from_slice(&buf[..n]);
    }
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connections_spreads_evenly_over_the_workers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = Echo::start("app", "local").await;
    let gateway = gateway_with_pool(
        dir.path(),
        &[upstream.addr],
        "health_check: { interval_ms: 0 }\nthreads: 2\n",
    )
    .await;
    let addr = gateway.http_addrs[0];
    // All at once, and all kept open: each worker accepts what it wakes up for first.
    let open: Vec<_> =
        futures_util::future::join_all((0..20).map(|user| open_and_use(addr, user))).await;
    let metrics = get_text(&client(), gateway.admin_addr, "/metrics").await;
    let per_worker: Vec<u64> = metrics
        .lines()
        .filter(|l| l.starts_with("unitgate_worker_connections{"))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .expect("count")
        })
        .collect();
    assert_eq!(per_worker.len(), 2, "{metrics}");
    assert_eq!(per_worker.iter().sum::<u64>(), 20, "{per_worker:?}");
    let spread = per_worker.iter().max().unwrap_or(&0) - per_worker.iter().min().unwrap_or(&0);
    assert!(spread <= 3, "connections per worker {per_worker:?}");
    drop(open);
}
