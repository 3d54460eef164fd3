//! The dashboard's pages as HTML (maud escapes every value). States are always written as
//! words beside their colour; headings, labels and plain links keep it usable by keyboard
//! and screen reader.

use std::collections::BTreeMap;

use maud::{DOCTYPE, Markup, html};
use skiff_proto::api::Report;

use super::{FleetQuery, Role};
use crate::fleet::{ChannelStatus, ClusterStatus, ClusterSummary, Fleet};
use crate::rollout::RolloutStatus;
use crate::trust::Waiting;

/// Clusters per fleet page.
pub const PAGE: usize = 100;

/// The stylesheet.
pub const CSS: &str = include_str!("app.css");

/// Live updates: every few seconds the page's `<main>` is fetched again and replaced.
pub const LIVE_JS: &str = include_str!("live.js");

/// Who looks, and how the page is wanted.
pub struct Viewer {
    /// The role.
    pub role: Role,
    /// The session's CSRF token (every form carries it).
    pub csrf: String,
    /// Only the `<main>` part (a live update).
    pub fragment: bool,
}

fn page(title: &str, v: &Viewer, main: Markup) -> Markup {
    if v.fragment {
        return main;
    }
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · skiff" }
                link rel="stylesheet" href="/ui/static/app.css";
                script src="/ui/static/live.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/ui" { "skiff" }
                    nav aria-label="Main" { a href="/ui" { "Fleet" } }
                    span.who { "Signed in as " strong { (v.role.name()) } }
                    form method="post" action="/ui/logout" {
                        input type="hidden" name="csrf" value=(v.csrf);
                        button type="submit" { "Sign out" }
                    }
                }
                main id="main" data-live="3000" { (main) }
            }
        }
    }
}

/// The sign-in page.
pub fn login(error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Sign in · skiff" }
                link rel="stylesheet" href="/ui/static/app.css";
            }
            body {
                main.login {
                    h1 { "skiff hub" }
                    @if let Some(e) = error { p.error role="alert" { (e) } }
                    form method="post" action="/ui/login" {
                        label for="token" { "Admin or viewer token" }
                        input id="token" name="token" type="password" autocomplete="current-password" required autofocus;
                        button type="submit" { "Sign in" }
                    }
                }
            }
        }
    }
}

/// An error or missing page.
pub fn not_found(message: &str, v: &Viewer) -> Markup {
    page(
        "Not found",
        v,
        html! { h1 { "Sorry" } p.error role="alert" { (message) } p { a href="/ui" { "Back to the fleet" } } },
    )
}

/// A state word with its colour class.
fn badge(state: &str) -> Markup {
    let class = match state {
        "synced" | "Healthy" | "applied" | "checked" | "done" | "complete" | "running" => "ok",
        "progressing" | "Progressing" | "behind" | "paused" | "waiting" | "held" | "deferred" => "warn",
        "failed" | "Degraded" | "rejected" | "drifted" | "degraded" | "halted" | "aborted" => "bad",
        _ => "muted",
    };
    html! { span class={ "badge " (class) } { (state) } }
}

/// How the fleet page names a cluster's state: the summary's, sharpened by drift and health.
fn state_of(c: &ClusterSummary) -> &'static str {
    match c.state {
        "offline" | "unseen" | "failed" => c.state,
        _ if c.held => "held",
        _ if c.waiting => "waiting",
        "synced" if c.unhealthy > 0 => "degraded",
        "synced" if c.drifted > 0 => "drifted",
        "synced" if c.behind => "behind",
        s => s,
    }
}

/// Every state the fleet page counts, in the order it shows them.
const STATES: [&str; 10] = [
    "synced",
    "drifted",
    "degraded",
    "behind",
    "progressing",
    "held",
    "waiting",
    "failed",
    "offline",
    "unseen",
];

