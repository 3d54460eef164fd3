//! Staged rollouts as plain data: a channel's plan (ordered steps, each choosing clusters
//! and saying what "done" means), which step each cluster belongs to, and the state
//! machine that moves the clusters' generation pins one step at a time. Everything here is
//! a pure function of (plan, clusters and their latest reports, clock); the fleet persists
//! the [`Rollout`] and signs the assignments whose pins moved.
//!
//! A rollout only ever raises a pin: a newer generation during a rollout starts again
//! from the first step while every cluster keeps what it was given (supersede), and a
//! rollback is a new generation with the old content.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use skiff_proto::Sha256Digest;
use skiff_proto::api::{DeferReason, Outcome};
use skiff_proto::statement::Timestamp;

/// A count of clusters, or a share of a step's clusters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Budget {
    /// This many clusters.
    Count(u32),
    /// This percentage (0–100) of the step's clusters, rounded down.
    Percent(u8),
}

impl Default for Budget {
    fn default() -> Self {
        Self::Count(0)
    }
}

impl Budget {
    /// How many of `n` clusters the budget allows.
    pub fn allowed(self, n: usize) -> usize {
        match self {
            Self::Count(c) => c as usize,
            Self::Percent(p) => n * usize::from(p) / 100,
        }
    }
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Count(c) => write!(f, "{c}"),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

fn parse_percent(text: &str) -> Result<u8, String> {
    let digits = text
        .strip_suffix('%')
        .ok_or_else(|| format!("{text:?}: expected a percentage such as \"10%\""))?;
    match digits.trim().parse::<u8>() {
        Ok(p) if p <= 100 => Ok(p),
        _ => Err(format!("{text:?}: a percentage is 0% to 100%")),
    }
}

impl<'de> Deserialize<'de> for Budget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Number(n) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Self::Count)
                .ok_or_else(|| serde::de::Error::custom(format!("{n}: a count is a whole number 0 or more"))),
            serde_json::Value::String(s) => parse_percent(&s)
                .map(Self::Percent)
                .map_err(serde::de::Error::custom),
            other => Err(serde::de::Error::custom(format!(
                "{other}: a count (2) or a percentage (\"10%\")"
            ))),
        }
    }
}

/// A share of the clusters no earlier step took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share(pub u8);

impl<'de> Deserialize<'de> for Share {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => parse_percent(&s).map(Self).map_err(serde::de::Error::custom),
            other => Err(serde::de::Error::custom(format!(
                "{other}: a share is a percentage such as \"10%\""
            ))),
        }
    }
}

/// One step of a plan.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// A name for status and logs (default: `step N`).
    #[serde(default)]
    pub name: String,
    /// Clusters carrying all of these labels.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Clusters by name.
    #[serde(default)]
    pub clusters: BTreeSet<String>,
    /// A share of the clusters no earlier step took, chosen by a stable hash of channel and
    /// cluster name (re-planning never reshuffles them).
    #[serde(default)]
    pub share: Option<Share>,
    /// How long the step's clusters stay applied and healthy before the next step starts.
    #[serde(default, deserialize_with = "skiff_proto::config::duration")]
    pub soak: Duration,
    /// Clusters of the step that may fail (apply failed, rejected, Degraded) before the
    /// rollout halts.
    #[serde(default)]
    pub max_failures: Budget,
    /// Clusters of the step that may be offline, held or waiting for their maintenance
    /// window when the step is done: they are left behind and catch up when they can.
    #[serde(default)]
    pub max_offline: Budget,
}

impl Step {
    /// Its name, or `step N` (1-based).
    pub fn label(&self, index: usize) -> String {
        if self.name.is_empty() {
            format!("step {}", index + 1)
        } else {
            self.name.clone()
        }
    }
}

/// A channel's rollout plan. A step that selects nothing (no selector, clusters or share)
/// takes every cluster left; clusters no step takes join the last step.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutPlan {
    /// The steps, in order.
    pub steps: Vec<Step>,
}

