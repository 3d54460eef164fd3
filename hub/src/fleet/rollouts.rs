//! The fleet's rollouts: a new generation of a channel with a plan starts one; a timer
//! moves it on as the clusters' reports allow; operators pause, resume, promote and abort
//! it. What moves, and when, is decided in [`crate::rollout`]; here it is persisted (before
//! the assignments it changes are signed) and served.

use std::collections::{BTreeMap, HashSet};

use skiff_proto::statement::Timestamp;
use tracing::{info, warn};

use super::{Fleet, FleetError, State};
use crate::rollout::{self, ClusterView, Command, Member, Phase, Rollout, RolloutPlan, RolloutStatus};
use crate::store::ClusterRecord;

impl Fleet {
    /// The rollout plan of a channel, if it has one.
    fn plan(&self, channel: &str) -> Option<&RolloutPlan> {
        self.channels.iter().find(|c| c.name == channel)?.rollout.as_ref()
    }

    /// The highest generation of `channel` its rollout has given `cluster` (None: the
    /// channel has no plan).
    pub(super) fn rollout_pin(&self, state: &State, channel: &str, cluster: &str) -> Option<u64> {
        self.plan(channel)?;
        state.rollouts.get(channel).map(|r| r.pin(cluster))
    }

    /// The highest generation of `channel` a cluster may run: its own pin, lowered by the
    /// channel's rollout.
    pub(super) fn pin_of(&self, state: &State, channel: &str, record: &ClusterRecord) -> Option<u64> {
        let own = record.pins.get(channel).copied();
        match (own, self.rollout_pin(state, channel, &record.name)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Every channel's pin for a cluster (what its assignment says).
    pub(super) fn effective_pins(&self, state: &State, record: &ClusterRecord) -> BTreeMap<String, u64> {
        self.channels
            .iter()
            .filter_map(|c| Some((c.name.clone(), self.pin_of(state, &c.name, record)?)))
            .collect()
    }

    /// Every channel's pin for a cluster, own and rollout's.
    pub fn pins_of(&self, record: &ClusterRecord) -> BTreeMap<String, u64> {
        let state = self.state.read().expect("fleet lock");
        self.effective_pins(&state, record)
    }

    /// Takes the stored rollouts; a channel with a plan and none yet starts complete at its
    /// current generation (what every cluster may run already is not rolled out again).
    pub(super) fn load_rollouts(&self, state: &mut State) -> Result<(), FleetError> {
        state.rollouts = self.store.rollouts()?.into_iter().collect();
        let now = Timestamp::now();
        for c in self.channels.iter().filter(|c| c.rollout.is_some()) {
            let generation = state.channels.get(&c.name).map_or(0, |r| r.generation);
            match state.rollouts.get(&c.name) {
                None => {
                    let r = Rollout::complete(generation, now);
                    self.store.put_rollout(&c.name, &r)?;
                    state.rollouts.insert(c.name.clone(), r);
                }
                // Built before a stop that came before its rollout was written: start it now.
                Some(r) if r.generation < generation => {
                    let before = r.generation;
                    self.start_rollout(state, &c.name, before, generation)?;
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// A new generation of `channel` (after `before`): with a plan, starts its rollout from
    /// the first step (superseding one under way) and moves what can move now.
    pub(super) fn start_rollout(
        &self,
        state: &mut State,
        channel: &str,
        before: u64,
        generation: u64,
    ) -> Result<(), FleetError> {
        if self.plan(channel).is_none() {
            return Ok(());
        }
        let previous = state.rollouts.get(channel);
        if previous.is_some_and(|p| p.generation >= generation) {
            return Ok(());
        }
        if let Some(p) = previous.filter(|p| !matches!(p.phase, Phase::Complete | Phase::Aborted)) {
            info!(
                channel,
                superseded = p.generation,
                generation,
                "Newer generation: the rollout starts again from the first step; clusters keep what they have"
            );
        } else {
            info!(channel, generation, "Rollout started");
        }
        let rollout = Rollout::start(previous, before, generation, Timestamp::now());
        self.store.put_rollout(channel, &rollout)?;
        state.rollouts.insert(channel.to_owned(), rollout);
        self.step_rollouts(state, Some(channel))?;
        Ok(())
    }

    /// The clusters `channel` targets, as its rollout sees them.
    fn views<'a>(&self, state: &'a State, channel: &str) -> Vec<ClusterView<'a>> {
        let Some(config) = self.channels.iter().find(|c| c.name == channel) else {
            return Vec::new();
        };
        state
            .clusters
            .values()
            .filter(|c| config.targets.matches(&c.name, &c.labels))
            .map(|c| ClusterView {
                member: Member {
                    name: &c.name,
                    labels: &c.labels,
                },
                offline: c.last_seen.is_none() || self.is_offline(c.last_seen),
                report: state
                    .latest
                    .get(&c.name)
                    .and_then(|l| l.get(channel))
                    .map(|l| l.view())
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// Moves every running rollout (or `only` one's) as far as it goes now; persists those
    /// that changed, then signs the assignments whose pins moved. Returns how many
    /// clusters' pins moved.
    fn step_rollouts(&self, state: &mut State, only: Option<&str>) -> Result<usize, FleetError> {
        let now = Timestamp::now();
        let mut moved: HashSet<String> = HashSet::new();
        let mut changed_any = false;
        for c in &self.channels {
            let Some(plan) = &c.rollout else { continue };
            if only.is_some_and(|o| o != c.name) {
                continue;
            }
            let Some(before) = state.rollouts.get(&c.name) else {
                continue;
            };
            if before.phase != Phase::Running {
                continue;
            }
            let mut after = before.clone();
            let pins = rollout::advance(plan, &c.name, &mut after, &self.views(state, &c.name), now);
            if after == *before {
                continue;
            }
            if after.step != before.step || after.phase != before.phase {
                let step = plan.steps.get(after.step).map(|s| s.label(after.step));
                match after.phase {
                    Phase::Halted => {
                        warn!(channel = %c.name, generation = after.generation, reason = after.reason.as_deref().unwrap_or(""), "Rollout halted")
                    }
                    Phase::Complete => {
                        info!(channel = %c.name, generation = after.generation, "Rollout complete")
                    }
                    _ => {
                        info!(channel = %c.name, generation = after.generation, step = step.as_deref().unwrap_or(""), moved = pins.len(), "Rollout step started")
                    }
                }
            }
            self.store.put_rollout(&c.name, &after)?;
            state.rollouts.insert(c.name.clone(), after);
            moved.extend(pins);
            changed_any = true;
        }
        if changed_any {
            self.refresh_where(state, |name| moved.contains(name))?;
            if !moved.is_empty() {
                self.changed(state);
            }
        }
        Ok(moved.len())
    }

    /// Moves running rollouts on (the hub calls this on a timer). Looks under the read lock
    /// first; takes the write lock only when something moves.
    pub fn tick_rollouts(&self) -> Result<usize, FleetError> {
        let now = Timestamp::now();
        let due = {
            let state = self.state.read().expect("fleet lock");
            self.channels.iter().any(|c| {
                let (Some(plan), Some(r)) = (&c.rollout, state.rollouts.get(&c.name)) else {
                    return false;
                };
                if r.phase != Phase::Running {
                    return false;
                }
                let mut probe = r.clone();
                rollout::advance(plan, &c.name, &mut probe, &self.views(&state, &c.name), now);
                probe != *r
            })
        };
        if !due {
            return Ok(0);
        }
        let mut state = self.state.write().expect("fleet lock");
        self.step_rollouts(&mut state, None)
    }

    /// An operator's command on a channel's rollout; returns its status after.
    pub fn rollout_command(&self, channel: &str, cmd: Command) -> Result<RolloutStatus, FleetError> {
        if !self.channels.iter().any(|c| c.name == channel) {
            return Err(FleetError::Invalid(format!(
                "channel {channel:?} is not configured"
            )));
        }
        if self.plan(channel).is_none() {
            return Err(FleetError::Invalid(format!(
                "channel {channel:?} has no rollout plan (every generation goes to all its clusters at once)"
            )));
        }
        let mut state = self.state.write().expect("fleet lock");
        let mut r = state
            .rollouts
            .get(channel)
            .cloned()
            .ok_or_else(|| FleetError::Invalid(format!("channel {channel:?} has no rollout yet")))?;
        rollout::command(&mut r, cmd).map_err(FleetError::Invalid)?;
        info!(channel, generation = r.generation, command = ?cmd, "Rollout command");
        self.store.put_rollout(channel, &r)?;
        state.rollouts.insert(channel.to_owned(), r);
        self.step_rollouts(&mut state, Some(channel))?;
        Ok(self
            .rollout_status_in(&state, channel)
            .expect("has a plan and a rollout"))
    }

    fn rollout_status_in(&self, state: &State, channel: &str) -> Option<RolloutStatus> {
        let plan = self.plan(channel)?;
        let r = state.rollouts.get(channel)?;
        Some(rollout::status(plan, channel, r, &self.views(state, channel)))
    }

    /// Every channel's rollout as status shows it (channels with a plan).
    pub fn rollout_statuses(&self) -> Vec<RolloutStatus> {
        let state = self.state.read().expect("fleet lock");
        self.channels
            .iter()
            .filter_map(|c| self.rollout_status_in(&state, &c.name))
            .collect()
    }
}
