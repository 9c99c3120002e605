//! Unit flips: the sequence of docs/control-plane.md ("Flips"), run as a task that records every
//! step in the store, and the recovery of flips whose runner died.
//!
//! A flip moves one unit or several (`POST /v1/flips`, region evacuations) as one operation:
//! each step that changes the table stores ONE new version for all its units, derived from
//! the version in force (so a table change made meanwhile is kept), fenced by every unit's
//! flip lock. A failed step rolls every unit back together: a version with each unit back in
//! its pre-flip region and state (versions only grow, so "back to the pre-flip version" is a
//! new version equal to it where the flip touched it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use control_api::{
    AuditEntry, AuditOutcome, FlipMode, FlipRecord, FlipState, FlipStep, FlipUnit, StepName,
    StepOutcome, StoredTable, now_ms,
};
use router_rules::{RawTable, UnitState};

use crate::ControlPlane;
use crate::registry::NotConverged;
use crate::store::{PutOutcome, UnitLock};

pub mod admit;

/// In a replication probe's URL, the unit it asks about: a flip of several units probes each
/// unit's URL, in parallel.
pub const UNIT_PLACEHOLDER: &str = "{unit}";

/// Default wait for a convergence step.
pub const DEFAULT_CONVERGE_TIMEOUT_S: u64 = 30;
/// Default wait for a replication probe or an operator's confirmation.
pub const DEFAULT_REPLICATION_TIMEOUT_S: u64 = 60;

/// `how_long` after `from`, or thirty years after it when that is further than an `Instant`
/// reaches: a flip may ask for any number of seconds (`converge_timeout_s`, a replication
/// check's `timeout_s` and `delay_s` go up to `u64::MAX`), and an overflowing deadline would
/// panic the task running the flip.
pub(crate) fn deadline(from: tokio::time::Instant, how_long: Duration) -> tokio::time::Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
    from.checked_add(how_long).unwrap_or(from + FAR)
}

/// A flip id: time-ordered and unique enough across replicas.
pub fn new_id() -> String {
    format!("f{:011x}-{:04x}", now_ms(), fastrand::u16(..))
}

/// Where a unit is and in what state.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Placement {
    region: String,
    state: UnitState,
}

fn placement(table: &RawTable, unit: &str) -> Option<Placement> {
    table
        .units
        .iter()
        .find(|u| u.name == unit)
        .map(|u| Placement {
            region: u.region.clone(),
            state: u.state,
        })
}

/// Where each of `moves`' units is, in `table` (`None` when one is missing).
fn placements(table: &RawTable, moves: &[FlipUnit]) -> Option<Vec<Placement>> {
    moves.iter().map(|m| placement(table, &m.unit)).collect()
}

/// Which end of its move a step puts each unit at.
#[derive(Debug, Clone, Copy)]
enum Side {
    From,
    To,
}

struct Runner {
    cp: Arc<ControlPlane>,
    flip: FlipRecord,
    /// Every unit's lock, held to the end.
    locks: Vec<UnitLock>,
    /// `flip.moves()`, once.
    moves: Vec<FlipUnit>,
    /// A fenced write found a lock no longer this runner's (its lease ran out, and a
    /// recovery took the flip over): from then on it writes nothing, not even the flip's
    /// record, and leaves the flip to whoever holds it now.
    lock_lost: AtomicBool,
}

impl Runner {
    fn new(cp: Arc<ControlPlane>, flip: FlipRecord, locks: Vec<UnitLock>) -> Self {
        let moves = flip.moves();
        Self {
            cp,
            flip,
            locks,
            moves,
            lock_lost: AtomicBool::new(false),
        }
    }

    fn lock_lost(&self) -> bool {
        self.lock_lost.load(Ordering::Relaxed)
    }

    /// What every write must prove: each unit's lock is still held.
    fn fences(&self) -> Vec<(String, String)> {
        self.locks.iter().filter_map(UnitLock::fence).collect()
    }
}