impl RolloutPlan {
    /// Checks the plan; the error names the step and what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.steps.is_empty() {
            return Err("steps: a plan needs at least one step".to_owned());
        }
        if self.steps.len() > 64 {
            return Err(format!("steps: {} steps, at most 64", self.steps.len()));
        }
        for (i, s) in self.steps.iter().enumerate() {
            let kinds = usize::from(!s.selector.is_empty())
                + usize::from(!s.clusters.is_empty())
                + usize::from(s.share.is_some());
            if kinds > 1 {
                return Err(format!(
                    "steps[{i}] ({}): choose clusters by one of selector, clusters or share",
                    s.label(i)
                ));
            }
            if s.share == Some(Share(0)) {
                return Err(format!(
                    "steps[{i}] ({}): a share of 0% takes nothing",
                    s.label(i)
                ));
            }
        }
        Ok(())
    }
}

/// A cluster as the plan sees it.
#[derive(Clone, Copy, Debug)]
pub struct Member<'a> {
    /// Name.
    pub name: &'a str,
    /// Labels.
    pub labels: &'a BTreeMap<String, String>,
}

/// A stable rank of a cluster within a channel (shares take the lowest ranks).
fn rank(channel: &str, cluster: &str) -> u64 {
    let d = Sha256Digest::of(format!("{channel}/{cluster}").as_bytes());
    u64::from_be_bytes(d.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The step (index) of every cluster: each step takes from the clusters no earlier step
/// took; a share takes that share of them, rounded up, by stable rank; clusters no step
/// takes join the last step.
pub fn steps_of(plan: &RolloutPlan, channel: &str, clusters: &[Member<'_>]) -> BTreeMap<String, usize> {
    let mut remaining: Vec<&Member<'_>> = clusters.iter().collect();
    let mut out = BTreeMap::new();
    for (i, step) in plan.steps.iter().enumerate() {
        let taken: Vec<&str> = if !step.selector.is_empty() {
            remaining
                .iter()
                .filter(|m| crate::config::selects(&step.selector, m.labels))
                .map(|m| m.name)
                .collect()
        } else if !step.clusters.is_empty() {
            remaining
                .iter()
                .filter(|m| step.clusters.contains(m.name))
                .map(|m| m.name)
                .collect()
        } else if let Some(Share(p)) = step.share {
            let mut ranked: Vec<(u64, &str)> = remaining
                .iter()
                .map(|m| (rank(channel, m.name), m.name))
                .collect();
            ranked.sort_unstable();
            let n = (ranked.len() * usize::from(p)).div_ceil(100);
            ranked.into_iter().take(n).map(|(_, name)| name).collect()
        } else {
            remaining.iter().map(|m| m.name).collect()
        };
        for name in &taken {
            out.insert((*name).to_owned(), i);
        }
        let taken: BTreeSet<&str> = taken.into_iter().collect();
        remaining.retain(|m| !taken.contains(m.name));
    }
    let last = plan.steps.len().saturating_sub(1);
    for m in remaining {
        out.insert(m.name.to_owned(), last);
    }
    out
}

/// Where a rollout is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Moving.
    Running,
    /// Paused by an operator; nothing moves until resumed.
    Paused,
    /// Stopped itself: more of a step's clusters failed than its budget allows.
    Halted,
    /// Stopped by an operator; pins hold where they are until a newer generation.
    Aborted,
    /// Every step done.
    Complete,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Halted => "halted",
            Self::Aborted => "aborted",
            Self::Complete => "complete",
        })
    }
}

/// A channel's rollout, as persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// The generation being rolled out.
    pub generation: u64,
    /// When it started.
    pub started: Timestamp,
    /// The current step (0-based; the number of steps once complete).
    pub step: usize,
    /// When the current step started.
    pub step_started: Timestamp,
    /// Since when the current step is done within its budgets (its soak runs from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_since: Option<Timestamp>,
    /// Where it is.
    pub phase: Phase,
    /// Why it halted, or who aborted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The current step ends as soon as it is done, without its soak (operator's promote).
    #[serde(default)]
    pub promote: bool,
    /// The generation every cluster not in `pins` may run (0: none yet).
    pub floor: u64,
    /// Clusters given more than the floor.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pins: BTreeMap<String, u64>,
}