fn ago(t: Option<skiff_proto::statement::Timestamp>) -> String {
    let Some(t) = t else { return "never".to_owned() };
    let secs = skiff_proto::statement::Timestamp::now()
        .unix_seconds()
        .saturating_sub(t.unix_seconds());
    match secs {
        0..60 => format!("{secs} s ago"),
        60..3600 => format!("{} min ago", secs / 60),
        3600..86_400 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

/// The fleet page: counts by state, a channel × group matrix, and a filtered, paged list.
pub fn fleet(fleet: &Fleet, q: &FleetQuery, v: &Viewer) -> Markup {
    let all = fleet.summaries();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &all {
        *counts.entry(state_of(c)).or_default() += 1;
    }
    let labels = fleet.cluster_labels();
    let (lk, lv) = q.label.split_once('=').unwrap_or(("", ""));
    let shown: Vec<&ClusterSummary> = all
        .iter()
        .filter(|c| q.q.is_empty() || c.name.contains(q.q.trim()))
        .filter(|c| q.state.is_empty() || state_of(c) == q.state)
        .filter(|c| {
            lk.is_empty()
                || labels
                    .get(&c.name)
                    .and_then(|l| l.get(lk))
                    .is_some_and(|x| x == lv)
        })
        .collect();
    let pages = shown.len().div_ceil(PAGE).max(1);
    let page_no = q.page.min(pages - 1);
    let group = if q.group.is_empty() {
        "region"
    } else {
        q.group.as_str()
    };
    let channels = fleet.channel_statuses();
    // Matrix: channel × value of the group label → (synced, total).
    let mut matrix: BTreeMap<(String, String), (usize, usize)> = BTreeMap::new();
    let mut groups: std::collections::BTreeSet<String> = Default::default();
    let by_name: BTreeMap<&str, &ClusterSummary> = all.iter().map(|c| (c.name.as_str(), c)).collect();
    for ch in &channels {
        for name in &ch.clusters {
            let g = labels
                .get(name)
                .and_then(|l| l.get(group))
                .cloned()
                .unwrap_or_else(|| "(none)".to_owned());
            groups.insert(g.clone());
            let e = matrix.entry((ch.name.clone(), g)).or_default();
            e.1 += 1;
            if by_name
                .get(name.as_str())
                .is_some_and(|c| state_of(c) == "synced")
            {
                e.0 += 1;
            }
        }
    }
    let link = |page: usize| {
        format!(
            "/ui?q={}&state={}&label={}&group={}&page={page}",
            enc(&q.q),
            enc(&q.state),
            enc(&q.label),
            enc(&q.group)
        )
    };
    page(
        "Fleet",
        v,
        html! {
            h1 { "Fleet" }
            section aria-labelledby="counts" {
                h2 id="counts" { "Clusters by state" }
                ul.counts {
                    li { a href="/ui" { strong { (all.len()) } " all" } }
                    @for state in STATES {
                        li { a href={ "/ui?state=" (state) } { strong { (counts.get(state).copied().unwrap_or(0)) } " " (badge(state)) } }
                    }
                }
            }
            section aria-labelledby="matrix" {
                h2 id="matrix" { "Channels by " (group) " (in sync / clusters)" }
                table.matrix {
                    thead { tr { th scope="col" { "Channel" } @for g in &groups { th scope="col" { (g) } } } }
                    tbody {
                        @for ch in &channels {
                            tr {
                                th scope="row" { a href={ "/ui/channels/" (ch.name) } { (ch.name) } }
                                @for g in &groups {
                                    @let cell = matrix.get(&(ch.name.clone(), g.clone())).copied();
                                    @match cell {
                                        Some((ok, n)) => {
                                            @let class = if ok == n { "ok" } else if ok == 0 { "bad" } else { "warn" };
                                            td class=(class) { (ok) " / " (n) @if ok == n { " in sync" } @else { " not in sync" } }
                                        }
                                        None => td.muted { "–" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="list" {
                h2 id="list" { "Clusters" }
                form.filters method="get" action="/ui" role="search" {
                    label for="q" { "Name" } input id="q" name="q" type="search" value=(q.q);
                    label for="state" { "State" }
                    select id="state" name="state" {
                        option value="" { "any" }
                        @for s in STATES {
                            option value=(s) selected[q.state == s] { (s) }
                        }
                    }
                    label for="label" { "Label" } input id="label" name="label" placeholder="key=value" value=(q.label);
                    label for="group" { "Group by" } input id="group" name="group" placeholder="region" value=(q.group);
                    button type="submit" { "Filter" }
                }
                p { (shown.len()) " clusters; page " (page_no + 1) " of " (pages) }
                table.list {
                    thead { tr { th scope="col" { "Cluster" } th scope="col" { "State" } th scope="col" { "Drifted" } th scope="col" { "Unhealthy channels" } th scope="col" { "Last seen" } th scope="col" { "Labels" } } }
                    tbody {
                        @for c in shown.iter().skip(page_no * PAGE).take(PAGE) {
                            tr {
                                td { a href={ "/ui/clusters/" (c.name) } { (c.name) } }
                                td { (badge(state_of(c))) }
                                td { (c.drifted) }
                                td { (c.unhealthy) }
                                td { (ago(c.last_seen)) }
                                td.labels { @for (k, val) in labels.get(&c.name).into_iter().flatten() { code { (k) "=" (val) } " " } }
                            }
                        }
                    }
                }
                nav.pager aria-label="Pages" {
                    @if page_no > 0 { a href=(link(page_no - 1)) { "← previous" } }
                    @if page_no + 1 < pages { a href=(link(page_no + 1)) { "next →" } }
                }
            }
        },
    )
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A cluster's page.
pub fn cluster(c: &ClusterStatus, history: &[Report], v: &Viewer) -> Markup {
    page(
        &c.name,
        v,
        html! {
            h1 { "Cluster " (c.name) }
            dl.facts {
                dt { "Last seen" }
                dd {
                    @if c.offline { (badge("offline")) " for " } (ago(c.last_seen))
                }
                dt { "Labels" }
                dd { @for (k, val) in &c.labels { code { (k) "=" (val) } " " } }
                @if let Some(a) = &c.assignment {
                    dt { "Assignment" }
                    dd { "sequence " (a.sequence) ", signed " (a.issued) @if let Some(e) = a.expires { ", expires " (e) } }
                }
                @if !c.values.is_empty() {
                    dt { "Values set (names only)" }
                    dd { @for k in c.values.keys() { code { (k) } " " } }
                }
            }
            @for ch in &c.channels {
                section.channel aria-labelledby={ "ch-" (ch.channel) } {
                    h2 id={ "ch-" (ch.channel) } { "Channel " a href={ "/ui/channels/" (ch.channel) } { (ch.channel) } }
                    dl.facts {
                        dt { "Desired generation" } dd { (opt(ch.desired_generation)) @if let Some(p) = ch.pin { " (pinned at " (p) ")" } @if let Some(p) = ch.rollout_pin { " (rollout gave it " (p) ")" } }
                        dt { "Applied generation" } dd { (opt(ch.applied_generation)) }
                        dt { "Last report" } dd { @if let Some(r) = &ch.result { (badge(r)) " " } (ago(ch.reported)) @if let Some(m) = &ch.message { " — " (m) } }
                        dt { "Health" } dd { @match &ch.health { Some(h) => (badge(h)), None => "–" } }
                        dt { "Drift" } dd { (ch.drifted) " drifted, " (ch.corrected) " corrected, " (ch.unknown) " unknown" }
                    }
                    @if !ch.drift.is_empty() {
                        table.drift {
                            caption { "Drifted objects" }
                            thead { tr { th scope="col" { "Object" } th scope="col" { "Kind of drift" } th scope="col" { "Path" } th scope="col" { "Desired" } th scope="col" { "Live" } } }
                            tbody {
                                @for d in &ch.drift {
                                    @let secret = d.object.kind == "Secret";
                                    @for p in &d.paths {
                                        tr {
                                            td { (d.object.to_string()) @if d.corrected { " " (badge("corrected")) } }
                                            td { (d.kind) }
                                            td { code { (p.path) } }
                                            td { @if secret { em { "(secret value)" } } @else { code { (value(&p.desired)) } } }
                                            td { @if secret { em { "(secret value)" } } @else { code { (value(&p.live)) } } }
                                        }
                                    }
                                    @if d.paths.is_empty() {
                                        tr { td { (d.object.to_string()) } td { (d.kind) } td colspan="3" { (d.reason.as_deref().unwrap_or("")) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="history" {
                h2 id="history" { "Report history (newest first)" }
                table.list {
                    thead { tr { th scope="col" { "When" } th scope="col" { "Channel" } th scope="col" { "Outcome" } th scope="col" { "Generation" } th scope="col" { "Health" } th scope="col" { "Message" } } }
                    tbody {
                        @for r in history {
                            tr {
                                td { (r.time) }
                                td { (r.channel) }
                                td { (badge(&format!("{:?}", r.outcome).to_lowercase())) }
                                td { (opt(r.generation)) }
                                td { @if let Some(h) = &r.health { (badge(&h.state)) @for (o, why) in &h.objects { br; small { (o) ": " (why) } } } }
                                td { (r.message.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "–".to_owned(), |g| g.to_string())
}

fn value(v: &Option<serde_json::Value>) -> String {
    match v {
        None => "(absent)".to_owned(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// A channel's page, with its rollout and the levers on it.
pub fn channel(
    c: &ChannelStatus,
    rollout: Option<&RolloutStatus>,
    waiting: Option<&Waiting>,
    v: &Viewer,
) -> Markup {
    let r = &c.record;
    page(
        &c.name,
        v,
        html! {
            h1 { "Channel " (c.name) }
            dl.facts {
                dt { "Source" } dd { code { (c.repo) } " branch " code { (c.branch) } " path " code { (if c.path.is_empty() { "/" } else { &c.path }) } }
                dt { "Generation" } dd { (r.generation) @if let Some(commit) = &r.commit { " from commit " code { (commit.chars().take(12).collect::<String>()) } } }
                dt { "Clusters" } dd { (c.clusters.len()) }
                @if let Some(e) = &c.fetch_error { dt { "Fetch error" } dd.error { (e) } }
                @if let Some(e) = &r.last_error { dt { "Build error" } dd.error { "commit " code { (e.commit.chars().take(12).collect::<String>()) } ": " pre { (e.message) } } }
                @if let Some(w) = waiting {
                    dt { "Waiting for signatures" }
                    dd { "generation " (w.generation) " needs " (w.threshold.saturating_sub(w.signed.len())) " more (skiff-hub sign --channel " (c.name) ")" }
                }
            }
            @if let Some(ro) = rollout {
                section aria-labelledby="rollout" {
                    h2 id="rollout" { "Rollout of generation " (ro.generation) " " (badge(&ro.phase.to_string())) }
                    p { "Step " (ro.step) " of " (ro.steps) @if let Some(n) = &ro.step_name { " (" (n) ")" } "; " (ro.reached) " of " (ro.total) " clusters reached" @if let Some(t) = ro.soak_ends { "; soaking until " (t) } }
                    ul.counts {
                        li { strong { (ro.counts.done) } " " (badge("done")) }
                        li { strong { (ro.counts.progressing) } " " (badge("progressing")) }
                        li { strong { (ro.behind) } " " (badge("behind")) }
                        li { strong { (ro.counts.failed) } " " (badge("failed")) }
                        li { strong { (ro.counts.held) } " " (badge("held")) }
                        li { strong { (ro.counts.waiting) } " " (badge("waiting")) }
                        li { strong { (ro.counts.offline) } " " (badge("offline")) }
                    }
                    @if let Some(why) = &ro.reason { p.error role="alert" { (why) } }
                    @if !ro.failed.is_empty() { h3 { "Failed" } ul { @for f in &ro.failed { li { (f) } } } }
                    @if !ro.behind_clusters.is_empty() { h3 { "Behind" } ul { @for b in &ro.behind_clusters { li { a href={ "/ui/clusters/" (b) } { (b) } } } } }
                    div.actions {
                        @for (cmd, label) in [("pause", "Pause"), ("resume", "Resume"), ("promote", "Promote (skip the soak)"), ("abort", "Abort")] {
                            form method="post" action={ "/ui/channels/" (c.name) "/rollout/" (cmd) } {
                                input type="hidden" name="csrf" value=(v.csrf);
                                button type="submit" id={ "rollout-" (cmd) } disabled[v.role != Role::Admin] title=[(v.role != Role::Admin).then_some("viewers cannot act")] { (label) }
                            }
                        }
                    }
                }
            } @else {
                p { "No rollout plan: every generation goes to all its clusters at once." }
            }
            section aria-labelledby="clusters" {
                h2 id="clusters" { "Clusters" }
                ul.inline { @for name in c.clusters.iter().take(500) { li { a href={ "/ui/clusters/" (name) } { (name) } } } }
                @if c.clusters.len() > 500 { p { "… and " (c.clusters.len() - 500) " more (filter on the fleet page)" } }
            }
        },
    )
}