/// Run `flip` to its end in a task of its own (it holds every unit's lock), watched: should the
/// task fail (a panic), its locks go with it and the flip is taken over as one whose control
/// plane stopped (`recover`: completed if every unit arrived, else rolled back), rather than
/// left running with its units frozen until a restart.
pub fn start(cp: Arc<ControlPlane>, flip: FlipRecord, locks: Vec<UnitLock>) {
    let id = flip.id.clone();
    let runner = tokio::spawn(run(cp.clone(), flip, locks));
    tokio::spawn(async move {
        if let Err(error) = runner.await {
            tracing::error!(flip = id, %error, "a flip's task failed; taking the flip over");
            cp.recover_flips().await;
        }
    });
}

/// Run `flip` to its end (it holds every unit's lock).
async fn run(cp: Arc<ControlPlane>, flip: FlipRecord, locks: Vec<UnitLock>) {
    let mut runner = Runner::new(cp, flip, locks);
    let outcome = match runner.flip.mode {
        FlipMode::Planned => runner.planned().await,
        FlipMode::Emergency => runner.emergency().await,
    };
    match outcome {
        Ok(()) => runner.finish(FlipState::Succeeded, None).await,
        Err(why) if runner.lock_lost() => {
            tracing::warn!(flip = runner.flip.id, %why, "the flip's lock is another runner's now; leaving the flip to it");
        }
        Err(why) => runner.roll_back(why).await,
    }
}

/// Finish a flip whose runner stopped (a restart, or another replica's death): it holds every
/// unit's lock. Every unit already in its new region and active is a completed flip; anything
/// else is rolled back, every unit together.
pub async fn recover(cp: Arc<ControlPlane>, flip: FlipRecord, locks: Vec<UnitLock>) {
    let owner = flip.owner.clone();
    let last_step = flip
        .steps
        .last()
        .map(|s| format!("{}", s.name))
        .unwrap_or_else(|| "start".into());
    let mut runner = Runner::new(cp, flip, locks);
    runner.flip.owner = runner.cp.replica.clone();
    let done: Vec<Placement> = runner
        .moves
        .iter()
        .map(|m| Placement {
            region: m.to.clone(),
            state: UnitState::Active,
        })
        .collect();
    let now = runner
        .cp
        .store
        .current()
        .and_then(|t| placements(&t.table, &runner.moves));
    let why = format!(
        "the control plane running it ({owner}) stopped during step {last_step}; taken over by {}",
        runner.cp.replica
    );
    tracing::warn!(flip = runner.flip.id, %why, "recovering an unfinished flip");
    if now.as_ref() == Some(&done) {
        runner.finish(FlipState::Succeeded, Some(why)).await;
    } else {
        runner.roll_back(why).await;
    }
}

impl Runner {
    fn converge_timeout(&self) -> Duration {
        Duration::from_secs(self.flip.converge_timeout_s)
    }

    async fn planned(&mut self) -> Result<(), String> {
        let frozen = self
            .change(StepName::Freeze, Side::From, UnitState::WriteFrozen)
            .await?;
        self.converge(StepName::ConvergeFreeze, frozen).await?;
        self.replication().await?;
        let switched = self
            .change(StepName::Switch, Side::To, UnitState::WriteFrozen)
            .await?;
        self.converge(StepName::ConvergeSwitch, switched).await?;
        let unfrozen = self
            .change(StepName::Unfreeze, Side::To, UnitState::Active)
            .await?;
        // Stored, the unfreeze has let writes into the new regions, where the old ones never
        // saw them: moving back now would lose them. A gateway that has not confirmed it still
        // refuses the units' writes (it serves the switch, frozen), so the flip is done; the
        // step says who did not follow.
        if let Err(why) = self.converge(StepName::ConvergeUnfreeze, unfrozen).await {
            tracing::warn!(flip = self.flip.id, %why, "unfreeze stored; not every gateway confirmed it");
        }
        Ok(())
    }

    async fn emergency(&mut self) -> Result<(), String> {
        let version = self
            .change(StepName::EmergencySwitch, Side::To, UnitState::Active)
            .await?;
        // The old region is gone: waiting is for the record, and never undoes the switch.
        if let Err(why) = self.converge(StepName::ConvergeEmergency, version).await {
            tracing::warn!(flip = self.flip.id, %why, "emergency flip stored; not every gateway confirmed it");
        }
        Ok(())
    }