impl Rollout {
    /// A finished rollout of `generation`: every cluster may run it.
    pub fn complete(generation: u64, now: Timestamp) -> Self {
        Self {
            generation,
            started: now,
            step: 0,
            step_started: now,
            ready_since: None,
            phase: Phase::Complete,
            reason: None,
            promote: false,
            floor: generation,
            pins: BTreeMap::new(),
        }
    }

    /// A rollout of `generation` starting at the first step. Every cluster keeps what the
    /// `previous` rollout gave it (none: `before`, the generation everyone could run).
    pub fn start(previous: Option<&Rollout>, before: u64, generation: u64, now: Timestamp) -> Self {
        let (floor, pins) = match previous {
            Some(p) if p.phase == Phase::Complete => (p.generation.max(p.floor), BTreeMap::new()),
            Some(p) => (p.floor, p.pins.clone()),
            None => (before, BTreeMap::new()),
        };
        Self {
            generation,
            started: now,
            step: 0,
            step_started: now,
            ready_since: None,
            phase: Phase::Running,
            reason: None,
            promote: false,
            floor,
            pins,
        }
    }

    /// The highest generation `cluster` may run (0: none yet).
    pub fn pin(&self, cluster: &str) -> u64 {
        self.pins
            .get(cluster)
            .copied()
            .unwrap_or(self.floor)
            .max(self.floor)
    }
}

/// What a cluster's latest report on the channel says, as far as a rollout cares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportView {
    /// The outcome.
    pub outcome: Option<Outcome>,
    /// The generation it concerns.
    pub generation: Option<u64>,
    /// Its health state (`Healthy`, `Progressing`, `Degraded`).
    pub health: Option<String>,
    /// A generation the agent holds but does not apply yet, and why.
    pub deferred: Option<(u64, DeferReason)>,
    /// Its message.
    pub message: Option<String>,
}

/// A cluster the channel targets, with what the fleet knows of it.
#[derive(Clone, Debug)]
pub struct ClusterView<'a> {
    /// Name and labels.
    pub member: Member<'a>,
    /// Not heard from for longer than `offline_after`, or never.
    pub offline: bool,
    /// Its latest report on the channel.
    pub report: ReportView,
}

/// Where one cluster stands in a rollout of a generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Applied that generation (or a newer one) and healthy.
    Done,
    /// On its way: not applied yet, or not healthy yet.
    Progressing,
    /// Failed to apply it, refused it, or it is Degraded; why.
    Failed(String),
    /// Not heard from.
    Offline,
    /// The site holds (`skiff-agent hold`).
    Held,
    /// Outside its maintenance window.
    Waiting,
}

/// Where `c` stands with `generation`.
pub fn standing(c: &ClusterView<'_>, generation: u64) -> Standing {
    let r = &c.report;
    let at = r.generation.is_some_and(|g| g >= generation);
    match r.outcome {
        Some(Outcome::Applied | Outcome::Checked) if at => {
            return match r.health.as_deref() {
                Some("Healthy") | None => Standing::Done,
                Some("Degraded") => Standing::Failed(format!(
                    "Degraded at generation {}{}",
                    r.generation.unwrap_or_default(),
                    r.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
                )),
                Some(_) => Standing::Progressing,
            };
        }
        Some(Outcome::Failed | Outcome::Rejected) if at => {
            return Standing::Failed(r.message.clone().unwrap_or_else(|| "failed".to_owned()));
        }
        _ => {}
    }
    if c.offline {
        return Standing::Offline;
    }
    match r.deferred {
        Some((g, DeferReason::Hold)) if g >= generation => Standing::Held,
        Some((g, DeferReason::Window)) if g >= generation => Standing::Waiting,
        _ => Standing::Progressing,
    }
}

/// How a set of clusters stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Applied and healthy.
    pub done: usize,
    /// On their way.
    pub progressing: usize,
    /// Failed.
    pub failed: usize,
    /// Not heard from.
    pub offline: usize,
    /// Held by their site.
    pub held: usize,
    /// Outside their maintenance window.
    pub waiting: usize,
}

impl Counts {
    fn add(&mut self, s: &Standing) {
        match s {
            Standing::Done => self.done += 1,
            Standing::Progressing => self.progressing += 1,
            Standing::Failed(_) => self.failed += 1,
            Standing::Offline => self.offline += 1,
            Standing::Held => self.held += 1,
            Standing::Waiting => self.waiting += 1,
        }
    }

