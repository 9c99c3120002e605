//! The web console (`/console/`) in a real browser: headless Chromium driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`, installed by scripts/install-test-deps), against
//! a real control plane and three gateways.
//!
//! `UNITGATE_CONSOLE_SCREENSHOTS=1` also saves docs/console-overview.png,
//! docs/console-flip.png, docs/console-dryrun.png and (where the control plane evacuates
//! regions) docs/console-evacuation.png.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use control_plane::auth::{hash_token, new_token};
use fantoccini::{Client, ClientBuilder, Locator};
use http::{Method, header};
use serde_json::{Value, json};
use unitgate_e2e::{Process, System, flip_request, free_port, send, users_of};

/// How long the page may take to show something.
const PAGE: Duration = Duration::from_secs(15);

fn tool(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.exists(),
        "{} is missing (set ${var} to use another): run scripts/install-test-deps, which installs Debian's chromium and chromium-driver",
        path.display()
    );
    path
}

/// chromedriver on a free port, and a headless Chromium session through it.
async fn browser(profile: &Path) -> (Process, Client) {
    let port = free_port();
    let mut command = Command::new(tool("CHROMEDRIVER_BIN", "/usr/bin/chromedriver"));
    command.arg(format!("--port={port}"));
    let driver = Process::spawn("chromedriver", command);
    driver
        .wait_line("chromedriver listening", |l| {
            l.contains("started successfully")
        })
        .await;
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": tool("CHROMIUM_BIN", "/usr/bin/chromium"),
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1500,1100",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session with headless Chromium");
    (driver, client)
}

/// Run `script` (a function body that returns a value) in the page.
async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, Vec::new())
        .await
        .unwrap_or_else(|e| panic!("{script}: {e}"))
}