    /// Record a step as started.
    async fn begin(&mut self, name: StepName) {
        self.flip.steps.push(FlipStep {
            name,
            started_at_ms: now_ms(),
            finished_at_ms: None,
            outcome: StepOutcome::Running,
            version: None,
            detail: None,
        });
        self.save().await;
    }

    /// Record the running step's end.
    async fn end(&mut self, result: Result<Option<u64>, String>, detail: Option<String>) {
        let Some(step) = self.flip.steps.last_mut() else {
            return;
        };
        step.finished_at_ms = Some(now_ms());
        let (outcome, detail) = match &result {
            Ok(version) => {
                step.version = step.version.or(*version);
                (StepOutcome::Ok, detail)
            }
            Err(why) => (StepOutcome::Failed, Some(why.clone())),
        };
        step.outcome = outcome;
        step.detail = detail.clone();
        let name = step.name;
        let version = step.version;
        self.save().await;
        // Steps that stored a version were audited with the write itself.
        let stored = matches!(
            name,
            StepName::Freeze
                | StepName::Switch
                | StepName::Unfreeze
                | StepName::EmergencySwitch
                | StepName::Rollback
        ) && outcome == StepOutcome::Ok;
        if !stored {
            self.audit(
                "flip.step",
                if outcome == StepOutcome::Ok {
                    AuditOutcome::Ok
                } else {
                    AuditOutcome::Failed
                },
                version,
                Some(format!("{name}: {}", detail.unwrap_or_default())),
            )
            .await;
        }
    }

