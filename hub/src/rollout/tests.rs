use super::*;

/// A fleet of clusters with labels, and each one's latest report and whether it is offline.
struct World {
    labels: BTreeMap<String, BTreeMap<String, String>>,
    reports: BTreeMap<String, ReportView>,
    offline: BTreeSet<String>,
}

impl World {
    fn new(clusters: &[(&str, &[(&str, &str)])]) -> Self {
        Self {
            labels: clusters
                .iter()
                .map(|(n, l)| {
                    (
                        (*n).to_owned(),
                        l.iter()
                            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                            .collect(),
                    )
                })
                .collect(),
            reports: BTreeMap::new(),
            offline: BTreeSet::new(),
        }
    }

    fn views(&self) -> Vec<ClusterView<'_>> {
        self.labels
            .iter()
            .map(|(name, labels)| ClusterView {
                member: Member { name, labels },
                offline: self.offline.contains(name),
                report: self.reports.get(name).cloned().unwrap_or_default(),
            })
            .collect()
    }

    fn report(&mut self, cluster: &str, outcome: Outcome, generation: u64, health: &str) {
        self.reports.insert(
            cluster.to_owned(),
            ReportView {
                outcome: Some(outcome),
                generation: Some(generation),
                health: (!health.is_empty()).then(|| health.to_owned()),
                deferred: None,
                message: Some(format!("{outcome:?} {health}")),
            },
        );
    }

    /// Every cluster whose pin allows `generation` applies it and is healthy.
    fn apply_all(&mut self, rollout: &Rollout, generation: u64) {
        let names: Vec<String> = self.labels.keys().cloned().collect();
        for n in names {
            if rollout.pin(&n) >= generation && !self.offline.contains(&n) {
                self.report(&n, Outcome::Applied, generation, "Healthy");
            }
        }
    }

    /// Starts a rollout of generation 2 (`THREE`'s plan) and takes it through its canary
    /// step: the canary applies, soaks 60 s, and step 2 (`eu`) starts.
    fn canary_done(&mut self, plan: &RolloutPlan, r: &mut Rollout) {
        self.advance(plan, r, 0);
        self.apply_all(r, 2);
        self.advance(plan, r, 0);
        self.advance(plan, r, 60);
        assert_eq!(r.step, 1);
    }

    fn advance(&self, plan: &RolloutPlan, r: &mut Rollout, now: u64) -> Vec<String> {
        advance(plan, "shops", r, &self.views(), t(now))
    }
}

fn t(s: u64) -> Timestamp {
    Timestamp::from_unix_seconds(1_000_000 + s)
}

fn plan(yaml: &str) -> RolloutPlan {
    let value = skiff_proto::manifest::parse_yaml("plan", yaml).unwrap()[0]
        .value
        .clone();
    let p: RolloutPlan = serde_json::from_value(value).unwrap();
    p.check().unwrap();
    p
}

/// Nine shops: a canary, four in region eu, four in region us.
fn nine() -> World {
    World::new(&[
        ("s1", &[("ring", "canary")]),
        ("s2", &[("region", "eu")]),
        ("s3", &[("region", "eu")]),
        ("s4", &[("region", "eu")]),
        ("s5", &[("region", "eu")]),
        ("s6", &[("region", "us")]),
        ("s7", &[("region", "us")]),
        ("s8", &[("region", "us")]),
        ("s9", &[("region", "us")]),
    ])
}

const THREE: &str = "
steps:
  - name: canary
    selector: {ring: canary}
    soak: 60s
  - name: eu
    selector: {region: eu}
    soak: 60s
    max_failures: 1
    max_offline: 1
  - name: rest
";

fn pins(r: &Rollout, w: &World) -> Vec<u64> {
    w.labels.keys().map(|n| r.pin(n)).collect()
}

#[test]
fn steps_advance_on_health_after_their_soak() {
    let p = plan(THREE);
    let mut w = nine();
    let mut r = Rollout::start(None, 1, 2, t(0));
    assert_eq!(w.advance(&p, &mut r, 0), vec!["s1"], "the canary moves first");
    assert_eq!(pins(&r, &w), vec![2, 1, 1, 1, 1, 1, 1, 1, 1]);
    assert!(
        w.advance(&p, &mut r, 10).is_empty(),
        "nothing moves while the canary applies"
    );
    w.report("s1", Outcome::Applied, 2, "Progressing");
    assert!(w.advance(&p, &mut r, 20).is_empty());
    assert_eq!(r.ready_since, None, "progressing is not done");
    w.report("s1", Outcome::Applied, 2, "Healthy");
    assert!(w.advance(&p, &mut r, 30).is_empty(), "healthy, soaking");
    assert_eq!(r.ready_since, Some(t(30)));
    assert_eq!(soak_ends(&p, &r), Some(t(90)));
    assert!(w.advance(&p, &mut r, 89).is_empty(), "the soak is not over");
    assert_eq!(w.advance(&p, &mut r, 90), vec!["s2", "s3", "s4", "s5"]);
    assert_eq!((r.step, r.step_started), (1, t(90)));
    w.apply_all(&r, 2);
    w.advance(&p, &mut r, 100);
    assert_eq!(w.advance(&p, &mut r, 160), vec!["s6", "s7", "s8", "s9"]);
    w.apply_all(&r, 2);
    assert!(w.advance(&p, &mut r, 161).is_empty());
    assert_eq!(r.phase, Phase::Complete, "the last step has no soak");
    assert_eq!((r.floor, r.pins.len()), (2, 0));
    assert_eq!(pins(&r, &w), vec![2; 9]);
}

