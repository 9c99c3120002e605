//! The fleet: every gateway this control plane has heard of (directly, through another
//! replica, or before a restart), with the version it serves. Flips wait here until every
//! expected gateway serves a version.
//!
//! Which gateways a step waits for: every gateway of the fleet, until it serves the step's
//! version, leaves (a gateway that stops says so) or an operator forgets it. One not heard
//! from is no reason to go on without it: cut off from the control plane but not from its
//! clients, it routes by the version it last had. A gateway is shown stale when it has not
//! been heard from for `gateway_stale_after_s`; after a control-plane start, the gateways that
//! were live when the control plane last heard from anyone count as heard from at the start,
//! since a control plane that was down could hear nobody.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use control_api::{GatewayStatus, RejectedVersion, now_ms};
use tokio::sync::watch;

/// The gateways known.
pub struct Registry {
    gateways: Mutex<BTreeMap<String, Known>>,
    changed: watch::Sender<u64>,
    stale_after_ms: u64,
    /// Something changed since the fleet was last persisted.
    dirty: AtomicBool,
    /// Something a restart must not lose changed (a version applied, a region): persist soon.
    material: tokio::sync::Notify,
}

struct Known {
    status: GatewayStatus,
    /// Counted as live until then even when not heard from (restart grace), ms since epoch.
    grace_until_ms: u64,
}

/// What a gateway said about itself in a watch or a report.
#[derive(Debug, Clone)]
pub struct Sighting {
    /// Its id.
    pub id: String,
    /// Its region.
    pub region: String,
    /// The version it serves.
    pub applied: u64,
    /// The digest of what it serves, when it says.
    pub digest: Option<String>,
    /// That digest differs from the stored version's.
    pub diverged: bool,
    /// A version it refused.
    pub rejected: Option<RejectedVersion>,
}

/// How a wait for convergence ended badly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotConverged {
    /// A gateway refused the version.
    Rejected {
        /// The gateway.
        gateway: String,
        /// Its error.
        error: String,
    },
    /// Time ran out.
    Timeout {
        /// Expected gateways not serving the version, each with what it serves.
        behind: Vec<String>,
        /// Regions with fewer gateways serving it than their `min_gateways`.
        short: Vec<String>,
    },
    /// The wait was abandoned (the flip was cancelled).
    Aborted(String),
}

impl std::fmt::Display for NotConverged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotConverged::Rejected { gateway, error } => {
                write!(f, "gateway {gateway} refused the version: {error}")
            }
            NotConverged::Timeout { behind, short } => {
                write!(f, "timed out")?;
                if !behind.is_empty() {
                    write!(
                        f,
                        " waiting for {} gateway(s): {}",
                        behind.len(),
                        behind.join(", ")
                    )?;
                }
                if !short.is_empty() {
                    if !behind.is_empty() {
                        write!(f, ";")?;
                    }
                    write!(f, " {}", short.join("; "))?;
                }
                Ok(())
            }
            NotConverged::Aborted(why) => write!(f, "{why}"),
        }
    }
}

impl Registry {
    /// An empty registry; gateways not heard from for `stale_after` are stale.
    pub fn new(stale_after: Duration) -> Self {
        Self {
            gateways: Mutex::new(BTreeMap::new()),
            changed: watch::channel(0).0,
            stale_after_ms: u64::try_from(stale_after.as_millis()).unwrap_or(u64::MAX),
            dirty: AtomicBool::new(false),
            material: tokio::sync::Notify::new(),
        }
    }