    async fn save(&self) {
        if self.lock_lost() {
            return;
        }
        match self
            .cp
            .store
            .put_flip_fenced(&self.flip, &self.fences())
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(
                    flip = self.flip.id,
                    "the flip's lock was lost (lease expired); the runner stops"
                );
                self.lock_lost.store(true, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::error!(flip = self.flip.id, %error, "cannot save the flip record");
            }
        }
    }

    async fn audit(
        &self,
        action: &str,
        outcome: AuditOutcome,
        version: Option<u64>,
        detail: Option<String>,
    ) {
        if self.lock_lost() {
            return;
        }
        self.cp
            .audit(AuditEntry {
                at_ms: now_ms(),
                actor: self.flip.actor.clone(),
                action: action.into(),
                target: self.flip.unit.clone(),
                outcome,
                status: None,
                version_before: version,
                version_after: None,
                reason: Some(self.flip.reason.clone()),
                flip: Some(self.flip.id.clone()),
                detail,
            })
            .await;
    }

    /// Store one version with every unit at `side` of its move, in `state`. Skips the write
    /// when they all are already so (a recovered flip may find its step done).
    async fn change(
        &mut self,
        name: StepName,
        side: Side,
        state: UnitState,
    ) -> Result<u64, String> {
        self.begin(name).await;
        self.check_cancel(name).await?;
        let want: Vec<Placement> = self
            .moves
            .iter()
            .map(|m| Placement {
                region: match side {
                    Side::From => m.from.clone(),
                    Side::To => m.to.clone(),
                },
                state,
            })
            .collect();
        let result = self.store_placements(name, &want).await;
        let step_result = result.clone().map(Some);
        self.end(step_result, None).await;
        result
    }

    /// Store one version with each unit of the flip placed as `want` says (in `moves`'
    /// order).
    async fn store_placements(&self, name: StepName, want: &[Placement]) -> Result<u64, String> {
        let targets: Vec<(&str, &str, UnitState)> = self
            .moves
            .iter()
            .zip(want)
            .map(|(m, p)| (m.unit.as_str(), p.region.as_str(), p.state))
            .collect();
        let fences = self.fences();
        // A table write made meanwhile (another unit's flip, an admin's change) wins the
        // race; the step is redone on top of it.
        for _ in 0..8 {
            let current = self.cp.store.current().ok_or("the store holds no table")?;
            if placements(&current.table, &self.moves).as_deref() == Some(want) {
                return Ok(current.version);
            }
            let version = current.version + 1;
            let table = with_placements(&current.table, &targets, version)?;
            router_rules::validate(table.clone(), None)
                .map_err(|e| format!("the {name} table is invalid: {}", e.render("table")))?;
            let reason = format!("flip {} ({name}): {}", self.flip.id, self.flip.reason);
            let stored = StoredTable::new(
                table,
                &self.flip.actor,
                Some(reason),
                Some(self.flip.id.clone()),
            );
            let audit = AuditEntry {
                at_ms: stored.stored_at_ms,
                actor: self.flip.actor.clone(),
                action: "flip.step".into(),
                target: self.flip.unit.clone(),
                outcome: AuditOutcome::Ok,
                status: None,
                version_before: Some(current.version),
                version_after: Some(version),
                reason: Some(self.flip.reason.clone()),
                flip: Some(self.flip.id.clone()),
                detail: Some(format!(
                    "{name}: {}",
                    targets
                        .iter()
                        .map(|(unit, region, state)| format!(
                            "unit {unit} -> region {region}, {}",
                            state.as_str()
                        ))
                        .collect::<Vec<_>>()
                        .join("; ")
                )),
            };
            match self
                .cp
                .write_version(current.version, stored, audit, &fences)
                .await
                .map_err(|e| e.to_string())?
            {
                PutOutcome::Stored(version) => return Ok(version),
                // Another writer got there first (with etcd, maybe through another replica,
                // whose version this replica may not have received yet): wait for it, redo.
                PutOutcome::Stale(now) => self.cp.store.wait_for_version(now).await,
                PutOutcome::LockLost => {
                    self.lock_lost.store(true, Ordering::Relaxed);
                    return Err("the flip lock was lost (lease expired)".into());
                }
            }
        }
        Err("the table kept changing under the flip; gave up after 8 tries".into())
    }

    async fn cancelled(&self) -> Option<String> {
        match self.cp.store.flip_signals(&self.flip.id).await {
            Ok(signals) if signals.cancelled => Some("cancelled by an operator".into()),
            _ => None,
        }
    }

    /// Resolves when an operator cancels the flip (through any replica).
    async fn until_cancelled(&self) -> String {
        loop {
            if let Some(why) = self.cancelled().await {
                return why;
            }
            let wake = self.cp.flip_wakeup(&self.flip.id);
            let _ = tokio::time::timeout(Duration::from_millis(200), wake.notified()).await;
        }
    }

    async fn check_cancel(&mut self, name: StepName) -> Result<(), String> {
        match self.cancelled().await {
            Some(why) => {
                let why = format!("{why} before {name}");
                self.end(Err(why.clone()), None).await;
                Err(why)
            }
            None => Ok(()),
        }
    }

    async fn converge(&mut self, name: StepName, version: u64) -> Result<(), String> {
        self.begin(name).await;
        if let Some(step) = self.flip.steps.last_mut() {
            step.version = Some(version);
        }
        let timeout = self.converge_timeout();
        let result = tokio::select! {
            result = self.cp.wait_converged(version, timeout) => result,
            why = self.until_cancelled() => Err(NotConverged::Aborted(why)),
        };
        match result {
            Ok(count) => {
                self.end(
                    Ok(Some(version)),
                    Some(format!("{count} live gateway(s) serve version {version}")),
                )
                .await;
                Ok(())
            }
            Err(why) => {
                let why = match why {
                    NotConverged::Aborted(why) => why,
                    other => other.to_string(),
                };
                self.end(Err(why.clone()), None).await;
                Err(why)
            }
        }
    }

    async fn replication(&mut self) -> Result<(), String> {
        let check = self.flip.replication_check.clone().unwrap_or_default();
        let timeout = Duration::from_secs(check.timeout_s.unwrap_or(DEFAULT_REPLICATION_TIMEOUT_S));
        // A wait for a confirmation carries its deadline from the first record that shows the
        // step running: a reader never sees the wait without it.
        let confirm_from_ms = (check.url.is_none() && check.confirm == Some(true)).then(|| {
            let now = now_ms();
            self.flip.confirm_by_ms =
                Some(now + u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX / 2));
            now
        });
        self.begin(StepName::Replication).await;
        let result = if let Some(url) = &check.url {
            if url.contains(UNIT_PLACEHOLDER) && self.moves.len() > 1 {
                // A probe per unit, all at once: the step takes as long as the slowest.
                let probes = self
                    .moves
                    .iter()
                    .map(|m| url.replace(UNIT_PLACEHOLDER, &m.unit))
                    .collect::<Vec<_>>();
                futures_util::future::try_join_all(probes.iter().map(|u| self.probe(u, timeout)))
                    .await
                    .map(|answers| answers.join("; "))
            } else {
                let url = url.replace(UNIT_PLACEHOLDER, &self.flip.unit);
                self.probe(&url, timeout).await
            }
        } else if let Some(started_ms) = confirm_from_ms {
            self.wait_for_confirmation(timeout, started_ms).await
        } else if let Some(delay) = check.delay_s {
            self.wait(Duration::from_secs(delay))
                .await
                .map(|()| format!("waited {delay} s"))
        } else {
            Ok("no replication check asked for".into())
        };
        match result {
            Ok(detail) => {
                self.end(Ok(None), Some(detail)).await;
                Ok(())
            }
            Err(why) => {
                self.end(Err(why.clone()), None).await;
                Err(why)
            }
        }
    }

    /// Sleep `how_long` unless cancelled.
    async fn wait(&self, how_long: Duration) -> Result<(), String> {
        let deadline = deadline(tokio::time::Instant::now(), how_long);
        loop {
            if let Some(why) = self.cancelled().await {
                return Err(why);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(());
            }
            let wake = self.cp.flip_wakeup(&self.flip.id);
            let _ = tokio::time::timeout_at(
                deadline.min(now + Duration::from_millis(200)),
                wake.notified(),
            )
            .await;
        }
    }

    /// Wait for an operator's confirmation, `timeout` plus what operators added
    /// (`extend`) from `started_ms`, saying until when in the record.
    async fn wait_for_confirmation(
        &mut self,
        timeout: Duration,
        started_ms: u64,
    ) -> Result<String, String> {
        let started = tokio::time::Instant::now();
        loop {
            let signals = self
                .cp
                .store
                .flip_signals(&self.flip.id)
                .await
                .map_err(|e| e.to_string())?;
            if signals.cancelled {
                return Err("cancelled by an operator".into());
            }
            if signals.confirmed {
                self.flip.confirm_by_ms = None;
                return Ok("confirmed by an operator".into());
            }
            let waited = timeout.saturating_add(Duration::from_secs(signals.extended_s));
            let deadline = deadline(started, waited);
            let by_ms =
                started_ms.saturating_add(u64::try_from(waited.as_millis()).unwrap_or(u64::MAX));
            if self.flip.confirm_by_ms != Some(by_ms) {
                self.flip.confirm_by_ms = Some(by_ms);
                self.save().await;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                self.flip.confirm_by_ms = None;
                return Err(format!("no confirmation within {} s", waited.as_secs()));
            }
            let wake = self.cp.flip_wakeup(&self.flip.id);
            let _ = tokio::time::timeout_at(
                deadline.min(now + Duration::from_millis(200)),
                wake.notified(),
            )
            .await;
        }
    }

    async fn probe(&self, url: &str, timeout: Duration) -> Result<String, String> {
        let (server, path) = split_url(url)?;
        let probe = &self.cp.config.replication_probe;
        let trust = control_api::client::Trust::only(probe.ca_file.as_deref());
        let client = control_api::Client::with_trust(&server, None, trust)
            .map_err(|e| format!("replication probe {url}: {e}"))?;
        // Checked when the configuration was read.
        let headers: Vec<(http::HeaderName, http::HeaderValue)> = probe
            .headers
            .iter()
            .filter_map(|(name, value)| {
                Some((
                    http::HeaderName::from_bytes(name.as_bytes()).ok()?,
                    http::HeaderValue::from_bytes(value.as_bytes()).ok()?,
                ))
            })
            .collect();
        let deadline = deadline(tokio::time::Instant::now(), timeout);
        loop {
            if let Some(why) = self.cancelled().await {
                return Err(why);
            }
            let last = match client
                .send(
                    http::Method::GET,
                    &path,
                    &headers,
                    None,
                    Duration::from_secs(2),
                )
                .await
            {
                Ok(reply) if reply.status.is_success() && says_lag_zero(&reply.body) => {
                    return Ok(format!("{url} answered lag 0"));
                }
                Ok(reply) => {
                    format!(
                        "{} {}",
                        reply.status,
                        String::from_utf8_lossy(&reply.body)
                            .chars()
                            .take(200)
                            .collect::<String>()
                    )
                }
                Err(error) => error.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "replication probe {url} did not say lag 0 within {} s; last answer: {last}",
                    timeout.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn roll_back(&mut self, why: String) {
        let pre = match self.cp.store.version(self.flip.pre_flip_version).await {
            Ok(Some(stored)) => placements(&stored.table, &self.moves),
            _ => None,
        };
        let Some(pre) = pre else {
            self.finish(
                FlipState::Failed,
                Some(format!(
                    "{why}; and the pre-flip version {} cannot be read to roll back",
                    self.flip.pre_flip_version
                )),
            )
            .await;
            return;
        };
        let now = self
            .cp
            .store
            .current()
            .and_then(|t| placements(&t.table, &self.moves));
        if now.as_ref() == Some(&pre) {
            // Nothing was stored yet: nothing to undo.
            self.finish(FlipState::RolledBack, Some(why)).await;
            return;
        }
        // A unit already active in its new region has taken writes there that its old region
        // never saw: putting it back would lose them. Only a flip the other way (with its own
        // freeze and replication check) may.
        let taking_writes = now.as_ref().is_some_and(|now| {
            self.moves.iter().zip(now).any(|(m, p)| {
                p.region == m.to && p.region != m.from && p.state == UnitState::Active
            })
        });
        if taking_writes {
            self.finish(
                FlipState::Succeeded,
                Some(format!(
                    "{why}; not rolled back: the units take writes in their new regions since the unfreeze (flip them back to undo it)"
                )),
            )
            .await;
            return;
        }
        self.begin(StepName::Rollback).await;
        let stored = self.store_placements(StepName::Rollback, &pre).await;
        self.end(stored.clone().map(Some), None).await;
        match stored {
            Ok(version) => {
                self.begin(StepName::ConvergeRollback).await;
                let result = self
                    .cp
                    .wait_converged(version, self.converge_timeout())
                    .await;
                match result {
                    Ok(count) => {
                        self.end(
                            Ok(Some(version)),
                            Some(format!("{count} live gateway(s) serve version {version}")),
                        )
                        .await
                    }
                    Err(not) => self.end(Err(not.to_string()), None).await,
                }
                self.finish(FlipState::RolledBack, Some(why)).await;
            }
            Err(rollback) => {
                self.finish(
                    FlipState::Failed,
                    Some(format!("{why}; and the rollback failed: {rollback}")),
                )
                .await;
            }
        }
    }

    async fn finish(&mut self, state: FlipState, error: Option<String>) {
        if self.lock_lost() {
            tracing::warn!(
                flip = self.flip.id,
                ?error,
                "the flip's lock is another runner's now; not ending the flip here"
            );
            return;
        }
        self.flip.state = state;
        self.flip.finished_at_ms = Some(now_ms());
        self.flip.error = error.clone();
        self.save().await;
        let outcome = if state == FlipState::Succeeded {
            AuditOutcome::Ok
        } else {
            AuditOutcome::Failed
        };
        let mut detail = state.as_str().to_owned();
        if self.flip.mode == FlipMode::Emergency && state == FlipState::Succeeded {
            detail.push_str(
                ": emergency flip, switched without waiting for replication; writes not yet replicated from the old region may be lost",
            );
        }
        if let Some(error) = &error {
            detail.push_str(": ");
            detail.push_str(error);
        }
        self.audit(
            "flip.end",
            outcome,
            Some(self.cp.store.current_version()),
            Some(detail),
        )
        .await;
        self.cp.metrics.flip_ended(state);
        self.cp.forget_flip(&self.flip.id);
        tracing::info!(
            flip = self.flip.id,
            unit = self.flip.unit,
            state = state.as_str(),
            error,
            "flip ended"
        );
    }
}

/// `table` with `unit` in `region` and `state`, numbered `version`, validated.
pub fn with_placement(
    table: &RawTable,
    unit: &str,
    region: &str,
    state: UnitState,
    version: u64,
) -> Result<RawTable, String> {
    with_placements(table, &[(unit, region, state)], version)
}

/// `table` with each `(unit, region, state)` of `targets` so placed, numbered `version`,
/// validated.
pub fn with_placements(
    table: &RawTable,
    targets: &[(&str, &str, UnitState)],
    version: u64,
) -> Result<RawTable, String> {
    let mut table = table.clone();
    for &(unit, region, state) in targets {
        let placed = table
            .units
            .iter_mut()
            .find(|u| u.name == unit)
            .ok_or_else(|| format!("unit {unit} is no longer in the table"))?;
        // Moving to the standby region makes the region left behind the new standby.
        if placed.standby.as_deref() == Some(region) {
            placed.standby = Some(placed.region.clone());
        }
        placed.region = region.to_owned();
        placed.state = state;
    }
    table.version = version;
    router_rules::validate(table.clone(), None).map_err(|e| {
        let placed: Vec<String> = targets
            .iter()
            .map(|(unit, region, state)| {
                format!("unit {unit} in region {region}, {}", state.as_str())
            })
            .collect();
        format!(
            "{}: the table would be invalid: {}",
            placed.join("; "),
            e.render("table").trim_end()
        )
    })?;
    Ok(table)
}

/// `http(s)://host:port/path` -> (`http(s)://host:port`, `/path`).
fn split_url(url: &str) -> Result<(String, String), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("replication_check.url {url:?}: {e}"))?;
    let scheme = match uri.scheme_str() {
        Some(scheme @ ("http" | "https")) => scheme,
        _ => {
            return Err(format!(
                "replication_check.url {url:?}: an http:// or https:// URL"
            ));
        }
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("replication_check.url {url:?}: no host"))?;
    let path = uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    Ok((format!("{scheme}://{authority}"), path))
}