    /// Clusters a step may leave behind: offline, held or waiting.
    pub fn absent(&self) -> usize {
        self.offline + self.held + self.waiting
    }
}

/// Most failed clusters a halt reason and a status name.
pub const FAILED_NAMED: usize = 20;

/// Moves a running rollout as far as it can go now: the pins of every cluster of the steps
/// reached so far are raised to the generation (also clusters that joined those steps
/// later); the current step ends when none of its clusters is still progressing, at most
/// `max_offline` are offline, held or waiting, and it has soaked (`promote`: no soak);
/// more failures than `max_failures` halt it. Returns the clusters whose pins moved.
pub fn advance(
    plan: &RolloutPlan,
    channel: &str,
    rollout: &mut Rollout,
    clusters: &[ClusterView<'_>],
    now: Timestamp,
) -> Vec<String> {
    let mut moved = Vec::new();
    if rollout.phase != Phase::Running {
        return moved;
    }
    let members: Vec<Member<'_>> = clusters.iter().map(|c| c.member).collect();
    let step_of = steps_of(plan, channel, &members);
    // Bounded: each pass either returns or moves one step on.
    for _ in 0..=plan.steps.len() {
        if rollout.step >= plan.steps.len() {
            rollout.phase = Phase::Complete;
            rollout.floor = rollout.floor.max(rollout.generation);
            rollout.pins.retain(|_, g| *g > rollout.generation);
            rollout.ready_since = None;
            return moved;
        }
        for c in clusters {
            if step_of.get(c.member.name).is_some_and(|s| *s <= rollout.step)
                && rollout.pin(c.member.name) < rollout.generation
            {
                rollout.pins.insert(c.member.name.to_owned(), rollout.generation);
                moved.push(c.member.name.to_owned());
            }
        }
        let step = &plan.steps[rollout.step];
        let current: Vec<&ClusterView<'_>> = clusters
            .iter()
            .filter(|c| step_of.get(c.member.name) == Some(&rollout.step))
            .collect();
        let mut counts = Counts::default();
        let mut failed = Vec::new();
        for c in &current {
            let s = standing(c, rollout.generation);
            counts.add(&s);
            if let Standing::Failed(why) = s {
                failed.push(format!("{}: {why}", c.member.name));
            }
        }
        if counts.failed > step.max_failures.allowed(current.len()) {
            rollout.phase = Phase::Halted;
            let shown = failed.len().min(FAILED_NAMED);
            rollout.reason = Some(format!(
                "{} of {} clusters of {} failed (max_failures {}): {}{}",
                counts.failed,
                current.len(),
                step.label(rollout.step),
                step.max_failures,
                failed[..shown].join("; "),
                if failed.len() > shown { "; …" } else { "" }
            ));
            rollout.ready_since = None;
            return moved;
        }
        let ready = counts.progressing == 0 && counts.absent() <= step.max_offline.allowed(current.len());
        if !ready {
            rollout.ready_since = None;
            return moved;
        }
        let since = *rollout.ready_since.get_or_insert(now);
        let soaked = now.unix_seconds().saturating_sub(since.unix_seconds()) >= step.soak.as_secs();
        if !(current.is_empty() || rollout.promote || soaked) {
            return moved;
        }
        rollout.step += 1;
        rollout.step_started = now;
        rollout.ready_since = None;
        rollout.promote = false;
    }
    moved
}

/// When the current step's soak ends, if it is soaking.
pub fn soak_ends(plan: &RolloutPlan, rollout: &Rollout) -> Option<Timestamp> {
    let step = plan.steps.get(rollout.step)?;
    (rollout.phase == Phase::Running)
        .then_some(rollout.ready_since?)
        .map(|t| t.plus(step.soak))
}

/// An operator's command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    /// Stop moving (resumable).
    Pause,
    /// Move again (a halted rollout halts again if its step is still over budget).
    Resume,
    /// End the current step's soak now.
    Promote,
    /// Stop for good; pins hold until a newer generation starts a new rollout.
    Abort,
}