    /// Resolves when something a restart must not lose changed since the last call.
    pub async fn material_change(&self) {
        self.material.notified().await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Known>> {
        self.gateways.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take in the fleet the store recorded before this process started. The gateways that
    /// were live when the control plane last heard from anyone are expected for
    /// `gateway_stale_after_s` from now, until they report or go stale.
    pub fn restore(&self, fleet: Vec<GatewayStatus>) {
        let last_heard = fleet.iter().map(|g| g.last_seen_ms).max().unwrap_or(0);
        let grace_until_ms = now_ms().saturating_add(self.stale_after_ms);
        let mut gateways = self.lock();
        for status in fleet {
            let live = last_heard.saturating_sub(status.last_seen_ms) <= self.stale_after_ms;
            let known = gateways.entry(status.id.clone()).or_insert(Known {
                status: status.clone(),
                grace_until_ms: 0,
            });
            if known.status.last_seen_ms < status.last_seen_ms {
                known.status = status;
            }
            if live {
                known.grace_until_ms = known.grace_until_ms.max(grace_until_ms);
            }
        }
        drop(gateways);
        self.changed.send_modify(|n| *n += 1);
    }

    /// A gateway polled or reported. Returns what is now known of it, and whether it is new
    /// to the fleet.
    pub fn seen(&self, sighting: Sighting) -> (GatewayStatus, bool) {
        let mut gateways = self.lock();
        let mut new = false;
        let known = gateways.entry(sighting.id.clone()).or_insert_with(|| {
            new = true;
            Known {
                status: GatewayStatus {
                    id: sighting.id.clone(),
                    region: sighting.region.clone(),
                    applied_version: 0,
                    digest: None,
                    diverged: false,
                    last_seen_ms: 0,
                    rejected: None,
                    stale: false,
                },
                grace_until_ms: 0,
            }
        });
        let entry = &mut known.status;
        let material = new
            || entry.region != sighting.region
            || entry.applied_version != sighting.applied
            || entry.diverged != sighting.diverged;
        entry.region = sighting.region;
        entry.applied_version = sighting.applied;
        entry.digest = sighting.digest;
        entry.diverged = sighting.diverged;
        entry.last_seen_ms = now_ms();
        if sighting.rejected.is_some() {
            entry.rejected = sighting.rejected;
        }
        let status = entry.clone();
        drop(gateways);
        self.dirty.store(true, Ordering::Relaxed);
        if material {
            self.material.notify_one();
        }
        self.changed.send_modify(|n| *n += 1);
        (status, new)
    }

    /// What another replica learned of a gateway; kept when newer than what is known here.
    pub fn merge(&self, status: GatewayStatus) {
        let mut gateways = self.lock();
        match gateways.get_mut(&status.id) {
            Some(known) if known.status.last_seen_ms > status.last_seen_ms => return,
            Some(known) => known.status = status,
            None => {
                gateways.insert(
                    status.id.clone(),
                    Known {
                        status,
                        grace_until_ms: 0,
                    },
                );
            }
        }
        drop(gateways);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Drop a gateway from the fleet (it was taken out of service). Whether it was known.
    pub fn forget(&self, id: &str) -> bool {
        let known = self.lock().remove(id).is_some();
        if known {
            self.dirty.store(true, Ordering::Relaxed);
            self.changed.send_modify(|n| *n += 1);
        }
        known
    }

    /// Every gateway, with staleness as of now.
    pub fn list(&self) -> Vec<GatewayStatus> {
        let now = now_ms();
        self.lock()
            .values()
            .map(|known| GatewayStatus {
                stale: self.is_stale(known, now),
                ..known.status.clone()
            })
            .collect()
    }

    fn is_stale(&self, known: &Known, now: u64) -> bool {
        let heard = known.status.last_seen_ms;
        now.saturating_sub(heard) > self.stale_after_ms && now > known.grace_until_ms
    }

    /// The fleet to persist, when it changed since the last call.
    pub fn take_changed(&self) -> Option<Vec<GatewayStatus>> {
        self.dirty
            .swap(false, Ordering::Relaxed)
            .then(|| self.list())
    }

    /// Wait until every gateway of the fleet, stale or not, serves `version` or newer with the
    /// stored content, and each region named in `min_gateways` has at least that many doing
    /// so. Returns how many gateways there are. Fails at once when one refuses the version, and when
    /// `timeout` passes.
    pub async fn wait_converged(
        &self,
        version: u64,
        min_gateways: &BTreeMap<String, u32>,
        timeout: Duration,
    ) -> Result<usize, NotConverged> {
        let deadline = crate::flip::deadline(tokio::time::Instant::now(), timeout);
        let mut changed = self.changed.subscribe();
        loop {
            changed.mark_unchanged();
            // Every gateway of the fleet, stale ones too: a gateway not heard from may be cut
            // off from the control plane and not from its clients, routing by the version it
            // last had. It is waited for until it reports or an operator forgets it (or it
            // left, saying so).
            let gateways = self.list();
            if let Some(refusing) = gateways.iter().find(|g| {
                g.applied_version < version
                    && g.rejected
                        .as_ref()
                        .is_some_and(|r| r.version == Some(version))
            }) {
                return Err(NotConverged::Rejected {
                    gateway: refusing.id.clone(),
                    error: refusing
                        .rejected
                        .as_ref()
                        .map(|r| r.error.clone())
                        .unwrap_or_default(),
                });
            }
            let serves = |g: &GatewayStatus| g.applied_version >= version && !g.diverged;
            let behind: Vec<String> = gateways
                .iter()
                .filter(|g| !serves(g))
                .map(describe)
                .collect();
            let short: Vec<String> = min_gateways
                .iter()
                .filter_map(|(region, &min)| {
                    let serving = gateways
                        .iter()
                        .filter(|g| g.region == *region && serves(g))
                        .count();
                    (serving < min as usize).then(|| {
                        format!(
                            "region {region} has {serving} of the {min} gateway(s) it needs (min_gateways) serving it"
                        )
                    })
                })
                .collect();
            if behind.is_empty() && short.is_empty() {
                return Ok(gateways.len());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NotConverged::Timeout { behind, short });
            }
            // Woken by any report; the short tick notices gateways going stale.
            let tick = deadline.min(tokio::time::Instant::now() + Duration::from_millis(200));
            let _ = tokio::time::timeout_at(tick, changed.changed()).await;
        }
    }
}

/// `hz-1 (hz, serves 6)`, for messages about gateways that did not converge.
fn describe(g: &GatewayStatus) -> String {
    let serves = if g.diverged {
        format!("serves a diverged copy of version {}", g.applied_version)
    } else if g.applied_version == 0 {
        "serves nothing yet".to_owned()
    } else {
        format!("serves {}", g.applied_version)
    };
    if g.stale {
        let quiet_s = now_ms().saturating_sub(g.last_seen_ms) / 1000;
        format!(
            "{} ({}, {serves}, not heard from for {quiet_s} s: if it is gone, forget it with unitctl gateway-forget {})",
            g.id, g.region, g.id
        )
    } else {
        format!("{} ({}, {serves})", g.id, g.region)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sighting(id: &str, region: &str, applied: u64) -> Sighting {
        Sighting {
            id: id.into(),
            region: region.into(),
            applied,
            digest: None,
            diverged: false,
            rejected: None,
        }
    }

    fn status(id: &str, last_seen_ms: u64) -> GatewayStatus {
        GatewayStatus {
            id: id.into(),
            region: "hz".into(),
            applied_version: 3,
            digest: None,
            diverged: false,
            last_seen_ms,
            rejected: None,
            stale: false,
        }
    }

    #[test]
    fn gateways_live_before_a_restart_are_expected_after_it() {
        let registry = Registry::new(Duration::from_secs(60));
        let long_ago = now_ms() - 3_600_000;
        // The control plane was down for an hour: its last news is an hour old.
        registry.restore(vec![
            status("live-then", long_ago),
            status("dead-before", long_ago - 600_000),
        ]);
        let fleet = registry.list();
        let stale = |id: &str| fleet.iter().find(|g| g.id == id).expect("listed").stale;
        assert!(!stale("live-then"), "{fleet:?}");
        assert!(stale("dead-before"), "{fleet:?}");
    }

    #[tokio::test]
    async fn a_step_waits_for_a_restored_gateway_until_it_reports() {
        let registry = std::sync::Arc::new(Registry::new(Duration::from_secs(60)));
        registry.restore(vec![status("late", now_ms() - 10_000)]);
        registry.seen(sighting("early", "sh", 4));
        let none = BTreeMap::new();
        let waited = registry
            .wait_converged(4, &none, Duration::from_millis(50))
            .await;
        assert_eq!(
            waited,
            Err(NotConverged::Timeout {
                behind: vec!["late (hz, serves 3)".into()],
                short: vec![]
            })
        );
        let waiter = {
            let registry = registry.clone();
            tokio::spawn(async move {
                registry
                    .wait_converged(4, &BTreeMap::new(), Duration::from_secs(10))
                    .await
            })
        };
        registry.seen(sighting("late", "hz", 4));
        assert_eq!(waiter.await.expect("task"), Ok(2));
    }

    /// A gateway not heard from may be cut off from the control plane only, routing by the
    /// version it last had: a step waits for it, naming it stale, until it reports, leaves or
    /// is forgotten. One that already serves the version holds nothing.
    #[tokio::test]
    async fn a_step_waits_for_a_stale_gateway_until_it_reports_or_is_forgotten() {
        let registry = Registry::new(Duration::from_secs(60));
        registry.restore(vec![
            status("hz-1", now_ms()),
            status("cut-off", now_ms() - 3_600_000),
        ]);
        registry.seen(sighting("hz-1", "hz", 4));
        let listed = registry.list();
        assert!(
            listed.iter().any(|g| g.id == "cut-off" && g.stale),
            "{listed:?}"
        );
        let none = BTreeMap::new();
        assert_eq!(
            registry
                .wait_converged(3, &none, Duration::from_millis(20))
                .await,
            Ok(2)
        );
        match registry
            .wait_converged(4, &none, Duration::from_millis(20))
            .await
        {
            Err(NotConverged::Timeout { behind, .. }) => {
                assert_eq!(behind.len(), 1, "{behind:?}");
                assert!(
                    behind[0].starts_with("cut-off (hz, serves 3, not heard from for 3600 s")
                        && behind[0].contains("unitctl gateway-forget cut-off"),
                    "{behind:?}"
                );
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(registry.forget("cut-off"));
        assert_eq!(
            registry
                .wait_converged(4, &none, Duration::from_millis(20))
                .await,
            Ok(1)
        );
    }

    #[tokio::test]
    async fn min_gateways_per_region_and_diverged_gateways_hold_a_step() {
        let registry = Registry::new(Duration::from_secs(60));
        registry.seen(sighting("hz-1", "hz", 5));
        let min = BTreeMap::from([("sz".to_owned(), 1)]);
        let waited = registry
            .wait_converged(5, &min, Duration::from_millis(20))
            .await;
        assert_eq!(
            waited,
            Err(NotConverged::Timeout {
                behind: vec![],
                short: vec![
                    "region sz has 0 of the 1 gateway(s) it needs (min_gateways) serving it".into()
                ]
            })
        );
        registry.seen(Sighting {
            diverged: true,
            ..sighting("sz-1", "sz", 5)
        });
        let waited = registry
            .wait_converged(5, &min, Duration::from_millis(20))
            .await
            .expect_err("a diverged copy does not count");
        assert!(
            waited
                .to_string()
                .contains("sz-1 (sz, serves a diverged copy of version 5)"),
            "{waited}"
        );
        registry.seen(sighting("sz-1", "sz", 5));
        assert_eq!(
            registry
                .wait_converged(5, &min, Duration::from_millis(20))
                .await,
            Ok(2)
        );
    }
}