/// Whether a probe body says the lag is zero: `0`, `lag 0`, or JSON with `"lag": 0`.
fn says_lag_zero(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text == "0" || text.eq_ignore_ascii_case("lag 0") {
        return true;
    }
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.get("lag").and_then(serde_json::Value::as_f64))
        == Some(0.0)
}

/// Check a replication check before a flip starts.
pub fn check_replication(check: &control_api::ReplicationCheck) -> Result<(), String> {
    let given = [
        check.url.is_some(),
        check.confirm.is_some(),
        check.delay_s.is_some(),
    ]
    .iter()
    .filter(|g| **g)
    .count();
    if given != 1 {
        return Err("replication_check: give exactly one of url, confirm or delay_s".into());
    }
    if let Some(url) = &check.url {
        split_url(&url.replace(UNIT_PLACEHOLDER, "u"))?;
    }
    if check.confirm == Some(false) {
        return Err("replication_check.confirm: must be true when given".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_zero_forms() {
        for yes in [
            "0",
            "lag 0",
            " LAG 0\n",
            r#"{"lag": 0}"#,
            r#"{"lag":0.0,"x":1}"#,
        ] {
            assert!(says_lag_zero(yes.as_bytes()), "{yes}");
        }
        for no in ["1", "lag 3", r#"{"lag": 2}"#, "", "ok"] {
            assert!(!says_lag_zero(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn replication_check_needs_exactly_one_kind() {
        let mut check = control_api::ReplicationCheck::default();
        assert!(check_replication(&check).is_err());
        check.delay_s = Some(1);
        assert!(check_replication(&check).is_ok());
        check.confirm = Some(true);
        assert!(check_replication(&check).is_err());
        let probe = control_api::ReplicationCheck {
            url: Some("ftp://x/".into()),
            ..Default::default()
        };
        assert!(
            check_replication(&probe)
                .expect_err("ftp refused")
                .contains("https://")
        );
    }
}
