//! gRPC through the real `unitgate` binary, one process per region: a tonic client enters hz,
//! the user's unit lives in sh, sh's pool for the service is a tonic server reached over
//! HTTP/2 (`protocol: h2`). Unary and server-streaming calls cross the hop with their trailers
//! (the server's `grpc-status` and its own metadata), and the gateways' own answers — a
//! write-frozen unit, sh's upstream gone — reach the client as gRPC statuses.

#[path = "../../gateway/tests/support/grpc_echo.rs"]
mod grpc_echo;

use std::net::SocketAddr;
use std::process::Command;

use grpc_echo::{EchoRequest, count, request, say};
use tonic::Code;
use unitgate_e2e::{HOP_SECRET, Process, bin, free_port};

/// u1 (hz) owns slots 0-4999, u2 (sh) 5000-8999, u3 (sh, write-frozen) 9000-9999; numeric user
/// ids land on `id mod 10000`.
const IN_HZ: &str = "4321";
const IN_SH: &str = "6000";
const FROZEN: &str = "9100";

fn table(gateways: &[(&str, SocketAddr)], echo: &[SocketAddr]) -> String {
    let regions: String = gateways
        .iter()
        .zip(echo)
        .map(|((region, gateway), echo)| {
            format!(
                "  - name: {region}\n    gateways: [\"{gateway}\"]\n    pools:\n      echo: {{ endpoints: [\"{echo}\"], protocol: h2 }}\n"
            )
        })
        .collect();
    format!(
        "version: 1\nregions:\n{regions}units:\n  - {{ name: u1, center: true, slots: [[0, 4999]], region: hz }}\n  - {{ name: u2, slots: [[5000, 8999]], region: sh }}\n  - {{ name: u3, slots: [[9000, 9999]], region: sh, state: write_frozen }}\nroutes:\n  - {{ name: echo, match: {{ path_prefix: /unitgate.test.Echo/ }}, service: echo, class: C, key: [{{ header: X-User-Id }}], missing_key: reject }}\n"
    )
}

fn start_gateway(dir: &std::path::Path, region: &str, http: SocketAddr, table: &str) -> Process {
    let config = dir.join(format!("gateway-{region}.yaml"));
    std::fs::write(
        &config,
        format!(
            "region: {region}\nlisten: {{ http: [\"{http}\"] }}\nadmin: {{ listen: \"127.0.0.1:{}\" }}\ntable: {{ file: \"{table}\" }}\ncache_dir: \"{}\"\nhop_secret: \"{HOP_SECRET}\"\nlog_format: json\naccess_log: {{ routing_key: as_is }}\nhealth_check: {{ interval_ms: 0 }}\ntimeouts: {{ connect_ms: 300, drain_s: 1 }}\n",
            free_port(),
            dir.join(format!("cache-{region}")).display(),
        ),
    )
    .expect("write gateway config");
    let mut command = Command::new(bin("unitgate"));
    command.arg("--config").arg(&config).env("RUST_LOG", "info");
    Process::spawn(&format!("gateway {region}"), command)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_cross_regions_with_their_trailers_and_the_gateways_answers_are_statuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hz_echo = grpc_echo::serve("hz").await;
    let sh_echo = grpc_echo::serve("sh").await;
    let gateways = [
        ("hz", SocketAddr::from(([127, 0, 0, 1], free_port()))),
        ("sh", SocketAddr::from(([127, 0, 0, 1], free_port()))),
    ];
    let table_path = dir.path().join("table.yaml");
    std::fs::write(&table_path, table(&gateways, &[hz_echo.addr, sh_echo.addr]))
        .expect("write table");
    let table_path = table_path.display().to_string();
    let hz = start_gateway(dir.path(), "hz", gateways[0].1, &table_path);
    let sh = start_gateway(dir.path(), "sh", gateways[1].1, &table_path);
    for gateway in [&hz, &sh] {
        gateway
            .wait_line("gateway serving", |l| l.contains("gateway serving"))
            .await;
    }
    let mut client = grpc_echo::client(gateways[0].1).await;

    // A user of hz is served in hz; a user of sh is served in sh, after one hop.
    for (user, region) in [(IN_HZ, "hz"), (IN_SH, "sh")] {
        let reply = say(
            &mut client,
            request(echo("hello", 0, false), &[("x-user-id", user)]),
        )
        .await
        .unwrap_or_else(|status| panic!("Say as {user}: {status:?}"))
        .into_inner();
        assert_eq!(reply.served_by, region, "{reply:?}");
        assert_eq!(
            reply.metadata.get("x-unitgate-region").map(String::as_str),
            Some(region)
        );
    }
    sh.wait_line("the hop's access-log line", |l| {
        l.contains("unitgate::access") && l.contains(&format!("\"key\":\"{IN_SH}\""))
    })
    .await;
    let forwarded = hz
        .lines()
        .into_iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .find(|l| l["target"] == "unitgate::access" && l["key"] == IN_SH)
        .expect("hz logged the call");
    assert_eq!(forwarded["forwarded_to"], "sh", "{forwarded}");
    assert_eq!(forwarded["status"], 200);

    // Server streaming across the hop: every message, then the server's trailers.
    let (messages, end) = count(
        &mut client,
        request(echo("tick", 4, false), &[("x-user-id", IN_SH)]),
    )
    .await
    .expect("Count");
    assert_eq!(
        messages.iter().map(|m| m.index).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    assert!(messages.iter().all(|m| m.served_by == "sh"));
    let trailers = end.expect("the stream ends OK");
    assert_eq!(
        trailers.get("x-count").and_then(|v| v.to_str().ok()),
        Some("4")
    );
    // A stream the server ends in error: its status and metadata cross the hop too.
    let (messages, end) = count(
        &mut client,
        request(echo("tick", 1, true), &[("x-user-id", IN_SH)]),
    )
    .await
    .expect("failing Count");
    assert_eq!(messages.len(), 1);
    let status = end.expect_err("DATA_LOSS");
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert_eq!(
        status
            .metadata()
            .get("x-reason")
            .and_then(|v| v.to_str().ok()),
        Some("asked")
    );

    // The gateways' own answers: a write-frozen unit (a gRPC call is a POST), answered by hz...
    let status = say(
        &mut client,
        request(echo("x", 0, false), &[("x-user-id", FROZEN)]),
    )
    .await
    .expect_err("frozen");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("unit is write-frozen"),
        "{status:?}"
    );
    // ...and sh's upstream gone, answered by sh, through hz.
    sh_echo.stop().await;
    let status = say(
        &mut client,
        request(echo("x", 0, false), &[("x-user-id", IN_SH)]),
    )
    .await
    .expect_err("sh's upstream is gone");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("upstream unreachable"),
        "{status:?}"
    );
    // hz's own users are still served.
    say(
        &mut client,
        request(echo("x", 0, false), &[("x-user-id", IN_HZ)]),
    )
    .await
    .expect("hz still serves");
    hz_echo.stop().await;
}

fn echo(text: &str, count: u32, fail: bool) -> EchoRequest {
    EchoRequest {
        text: text.to_owned(),
        count,
        fail,
    }
}
