//! A zero-downtime binary upgrade, process to process: the new `unitgate` takes the listening
//! sockets over while a client keeps opening connections; none is refused or reset.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use http_body_util::BodyExt;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Start `unitgate` and return once its log says `marker`; the rest of its log is drained.
fn start(args: &[&str], marker: &'static str) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_unitgate"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unitgate starts");
    let stderr = child.stderr.take().expect("stderr");
    let (seen, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut told = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !told && line.contains(marker) {
                let _ = seen.send(());
                told = true;
            }
        }
    });
    wait.recv_timeout(std::time::Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("no {marker:?} in the log"));
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_under_load_refuses_no_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let echo = gateway::demo::DemoUpstream::start("app", "local", false)
        .await
        .expect("upstream");
    let table = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/minimal.yaml"),
    )
    .expect("minimal")
    .replace("127.0.0.1:9000", &echo.addr.to_string());
    let table_path = dir.path().join("table.yaml");
    std::fs::write(&table_path, table).expect("table");
    let (port, admin) = (free_port(), free_port());
    let config = format!(
        "region: local\nlisten: {{ http: [\"127.0.0.1:{port}\"] }}\nadmin: {{ listen: \"127.0.0.1:{admin}\" }}\ntable: {{ file: {} }}\nhop_secret: 0123456789abcdef0123456789abcdef\nupgrade_socket: {}\naccess_log: false\ntimeouts: {{ drain_s: 5 }}\n",
        table_path.display(),
        dir.path().join("upgrade.sock").display()
    );
    let config_path = dir.path().join("gateway.yaml");
    std::fs::write(&config_path, config).expect("config");
    let config_arg = config_path.display().to_string();
    // Ready once it listens on its upgrade socket (bound beside serving, not before it).
    let mut old = start(&["--config", &config_arg], "ready for an upgrade");

    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for fresh_connections in [true, false] {
        let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build(hyper_util::client::legacy::connect::HttpConnector::new());
            let mut errors = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut request = http::Request::get(format!("http://127.0.0.1:{port}/app"))
                    .header("x-user-id", (i % 10_000).to_string());
                if fresh_connections {
                    request = request.header("connection", "close");
                }
                let request = request
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .expect("request");
                match client.request(request).await {
                    Ok(response) if response.status() == 200 => {
                        let _ = response.into_body().collect().await;
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(response) => errors.push(format!("status {}", response.status())),
                    Err(error) => errors.push(format!("{error:?}")),
                }
                if !errors.is_empty() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
            errors
        }));
    }
    let before = served.load(Ordering::Relaxed);
    let mut new = tokio::task::spawn_blocking(move || {
        start(
            &["--config", &config_arg, "--upgrade"],
            "took over the listeners",
        )
    })
    .await
    .expect("new process");
    let old_status = tokio::task::spawn_blocking(move || old.wait())
        .await
        .expect("join")
        .expect("old exits");
    assert!(old_status.success(), "old process: {old_status}");
    // Keep the load on the new process for a while, counted by requests, not time.
    let after_handover = served.load(Ordering::Relaxed);
    while served.load(Ordering::Relaxed) < after_handover + 300 {
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for task in load {
        errors.extend(task.await.expect("load task"));
    }
    // SIGTERM drains and exits, also with the upgrade socket waiting for a successor.
    let term = Command::new("kill")
        .args(["-TERM", &new.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let waiting = tokio::task::spawn_blocking(move || new.wait());
    let exited = tokio::time::timeout(std::time::Duration::from_secs(30), waiting)
        .await
        .expect("exits after SIGTERM")
        .expect("join")
        .expect("status");
    assert!(exited.success(), "{exited}");
    assert!(
        errors.is_empty(),
        "{} failed requests, first: {:?}",
        errors.len(),
        errors.first()
    );
    assert!(served.load(Ordering::Relaxed) > before + 300);
    assert!(echo.received().len() as u64 >= served.load(Ordering::Relaxed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_to_other_addresses_is_refused_and_the_old_process_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let table_path = dir.path().join("table.yaml");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/minimal.yaml"),
        &table_path,
    )
    .expect("table");
    let config = |port: u16, admin: u16| {
        format!(
            "region: local\nlisten: {{ http: [\"127.0.0.1:{port}\"] }}\nadmin: {{ listen: \"127.0.0.1:{admin}\" }}\ntable: {{ file: {} }}\nhop_secret: 0123456789abcdef0123456789abcdef\nupgrade_socket: {}\naccess_log: false\n",
            table_path.display(),
            dir.path().join("upgrade.sock").display()
        )
    };
    let (port, admin) = (free_port(), free_port());
    let running = dir.path().join("running.yaml");
    std::fs::write(&running, config(port, admin)).expect("config");
    let mut old = start(
        &["--config", &running.display().to_string()],
        "ready for an upgrade",
    );
    // Same number of listeners, other addresses: the HTTP port, then the admin port.
    for (other_port, other_admin) in [(free_port(), admin), (port, free_port())] {
        let moved = dir.path().join("moved.yaml");
        std::fs::write(&moved, config(other_port, other_admin)).expect("config");
        let output = Command::new(env!("CARGO_BIN_EXE_unitgate"))
            .args(["--config", &moved.display().to_string(), "--upgrade"])
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "upgrade accepted: {stderr}");
        assert!(
            stderr.contains("the running process listens on"),
            "{stderr}"
        );
        assert_eq!(old.try_wait().expect("status"), None, "old process exited");
        let health = std::net::TcpStream::connect(("127.0.0.1", admin));
        assert!(health.is_ok(), "old admin listener gone");
    }
    let _ = old.kill();
    let _ = old.wait();
}
