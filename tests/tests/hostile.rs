//! Hostile clients against the deployed system: forged routing headers and hop markers, a flood
//! of requests without keys, smuggling-style framing. None changes routing or reaches an
//! upstream in a way it should not.

use std::io::{Read, Write};
use std::time::Duration;

use http::Method;
use unitgate_e2e::{REGIONS, SERVICES, System, send, users_of};

fn upstream_total(system: &System) -> usize {
    REGIONS
        .iter()
        .flat_map(|r| SERVICES.iter().map(move |s| (*r, *s)))
        .map(|(r, s)| system.received(r, s).len())
        .sum()
}

/// Send raw bytes, read the answer until the gateway closes or goes quiet.
fn raw(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    stream.write_all(request.as_bytes()).expect("write");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_clients_change_nothing() {
    let system = System::start(Default::default()).await;
    let hz = system.gateway_client("hz");
    let user = &users_of("u03", 1)[0];

    // Forged routing headers and hop markers: routing is the table's, the upstream sees the
    // gateway's own values.
    let forged = send(
        &hz,
        Method::GET,
        "/cart",
        &[
            ("x-user-id", user),
            ("x-unitgate-unit", "u01"),
            ("x-unitgate-region", "hz"),
            ("x-unitgate-slot", "1"),
            ("x-unitgate-table-version", "999"),
            (
                "x-unitgate-hop",
                "v1;origin=sh;version=1;hops=1;ts=1;sig=00",
            ),
        ],
    )
    .await;
    assert_eq!(forged.status, 200, "{forged:?}");
    assert_eq!(
        (forged.body["region"].as_str(), forged.body["unit"].as_str()),
        (Some("sh"), Some("u03"))
    );
    system.wait_received("sh", "cart", 1).await;
    let seen = system.received("sh", "cart");
    let last = seen.last().expect("sh/cart got the request");
    assert_eq!(last.headers["x-unitgate-unit"], "u03");
    assert_eq!(last.headers["x-unitgate-table-version"], "1");
    assert!(
        !last.headers.contains_key("x-unitgate-hop"),
        "the hop marker never reaches an upstream"
    );
    // The entry gateway forwarded (one hop); the forged marker was not taken for one.
    system.gateways["hz"]
        .process
        .wait_line("an access-log line forwarding to sh", |l| {
            l.contains("unitgate::access")
                && l.contains("\"forwarded_to\":\"sh\"")
                && l.contains(user.as_str())
        })
        .await;

    // A flood of requests without a key: 400 each, nothing reaches an upstream.
    let before = upstream_total(&system);
    for _ in 0..200 {
        let outcome = send(&hz, Method::POST, "/order", &[]).await;
        assert_eq!(outcome.status, 400, "{outcome:?}");
        assert!(
            outcome.body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("key"),
            "{outcome:?}"
        );
    }
    assert_eq!(upstream_total(&system), before);

    // Smuggling-style framing: refused before any upstream, also behind a good request.
    let addr = system.gateways["hz"].http;
    let head = "POST /cart HTTP/1.1\r\nHost: shop\r\nX-User-Id: 10\r\n";
    for attack in [
        format!("{head}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        format!("{head}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"),
        format!("{head}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello"),
        format!("{head}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
    ] {
        let before = upstream_total(&system);
        let before_hz_cart = system.received("hz", "cart").len();
        let answer = raw(addr, &attack);
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{attack:?} -> {answer:?}"
        );
        let behind = format!("GET /cart HTTP/1.1\r\nHost: shop\r\nX-User-Id: 10\r\n\r\n{attack}");
        let answer = raw(addr, &behind);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        assert!(
            answer.contains("HTTP/1.1 400"),
            "the smuggled request is refused: {answer:?}"
        );
        system.wait_received("hz", "cart", before_hz_cart + 1).await;
        assert_eq!(
            upstream_total(&system),
            before + 1,
            "only the good request reached an upstream"
        );
    }
}

/// What a client can trigger on every request — here a forged hop marker — is counted every
/// time and logged at most once a second, with a count: a flood of forgeries is not a flood of
/// log lines.
#[tokio::test(flavor = "multi_thread")]
async fn forged_markers_are_counted_each_and_logged_once_a_second() {
    let system = System::start(Default::default()).await;
    let hz = system.gateway_client("hz");
    let user = &users_of("u01", 1)[0];
    let forged = 300;
    for _ in 0..forged {
        let outcome = send(
            &hz,
            Method::GET,
            "/cart",
            &[("x-user-id", user), ("x-unitgate-hop", "v1.hz.1.1.forged")],
        )
        .await;
        assert_eq!(outcome.status, 200);
    }
    let admin = control_api::Client::new(
        &format!("http://{}", system.gateways["hz"].admin),
        None,
        None,
    )
    .expect("admin client");
    let metrics = admin
        .send(Method::GET, "/metrics", &[], None, Duration::from_secs(5))
        .await
        .expect("metrics");
    let counted = String::from_utf8_lossy(&metrics.body)
        .lines()
        .find_map(|l| l.strip_prefix("unitgate_hop_markers_rejected_total "))
        .and_then(|n| n.parse::<u64>().ok());
    assert_eq!(counted, Some(forged));
    let lines: Vec<String> = system.gateways["hz"]
        .process
        .lines()
        .into_iter()
        .filter(|l| l.contains("hop marker ignored"))
        .collect();
    // One line a second at most; the requests above take a few seconds at the very most.
    assert!(
        !lines.is_empty() && lines.len() <= 10,
        "{} lines for {forged} forged markers",
        lines.len()
    );
}