#[test]
fn a_degraded_step_beyond_its_budget_halts_and_nothing_more_moves() {
    let p = plan(THREE);
    let mut w = nine();
    let mut r = Rollout::start(None, 1, 2, t(0));
    w.canary_done(&p, &mut r);
    assert_eq!(r.step, 1);
    w.apply_all(&r, 2);
    w.report("s3", Outcome::Applied, 2, "Degraded");
    assert!(w.advance(&p, &mut r, 61).is_empty());
    assert_eq!(r.phase, Phase::Running, "one failure is within max_failures 1");
    w.report("s4", Outcome::Failed, 2, "");
    assert!(w.advance(&p, &mut r, 62).is_empty());
    assert_eq!(r.phase, Phase::Halted);
    let why = r.reason.clone().unwrap();
    assert!(
        why.contains("2 of 4 clusters of eu failed") && why.contains("s3: Degraded") && why.contains("s4:"),
        "{why}"
    );
    // Recovered clusters do not lift a halt by themselves.
    w.apply_all(&r, 2);
    assert!(w.advance(&p, &mut r, 500).is_empty());
    assert_eq!(pins(&r, &w)[5..], [1, 1, 1, 1], "step 3 never moved");
    let s = status(&p, "shops", &r, &w.views());
    assert_eq!(
        (s.phase, s.step, s.reached, s.counts.done),
        (Phase::Halted, 2, 5, 5)
    );
    // Resumed after the fix: it goes on.
    command(&mut r, Command::Resume).unwrap();
    w.advance(&p, &mut r, 501);
    assert_eq!(w.advance(&p, &mut r, 561).len(), 4);
}

#[test]
fn resuming_a_still_failing_step_halts_again() {
    let p = plan(THREE);
    let mut w = nine();
    let mut r = Rollout::start(None, 1, 2, t(0));
    w.advance(&p, &mut r, 0);
    w.report("s1", Outcome::Rejected, 2, "");
    w.advance(&p, &mut r, 1);
    assert_eq!(r.phase, Phase::Halted, "the canary's budget is 0");
    command(&mut r, Command::Resume).unwrap();
    w.advance(&p, &mut r, 2);
    assert_eq!(r.phase, Phase::Halted);
}

#[test]
fn offline_clusters_are_left_behind_within_budget_and_catch_up() {
    let p = plan(THREE);
    let mut w = nine();
    w.offline.insert("s5".into());
    let mut r = Rollout::start(None, 1, 2, t(0));
    w.canary_done(&p, &mut r);
    w.apply_all(&r, 2);
    w.advance(&p, &mut r, 61);
    assert_eq!(r.ready_since, Some(t(61)), "one offline is within max_offline 1");
    w.advance(&p, &mut r, 121);
    assert_eq!(r.step, 2);
    assert_eq!(r.pin("s5"), 2, "its pin moved: it catches up when it returns");
    let s = status(&p, "shops", &r, &w.views());
    assert_eq!((s.behind, s.behind_clusters.clone()), (1, vec!["s5".to_owned()]));
    assert_eq!(s.counts.offline, 1);
    // Two offline in a step with max_offline 1: the step waits (no halt).
    let mut w = nine();
    w.offline.extend(["s4".to_owned(), "s5".to_owned()]);
    let mut r = Rollout::start(None, 1, 2, t(0));
    w.canary_done(&p, &mut r);
    w.apply_all(&r, 2);
    w.advance(&p, &mut r, 1000);
    assert_eq!((r.step, r.phase, r.ready_since), (1, Phase::Running, None));
    // One comes back and applies: the step is done and soaks.
    w.offline.remove("s4");
    w.apply_all(&r, 2);
    w.advance(&p, &mut r, 1001);
    w.advance(&p, &mut r, 1061);
    assert_eq!(r.step, 2);
    // The one still away catches up later; the rollout completes with it behind, then done.
    w.apply_all(&r, 2);
    w.advance(&p, &mut r, 1062);
    assert_eq!(r.phase, Phase::Complete);
    assert_eq!(status(&p, "shops", &r, &w.views()).behind, 1);
    w.offline.remove("s5");
    w.apply_all(&r, 2);
    assert_eq!(status(&p, "shops", &r, &w.views()).behind, 0);
}