/// Applies an operator's command; the error says why it does not apply.
pub fn command(rollout: &mut Rollout, cmd: Command) -> Result<(), String> {
    let phase = rollout.phase;
    let refuse = |what: &str| {
        Err(format!(
            "the rollout of generation {} is {phase}: {what}",
            rollout.generation
        ))
    };
    match (cmd, phase) {
        (_, Phase::Complete) => refuse("nothing to do"),
        (_, Phase::Aborted) => refuse("publish a newer generation to roll out again"),
        (Command::Pause, Phase::Running) => {
            rollout.phase = Phase::Paused;
            Ok(())
        }
        (Command::Pause, _) => refuse("it is not running"),
        (Command::Resume, Phase::Paused | Phase::Halted) => {
            rollout.phase = Phase::Running;
            rollout.reason = None;
            Ok(())
        }
        (Command::Resume, _) => refuse("it is running"),
        (Command::Promote, Phase::Running | Phase::Paused) => {
            rollout.promote = true;
            Ok(())
        }
        (Command::Promote, _) => refuse("resume it, or abort it and publish a fix"),
        (Command::Abort, _) => {
            rollout.phase = Phase::Aborted;
            rollout.reason = Some("aborted by an operator".to_owned());
            rollout.ready_since = None;
            Ok(())
        }
    }
}

/// A rollout as status shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The channel.
    pub channel: String,
    /// The generation being rolled out.
    pub generation: u64,
    /// Where it is.
    pub phase: Phase,
    /// The current step, 1-based (the number of steps once complete).
    pub step: usize,
    /// Steps in the plan.
    pub steps: usize,
    /// The current step's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_name: Option<String>,
    /// Clusters the channel targets.
    pub total: usize,
    /// Clusters given the generation so far.
    pub reached: usize,
    /// How the reached clusters stand.
    pub counts: Counts,
    /// Clusters of earlier steps that have not applied it yet (offline, held, waiting or
    /// still progressing): they catch up when they can.
    pub behind: usize,
    /// Failed clusters with why (at most [`FAILED_NAMED`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
    /// Clusters left behind, by name (at most [`FAILED_NAMED`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub behind_clusters: Vec<String>,
    /// Why it halted, or that it was aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it started.
    pub started: Timestamp,
    /// When the current step started.
    pub step_started: Timestamp,
    /// When the current step's soak ends, if it is soaking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak_ends: Option<Timestamp>,
}

/// The status of a rollout.
pub fn status(
    plan: &RolloutPlan,
    channel: &str,
    rollout: &Rollout,
    clusters: &[ClusterView<'_>],
) -> RolloutStatus {
    let members: Vec<Member<'_>> = clusters.iter().map(|c| c.member).collect();
    let step_of = steps_of(plan, channel, &members);
    let mut counts = Counts::default();
    let mut reached = 0;
    let mut failed = Vec::new();
    let mut behind = Vec::new();
    for c in clusters {
        if rollout.pin(c.member.name) < rollout.generation {
            continue;
        }
        reached += 1;
        let s = standing(c, rollout.generation);
        counts.add(&s);
        let earlier = step_of
            .get(c.member.name)
            .is_some_and(|s| *s < rollout.step || rollout.phase == Phase::Complete);
        match s {
            Standing::Failed(why) => failed.push(format!("{}: {why}", c.member.name)),
            Standing::Done => {}
            _ if earlier => behind.push(c.member.name.to_owned()),
            _ => {}
        }
    }
    let n_behind = behind.len();
    failed.sort();
    failed.truncate(FAILED_NAMED);
    behind.sort();
    behind.truncate(FAILED_NAMED);
    RolloutStatus {
        channel: channel.to_owned(),
        generation: rollout.generation,
        phase: rollout.phase,
        step: (rollout.step + 1).min(plan.steps.len()),
        steps: plan.steps.len(),
        step_name: {
            let i = rollout.step.min(plan.steps.len().saturating_sub(1));
            plan.steps.get(i).map(|s| s.label(i))
        },
        total: clusters.len(),
        reached,
        counts,
        behind: n_behind,
        failed,
        behind_clusters: behind,
        reason: rollout.reason.clone(),
        started: rollout.started,
        step_started: rollout.step_started,
        soak_ends: soak_ends(plan, rollout),
    }
}

#[cfg(test)]
mod tests;
