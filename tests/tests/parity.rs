//! Parity: 2,000 users through each region's gateway land where `unitctl route` says.

use std::collections::BTreeMap;
use std::process::Command;

use http::Method;
use unitgate_e2e::{REGIONS, System, bin, send};

#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_users_per_region_land_where_the_dry_run_says() {
    let system = System::start(Default::default()).await;
    // Numeric IDs and string IDs: both slot functions.
    let users: Vec<String> = (0..2000)
        .map(|i| {
            if i % 2 == 0 {
                (i * 4999 + 17).to_string()
            } else {
                format!("user-{i}")
            }
        })
        .collect();
    let ids = system.dir.path().join("users.txt");
    std::fs::write(&ids, users.join("\n")).expect("write ids");
    let table = system.dir.path().join("table.yaml");
    for region in REGIONS {
        // The dry run, as an operator runs it.
        let output = Command::new(bin("unitctl"))
            .args(["route", "--table"])
            .arg(&table)
            .args(["--region", region, "--path", "/cart", "--batch"])
            .arg(&ids)
            .args(["--each", "--output", "json"])
            .output()
            .expect("unitctl runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let expected: BTreeMap<String, (String, String)> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|d| {
                (
                    d["key"].as_str().unwrap_or_default().to_owned(),
                    (
                        d["region"].as_str().unwrap_or_default().to_owned(),
                        d["unit"].as_str().unwrap_or_default().to_owned(),
                    ),
                )
            })
            .collect();
        assert_eq!(expected.len(), users.len(), "one decision per user");
        // The real thing, 16 users at a time.
        let client = system.gateway_client(region);
        let mut mismatches = Vec::new();
        for chunk in users.chunks(16) {
            let answers = futures_join(chunk.iter().map(|user| {
                let client = client.clone();
                let user = user.clone();
                async move {
                    let outcome =
                        send(&client, Method::GET, "/cart", &[("x-user-id", &user)]).await;
                    (user, outcome)
                }
            }))
            .await;
            for (user, outcome) in answers {
                let got = (
                    outcome.body["region"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    outcome.body["unit"].as_str().unwrap_or_default().to_owned(),
                );
                if outcome.status != 200 || expected.get(&user) != Some(&got) {
                    let want = expected.get(&user).cloned();
                    mismatches.push((user, outcome.status, got, want));
                }
            }
        }
        assert!(
            mismatches.is_empty(),
            "entering {region}: {:?}",
            &mismatches[..mismatches.len().min(5)]
        );
    }
}

async fn futures_join<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.expect("task"));
    }
    out
}