#[test]
fn held_and_waiting_clusters_count_as_absent_not_failed() {
    let p = plan(THREE);
    let mut w = nine();
    let mut r = Rollout::start(None, 1, 2, t(0));
    w.canary_done(&p, &mut r);
    w.apply_all(&r, 2);
    for (name, why) in [("s2", DeferReason::Hold), ("s3", DeferReason::Window)] {
        w.reports.insert(
            name.into(),
            ReportView {
                outcome: Some(Outcome::Deferred),
                generation: Some(1),
                deferred: Some((2, why)),
                ..ReportView::default()
            },
        );
    }
    let v = w.views();
    assert_eq!(standing(&v[1], 2), Standing::Held);
    assert_eq!(standing(&v[2], 2), Standing::Waiting);
    w.advance(&p, &mut r, 61);
    assert_eq!(
        (r.phase, r.ready_since),
        (Phase::Running, None),
        "two absent, max_offline 1"
    );
    let s = status(&p, "shops", &r, &w.views());
    assert_eq!((s.counts.held, s.counts.waiting, s.counts.failed), (1, 1, 0));
    // The window opens: it applies; one held is within budget.
    w.report("s3", Outcome::Applied, 2, "Healthy");
    w.advance(&p, &mut r, 62);
    w.advance(&p, &mut r, 122);
    assert_eq!(r.step, 2);
}

#[test]
fn a_newer_generation_supersedes_from_the_first_step_and_never_lowers_a_pin() {
    let p = plan(THREE);
    let mut w = nine();
    let mut r = Rollout::start(None, 1, 2, t(0));
    w.canary_done(&p, &mut r);
    assert_eq!(pins(&r, &w), vec![2, 2, 2, 2, 2, 1, 1, 1, 1]);
    let mut r3 = Rollout::start(Some(&r), 2, 3, t(70));
    assert_eq!(
        pins(&r3, &w),
        vec![2, 2, 2, 2, 2, 1, 1, 1, 1],
        "everyone keeps what they have"
    );
    assert_eq!(w.advance(&p, &mut r3, 70), vec!["s1"]);
    assert_eq!(pins(&r3, &w), vec![3, 2, 2, 2, 2, 1, 1, 1, 1]);
    w.apply_all(&r3, 3);
    w.advance(&p, &mut r3, 70);
    w.advance(&p, &mut r3, 130);
    w.apply_all(&r3, 3);
    w.advance(&p, &mut r3, 131);
    w.advance(&p, &mut r3, 191);
    w.apply_all(&r3, 3);
    w.advance(&p, &mut r3, 192);
    assert_eq!((r3.phase, pins(&r3, &w)), (Phase::Complete, vec![3; 9]));
    // After a complete rollout, the next starts from its generation.
    let r4 = Rollout::start(Some(&r3), 3, 4, t(200));
    assert_eq!((r4.floor, r4.pins.len()), (3, 0));
}

#[test]
fn pause_resume_promote_and_abort() {
    let p = plan(THREE);
    let mut w = nine();
    let mut r = Rollout::start(None, 1, 2, t(0));
    w.advance(&p, &mut r, 0);
    command(&mut r, Command::Pause).unwrap();
    w.apply_all(&r, 2);
    assert!(w.advance(&p, &mut r, 1000).is_empty());
    assert_eq!((r.step, r.phase), (0, Phase::Paused));
    assert!(command(&mut r, Command::Pause).is_err());
    command(&mut r, Command::Resume).unwrap();
    assert!(command(&mut r, Command::Resume).is_err());
    w.advance(&p, &mut r, 1001);
    assert_eq!(r.ready_since, Some(t(1001)));
    command(&mut r, Command::Promote).unwrap();
    assert_eq!(w.advance(&p, &mut r, 1002).len(), 4, "promote skips the soak");
    assert!(!r.promote, "only for that step");
    w.apply_all(&r, 2);
    w.advance(&p, &mut r, 1003);
    assert_eq!(r.step, 1, "the next step soaks again");
    command(&mut r, Command::Abort).unwrap();
    assert!(w.advance(&p, &mut r, 5000).is_empty());
    assert_eq!(
        (r.phase, pins(&r, &w)),
        (Phase::Aborted, vec![2, 2, 2, 2, 2, 1, 1, 1, 1])
    );
    for cmd in [Command::Resume, Command::Promote, Command::Pause, Command::Abort] {
        assert!(command(&mut r, cmd).unwrap_err().contains("newer generation"));
    }
    // A fix is published: a new rollout from the first step, nobody going back.
    let mut fix = Rollout::start(Some(&r), 2, 3, t(6000));
    assert_eq!(w.advance(&p, &mut fix, 6000), vec!["s1"]);
    let mut halted = Rollout::start(None, 1, 2, t(0));
    halted.phase = Phase::Halted;
    assert!(
        command(&mut halted, Command::Promote).is_err(),
        "a halt is not promoted past"
    );
}