/// Wait until `script` returns something truthy; returns it.
async fn wait_js(c: &Client, what: &str, script: &str) -> Value {
    let deadline = Instant::now() + PAGE;
    loop {
        let value = js(c, script).await;
        let truthy = match &value {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty(),
            _ => true,
        };
        if truthy {
            return value;
        }
        if Instant::now() > deadline {
            let page = js(c, "return document.body.innerText;").await;
            panic!("the page did not show {what} within {PAGE:?}; it shows:\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn click(c: &Client, selector: &str) {
    let clicked = js(
        c,
        &format!(
            "const el = document.querySelector({}); if (!el) return false; el.click(); return true;",
            json!(selector)
        ),
    )
    .await;
    assert_eq!(clicked, Value::Bool(true), "no {selector} to click");
}

async fn type_into(c: &Client, selector: &str, text: &str) {
    let input = c
        .find(Locator::Css(selector))
        .await
        .unwrap_or_else(|e| panic!("{selector}: {e}"));
    input.clear().await.expect("clear");
    input.send_keys(text).await.expect("type");
}

async fn sign_in(c: &Client, token: &str) {
    wait_js(
        c,
        "the sign-in form",
        "return !document.getElementById('signin').hidden;",
    )
    .await;
    type_into(c, "#token", token).await;
    click(c, "#signin-button").await;
}

async fn sign_out(c: &Client) {
    click(c, "#signout").await;
    wait_js(
        c,
        "the sign-in form after signing out",
        "return !document.getElementById('signin').hidden && sessionStorage.length === 0;",
    )
    .await;
}

/// The overview of the example table is on screen.
async fn overview_shown(c: &Client) {
    wait_js(
        c,
        "the overview",
        "return document.querySelectorAll('#regions tr[data-unit]').length === 6 && !document.getElementById('app').hidden;",
    )
    .await;
}

async fn screenshot(c: &Client, name: &str) {
    if std::env::var_os("UNITGATE_CONSOLE_SCREENSHOTS").is_none() {
        return;
    }
    let png = c.screenshot().await.expect("screenshot");
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name);
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Ask the dry-run box where `user`'s `GET /cart` entering `entry` goes, and wait for an answer
/// served in `region` (against a version other than `not_version`, when given): the decision's
/// unit, region, forwarded and version as the page names them, and the text it shows.
async fn dry_run(
    c: &Client,
    user: &str,
    entry: &str,
    region: &str,
    not_version: Option<&str>,
) -> Value {
    type_into(c, "#dry-user", user).await;
    type_into(c, "#dry-path", "/cart").await;
    c.find(Locator::Css("#dry-region"))
        .await
        .expect("entry region")
        .select_by_value(entry)
        .await
        .expect("the entry region");
    click(c, "#dry-run").await;
    wait_js(
        c,
        &format!("the dry run's answer for {user} entering {entry}, served in {region}"),
        &format!(
            "const t = document.getElementById('dryrun-decision'); if (!t || t.dataset.region !== {} || t.dataset.version === {}) return false; return {{unit: t.dataset.unit, region: t.dataset.region, forwarded: t.dataset.forwarded, version: t.dataset.version, text: document.getElementById('dryrun-result').textContent}};",
            json!(region),
            json!(not_version)
        ),
    )
    .await
}

/// The number of action buttons and unit selectors on the page.
const ACTIONS: &str =
    "return document.querySelectorAll('button.action, input.select-unit').length;";
const SOME_ACTIONS: &str =
    "return document.querySelectorAll('button.action, input.select-unit').length > 0;";

#[tokio::test(flavor = "multi_thread")]
async fn the_console_shows_the_system_and_runs_flips_by_role() {
    let begun = Instant::now();
    let mut system = System::start(Default::default()).await;
    // A viewer token besides the harness's admin and operator ones.
    let viewer = new_token();
    let mut config = std::fs::read_to_string(&system.control_config).expect("control config");
    config.push_str(&format!(
        "  - {{ name: e2e-viewer, role: viewer, sha256: {} }}\n",
        hash_token(&viewer)
    ));
    std::fs::write(&system.control_config, config).expect("control config");
    system.restart_control().await;
    let base = format!("http://{}", system.control_addr);

    // The page and its files need no token, and carry the console's policy.
    let anonymous = control_api::Client::new(&base, None, None).expect("client");
    let page = anonymous
        .send(Method::GET, "/console/", &[], None, unitgate_e2e::T)
        .await
        .expect("the console page");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.headers[header::CONTENT_SECURITY_POLICY],
        control_plane::console::CSP
    );
    assert_eq!(page.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");

    let profile = tempfile::tempdir().expect("profile dir");
    let (_driver, c) = browser(profile.path()).await;
    c.goto(&format!("{base}/console/"))
        .await
        .expect("open the console");

    // A bad token: a clear message, nothing kept.
    sign_in(&c, "not-a-token-of-this-control-plane-0123456789").await;
    let message = wait_js(
        &c,
        "the bad-token message",
        "const e = document.getElementById('signin-error'); return !e.hidden && e.textContent;",
    )
    .await;
    assert!(
        message
            .as_str()
            .unwrap_or_default()
            .contains("token is not valid"),
        "{message}"
    );
    assert_eq!(js(&c, "return sessionStorage.length;").await, json!(0));

    // A viewer sees everything and no action, a running flip included.
    let operator = system.control_client(&system.tokens.operator);
    let waiting = operator
        .start_flip(
            "u04",
            &flip_request(json!({"to": "sz", "mode": "planned", "reason": "e2e: seen by a viewer", "replication_check": {"confirm": true}})),
        )
        .await
        .expect("flip accepted");
    sign_in(&c, &viewer).await;
    overview_shown(&c).await;
    wait_js(
        &c,
        "the viewer's role",
        "return document.getElementById('who').textContent.includes('viewer');",
    )
    .await;
    // The stylesheet and the script loaded under the Content-Security-Policy.
    assert_eq!(
        js(
            &c,
            "return getComputedStyle(document.getElementById('top')).backgroundColor;"
        )
        .await,
        json!("rgb(29, 35, 48)")
    );
    wait_js(
        &c,
        "u04 flipping",
        "const r = document.querySelector('#regions tr[data-unit=u04]'); return !!r && r.dataset.state === 'flipping';",
    )
    .await;
    assert_eq!(js(&c, ACTIONS).await, json!(0), "a viewer sees no action");
    click(&c, "#tabs [data-tab='operations']").await;
    wait_js(
        &c,
        "the running flip",
        &format!(
            "const card = document.getElementById('flip-card'); return !!card && card.dataset.flip === {} && !!card.querySelector('li.running[data-step=replication]');",
            json!(waiting.id)
        ),
    )
    .await;
    assert_eq!(js(&c, ACTIONS).await, json!(0), "a viewer sees no action");
    operator.cancel_flip(&waiting.id).await.expect("cancel");
    wait_js(
        &c,
        "the flip rolled back",
        "const card = document.getElementById('flip-card'); return !!card && card.dataset.state === 'rolled_back';",
    )
    .await;
    assert_eq!(js(&c, ACTIONS).await, json!(0), "a viewer sees no action");

    // The dry run (a viewer may ask): user 4321 entering hz belongs to u03, served in sh, so
    // hz forwards it. After a flip of u03 to sz made through the API, the answer follows.
    click(&c, "#tabs [data-tab='dryrun']").await;
    let first = dry_run(&c, "4321", "hz", "sh", None).await;
    assert_eq!(
        (&first["unit"], &first["forwarded"]),
        (&json!("u03"), &json!("yes")),
        "{first}"
    );
    let text = first["text"].as_str().unwrap_or_default();
    for part in ["u03", "forward", "sh"] {
        assert!(text.contains(part), "the dry run shows {part:?}: {text}");
    }
    let admin = system.control_client(&system.tokens.admin);
    let moved = admin
        .start_flip(
            "u03",
            &flip_request(
                json!({"to": "sz", "mode": "emergency", "reason": "e2e: the dry run follows"}),
            ),
        )
        .await
        .expect("flip accepted");
    system.wait_flip(&moved.id).await;
    let version = first["version"].as_str().unwrap_or_default().to_owned();
    let second = dry_run(&c, "4321", "hz", "sz", Some(&version)).await;
    assert_eq!(
        (&second["unit"], &second["forwarded"]),
        (&json!("u03"), &json!("yes")),
        "{second}"
    );
    let newer: u64 = second["version"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .expect("version");
    assert!(
        newer > version.parse().expect("version"),
        "{first} then {second}"
    );
    wait_js(
        &c,
        "the new version in force",
        &format!(
            "return document.getElementById('version-in-force').textContent === {};",
            json!(format!("version in force: {newer}"))
        ),
    )
    .await;
    screenshot(&c, "console-dryrun.png").await;
    // Back to sh, as the example table has it, for what follows.
    let back = admin
        .start_flip(
            "u03",
            &flip_request(json!({"to": "sh", "mode": "emergency", "reason": "e2e: back to sh"})),
        )
        .await
        .expect("flip accepted");
    system.wait_flip(&back.id).await;
    // The token is kept in this tab's sessionStorage only.
    assert_eq!(js(&c, "return document.cookie;").await, json!(""));
    let url = c.current_url().await.expect("url");
    assert!(!url.as_str().contains(&viewer), "{url}");
    let html = js(&c, "return document.documentElement.outerHTML;").await;
    assert!(!html.as_str().unwrap_or_default().contains(&viewer));
    sign_out(&c).await;

    // An operator flips a unit from the page, with a reason that looks like HTML.
    let reason = "<img src=x onerror=alert(1)>";
    sign_in(&c, &system.tokens.operator).await;
    overview_shown(&c).await;
    click(&c, "#tabs [data-tab='overview']").await;
    wait_js(&c, "the operator's actions", SOME_ACTIONS).await;
    click(&c, "button[data-action='flip'][data-unit='u03']").await;
    wait_js(
        &c,
        "the flip dialog",
        "return document.getElementById('confirm-dialog').open;",
    )
    .await;
    let plan = js(
        &c,
        "return document.getElementById('dlg-plan-box').textContent;",
    )
    .await;
    let plan = plan.as_str().unwrap_or_default();
    for part in ["u03", "sh -> sz", "16.7% of users", "writes freeze"] {
        assert!(plan.contains(part), "the plan shows {part:?}: {plan}");
    }
    c.find(Locator::Css("#dlg-check"))
        .await
        .expect("check")
        .select_by_value("confirm")
        .await
        .expect("confirm check");
    type_into(&c, "#dlg-reason", reason).await;
    click(&c, "#confirm-go").await;
    // The running flip as a timeline, waiting for the operator's confirmation.
    wait_js(
        &c,
        "the running flip waiting for confirmation",
        "const card = document.getElementById('flip-card'); return card && card.dataset.state === 'running' && !!card.querySelector('li.running[data-step=replication]') && !!card.querySelector('[data-action=confirm]') && card.querySelector('li[data-step=converge_freeze]').textContent.includes('3/3 gateways applied');",
    )
    .await;
    let shown = js(
        &c,
        "return document.getElementById('flip-reason').textContent;",
    )
    .await;
    assert_eq!(shown, json!(reason), "the reason is shown as text");
    assert_eq!(
        js(&c, "return document.querySelectorAll('img').length;").await,
        json!(0)
    );
    // Until when it waits, counting down; Extend moves that deadline.
    let flip_id = js(
        &c,
        "return document.getElementById('flip-card').dataset.flip;",
    )
    .await;
    let flip_id = flip_id.as_str().expect("flip id").to_owned();
    let before = operator
        .flip(&flip_id)
        .await
        .expect("the flip")
        .confirm_by_ms
        .expect("a deadline while it waits");
    let shown = wait_js(
        &c,
        "the confirmation deadline",
        &format!(
            "const d = document.getElementById('confirm-deadline'); return !!d && d.dataset.confirmBy === {} && /\\d s left$/.test(d.querySelector('.countdown').textContent) && d.textContent;",
            json!(before.to_string())
        ),
    )
    .await;
    let utc = js(
        &c,
        &format!("return new Date({before}).toISOString().slice(0, 19).replace('T', ' ');"),
    )
    .await;
    assert!(
        shown
            .as_str()
            .unwrap_or_default()
            .contains(&format!("{} UTC", utc.as_str().unwrap_or_default())),
        "{shown}"
    );
    screenshot(&c, "console-flip.png").await;
    click(&c, "#flip-card [data-action='extend']").await;
    wait_js(
        &c,
        "the extend dialog",
        "return document.getElementById('confirm-dialog').open && !!document.getElementById('dlg-minutes');",
    )
    .await;
    type_into(&c, "#dlg-minutes", "5").await;
    click(&c, "#confirm-go").await;
    wait_js(
        &c,
        "the deadline moved by 5 min",
        &format!(
            "const d = document.getElementById('confirm-deadline'); return !!d && d.dataset.confirmBy === {} && !document.getElementById('confirm-dialog').open;",
            json!((before + 300_000).to_string())
        ),
    )
    .await;
    let after = operator
        .flip(&flip_id)
        .await
        .expect("the flip")
        .confirm_by_ms;
    assert_eq!(after, Some(before + 300_000), "extended by 300 s");
    click(&c, "#flip-card [data-action='confirm']").await;
    wait_js(
        &c,
        "the flip succeeded",
        "const card = document.getElementById('flip-card'); return card && card.dataset.state === 'succeeded';",
    )
    .await;
    // A gateway of another region now sends u03's users to sz.
    let user = &users_of("u03", 1)[0];
    let outcome = send(
        &system.gateway_client("hz"),
        Method::GET,
        "/cart",
        &[("x-user-id", user)],
    )
    .await;
    assert_eq!(
        (outcome.status, outcome.body["region"].as_str()),
        (200, Some("sz")),
        "{outcome:?}"
    );
    // Past operations and the audit log show the reason as text, too.
    wait_js(
        &c,
        "the flip among past operations",
        &format!(
            "const t = document.getElementById('past-table'); return !!t && t.textContent.includes({});",
            json!(reason)
        ),
    )
    .await;
    click(&c, "#tabs [data-tab='audit']").await;
    wait_js(
        &c,
        "the flip in the audit log",
        &format!(
            "const t = document.getElementById('audit-table'); return !!t && t.textContent.includes({});",
            json!(reason)
        ),
    )
    .await;
    assert_eq!(
        js(&c, "return document.querySelectorAll('img').length;").await,
        json!(0)
    );
    // Filtered by kind and actor, newest first.
    c.find(Locator::Css("#audit-action"))
        .await
        .expect("action filter")
        .select_by_value("flip.start")
        .await
        .expect("flip.start");
    type_into(&c, "#audit-actor", "e2e-operator").await;
    let rows = wait_js(
        &c,
        "the audit log filtered",
        "const rows = [...document.querySelectorAll('#audit-table tbody tr')].map((r) => [r.cells[1].textContent, r.cells[2].textContent, r.cells[3].textContent]); return rows.length > 0 && rows.every((r) => r[0] === 'e2e-operator' && r[1] === 'flip.start') && rows;",
    )
    .await;
    let targets: Vec<&str> = rows
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r[2].as_str())
        .collect();
    assert!(
        targets.len() >= 2 && targets[0].starts_with("u03") && targets[1].starts_with("u04"),
        "{rows}"
    );

    // A flip made with unitctl shows on the overview within 2 s of unitctl returning.
    click(&c, "#tabs [data-tab='overview']").await;
    let (server, token) = (base.clone(), system.tokens.operator.clone());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(unitgate_e2e::bin("unitctl"))
            .args([
                "flip",
                "u05",
                "--to",
                "hz",
                "--emergency",
                "--reason",
                "e2e: made with unitctl",
                "--output",
                "json",
            ])
            .env("UNITGATE_SERVER", server)
            .env("UNITGATE_TOKEN", token)
            .env_remove("UNITGATE_TOKEN_FILE")
            .env_remove("UNITGATE_CA")
            .output()
            .expect("unitctl runs")
    })
    .await
    .expect("joined");
    let asked = Instant::now();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let accepted: control_api::FlipAccepted =
        serde_json::from_slice(&output.stdout).expect("unitctl's JSON answer");
    wait_js(
        &c,
        "u05 in hz",
        "const r = document.querySelector('#regions tr[data-unit=u05]'); return !!r && r.dataset.region === 'hz';",
    )
    .await;
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(2), "the overview took {took:?}");
    system.wait_flip(&accepted.id).await;
    wait_js(
        &c,
        "no flip running",
        "return document.querySelectorAll('#regions tr[data-state=flipping]').length === 0;",
    )
    .await;
    screenshot(&c, "console-overview.png").await;

    // Evacuating a region: started, or said to be unavailable on this control plane.
    click(&c, "button[data-action='evacuate'][data-region='sz']").await;
    wait_js(
        &c,
        "the evacuation dialog",
        "return document.getElementById('confirm-dialog').open;",
    )
    .await;
    let plan = js(
        &c,
        "return document.getElementById('dlg-plan-box').textContent;",
    )
    .await;
    assert!(plan.as_str().unwrap_or_default().contains("u06"), "{plan}");
    c.find(Locator::Css("#dlg-check"))
        .await
        .expect("check")
        .select_by_value("confirm")
        .await
        .expect("confirm check");
    type_into(&c, "#dlg-reason", "e2e: evacuate sz").await;
    click(&c, "#confirm-go").await;
    let answer = wait_js(
        &c,
        "the evacuation's answer",
        "const e = document.getElementById('confirm-error'); if (!e.hidden) return 'error: ' + e.textContent; const n = document.getElementById('notice'); return !n.hidden && n.textContent.includes('Evacuation') && 'started: ' + n.textContent;",
    )
    .await;
    let answer = answer.as_str().unwrap_or_default().to_owned();
    eprintln!("from the page: {answer}");
    if answer.starts_with("error: ") {
        assert!(
            answer.contains("not available on this control plane"),
            "{answer}"
        );
        click(&c, "#confirm-cancel").await;
    } else {
        // A running evacuation, waiting for the operator: every unit of sz frozen at once.
        wait_js(
            &c,
            "the running evacuation waiting for confirmation",
            "const card = document.getElementById('flip-card'); return card && card.dataset.state === 'running' && !!card.querySelector('li.running[data-step=replication]') && !!card.querySelector('[data-action=confirm]') && card.querySelector('li[data-step=converge_freeze]').textContent.includes('3/3 gateways applied');",
        )
        .await;
        let moves = js(
            &c,
            "return document.getElementById('flip-card').textContent;",
        )
        .await;
        let moves = moves.as_str().unwrap_or_default();
        assert!(
            moves.contains("u03") && moves.contains("u06") && moves.contains("evacuate:sz"),
            "{moves}"
        );
        screenshot(&c, "console-evacuation.png").await;
        click(&c, "#flip-card [data-action='confirm']").await;
        wait_js(
            &c,
            "the evacuation succeeded",
            "const card = document.getElementById('flip-card'); return card && card.dataset.state === 'succeeded';",
        )
        .await;
        let user = &users_of("u06", 1)[0];
        let outcome = send(
            &system.gateway_client("hz"),
            Method::GET,
            "/cart",
            &[("x-user-id", user)],
        )
        .await;
        assert_eq!(outcome.status, 200, "{outcome:?}");
        assert_ne!(outcome.body["region"].as_str(), Some("sz"), "{outcome:?}");
        // And restored from the page: u06 lives in sz again.
        click(&c, "#tabs [data-tab='overview']").await;
        click(&c, "button[data-action='restore'][data-region='sz']").await;
        wait_js(
            &c,
            "the restore dialog",
            "return document.getElementById('confirm-dialog').open;",
        )
        .await;
        type_into(&c, "#dlg-reason", "e2e: restore sz").await;
        click(&c, "#confirm-go").await;
        wait_js(
            &c,
            "u06 back in sz",
            "const r = document.querySelector('#regions tr[data-unit=u06]'); return !!r && r.dataset.region === 'sz' && document.querySelectorAll('#regions tr[data-state=flipping]').length === 0;",
        )
        .await;
        click(&c, "#tabs [data-tab='overview']").await;
    }

    // Several units as one operation: started, or said to be unavailable.
    wait_js(
        &c,
        "the unit selectors",
        "return document.querySelectorAll('input.select-unit').length === 6;",
    )
    .await;
    click(&c, "input.select-unit[data-unit=u02]").await;
    click(&c, "input.select-unit[data-unit=u04]").await;
    click(&c, "#multi-flip").await;
    wait_js(
        &c,
        "the multi-unit flip dialog",
        "return document.getElementById('confirm-dialog').open;",
    )
    .await;
    let plan = js(
        &c,
        "return document.getElementById('dlg-plan-box').textContent;",
    )
    .await;
    let plan = plan.as_str().unwrap_or_default();
    for part in ["u02", "hz -> sh", "u04", "sh -> sz", "33.3% of users move"] {
        assert!(plan.contains(part), "the plan shows {part:?}: {plan}");
    }
    type_into(&c, "#dlg-reason", "e2e: two units").await;
    click(&c, "#confirm-go").await;
    let answer = wait_js(
        &c,
        "the multi-unit flip's answer",
        "const e = document.getElementById('confirm-error'); if (!e.hidden) return 'error: ' + e.textContent; const n = document.getElementById('notice'); return !n.hidden && n.textContent.includes('Flip 2 units') && 'started: ' + n.textContent;",
    )
    .await;
    let answer = answer.as_str().unwrap_or_default().to_owned();
    eprintln!("from the page: {answer}");
    if answer.starts_with("error: ") {
        assert!(
            answer.contains("not available on this control plane"),
            "{answer}"
        );
        click(&c, "#confirm-cancel").await;
    } else {
        wait_js(
            &c,
            "the multi-unit flip succeeded",
            "const card = document.getElementById('flip-card'); return card && card.dataset.state === 'succeeded';",
        )
        .await;
    }

    let html = js(&c, "return document.documentElement.outerHTML;").await;
    assert!(
        !html
            .as_str()
            .unwrap_or_default()
            .contains(&system.tokens.operator)
    );
    sign_out(&c).await;
    c.close().await.expect("close the browser");
    eprintln!("console browser test took {:?}", begun.elapsed());
}