#[test]
fn shares_are_stable_and_new_clusters_join_reached_steps() {
    let p = plan("steps:\n  - share: \"10%\"\n  - share: \"50%\"\n  - {}\n");
    let names: Vec<String> = (0..200).map(|i| format!("c{i}")).collect();
    let none = BTreeMap::new();
    let members: Vec<Member<'_>> = names
        .iter()
        .map(|n| Member {
            name: n,
            labels: &none,
        })
        .collect();
    let steps = steps_of(&p, "shops", &members);
    let count = |s: usize| steps.values().filter(|x| **x == s).count();
    assert_eq!((count(0), count(1), count(2)), (20, 90, 90));
    // One more cluster moves nobody out of the first step's share by more than the boundary.
    let more: Vec<String> = (0..201).map(|i| format!("c{i}")).collect();
    let members2: Vec<Member<'_>> = more
        .iter()
        .map(|n| Member {
            name: n,
            labels: &none,
        })
        .collect();
    let steps2 = steps_of(&p, "shops", &members2);
    let changed = names.iter().filter(|n| steps[*n] != steps2[*n]).count();
    assert!(changed <= 2, "{changed} clusters changed step");
    // Another channel ranks differently.
    let other = steps_of(&p, "depots", &members);
    assert_ne!(
        steps
            .iter()
            .filter(|(_, s)| **s == 0)
            .map(|(n, _)| n)
            .collect::<Vec<_>>(),
        other
            .iter()
            .filter(|(_, s)| **s == 0)
            .map(|(n, _)| n)
            .collect::<Vec<_>>()
    );
    // A cluster registered while step 2 runs gets the generation at once if its step was reached.
    let p = plan(THREE);
    let mut w = nine();
    let mut r = Rollout::start(None, 1, 2, t(0));
    w.canary_done(&p, &mut r);
    w.labels
        .insert("s10".into(), [("region".to_owned(), "eu".to_owned())].into());
    w.labels
        .insert("s11".into(), [("region".to_owned(), "us".to_owned())].into());
    assert_eq!(w.advance(&p, &mut r, 61), vec!["s10"]);
    assert_eq!(r.pin("s11"), 1);
}

#[test]
fn unmatched_clusters_join_the_last_step_and_empty_steps_pass() {
    let p = plan("steps:\n  - clusters: [nobody]\n    soak: 1h\n  - selector: {region: eu}\n");
    let w = nine();
    let steps = steps_of(
        &p,
        "shops",
        &w.views().iter().map(|c| c.member).collect::<Vec<_>>(),
    );
    assert!(steps.values().all(|s| *s == 1));
    let mut r = Rollout::start(None, 0, 1, t(0));
    assert_eq!(r.pin("s1"), 0, "a first generation rolls out too");
    assert_eq!(w.advance(&p, &mut r, 0).len(), 9, "an empty step does not soak");
}

#[test]
fn plans_and_budgets_are_checked() {
    let bad = |yaml: &str| {
        let value = skiff_proto::manifest::parse_yaml("plan", yaml).unwrap()[0]
            .value
            .clone();
        match serde_json::from_value::<RolloutPlan>(value) {
            Ok(p) => p.check().unwrap_err(),
            Err(e) => e.to_string(),
        }
    };
    assert!(bad("steps: []").contains("at least one step"));
    assert!(
        bad("steps:\n  - selector: {a: b}\n    share: \"5%\"\n")
            .contains("one of selector, clusters or share")
    );
    assert!(bad("steps:\n  - share: 5\n").contains("percentage"));
    assert!(bad("steps:\n  - max_failures: \"120%\"\n").contains("0% to 100%"));
    assert!(bad("steps:\n  - max_failures: -1\n").contains("whole number"));
    assert!(bad("steps:\n  - soak: forever\n").contains("forever"));
    assert!(bad("steps:\n  - share: \"0%\"\n").contains("takes nothing"));
    assert_eq!(Budget::Percent(10).allowed(25), 2);
    assert_eq!(Budget::Count(3).allowed(1), 3);
}
