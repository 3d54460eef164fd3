//! The dashboard over real HTTP: a hub process, agents (dir target) reporting to it, sign-in
//! with the admin and a viewer token, the fleet, cluster and channel pages, a drift seen on
//! the cluster page, and a rollout paused and resumed from the channel page; a viewer and a
//! form without its CSRF token are refused by the server.

use std::time::Duration;

use skiff_tests::agent::wait_for;
use skiff_tests::hub::HubProcess;
use skiff_tests::ui_fleet::{UiFleet, VIEWER_TOKEN, configmap};

const WAIT: Duration = Duration::from_secs(45);

/// An HTTP answer: status, headers (raw), body.
struct Answer {
    status: u16,
    headers: String,
    body: String,
}

/// One request with the real `curl` (no redirects followed): `args` add method, cookie, form.
fn curl(url: &str, args: &[&str]) -> Answer {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "-D", "-", "-o", "-"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        headers: head.to_owned(),
        body: body.to_owned(),
    }
}

/// Signs in; returns the session cookie (`name=value`).
fn sign_in(hub: &HubProcess, token: &str) -> String {
    let r = curl(
        &format!("{}/ui/login", hub.url()),
        &["--data-urlencode", &format!("token={token}")],
    );
    assert_eq!(r.status, 303, "{}", r.headers);
    let cookie = r
        .headers
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a session cookie")
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Path=/ui"),
        "{cookie}"
    );
    cookie.split(';').next().unwrap().to_owned()
}

fn get(hub: &HubProcess, cookie: &str, path: &str) -> (u16, String) {
    let r = curl(&format!("{}{path}", hub.url()), &["-b", cookie]);
    (r.status, r.body)
}

fn csrf(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    page[at..at + page[at..].find('"').unwrap()].to_owned()
}

fn post(hub: &HubProcess, cookie: &str, path: &str, csrf: Option<&str>) -> u16 {
    let field = format!("csrf={}", csrf.unwrap_or(""));
    let mut args = vec!["-b", cookie, "-X", "POST"];
    if csrf.is_some() {
        args.extend(["--data-urlencode", &field]);
    }
    curl(&format!("{}{path}", hub.url()), &args).status
}

#[test]
fn sign_in_read_the_fleet_see_drift_and_steer_a_rollout() {
    let ui = UiFleet::start(&["eu", "us"], false);
    let (hub, repo) = (&ui.hub, &ui.repo);
    let agents = &ui.sites;
    let file = |i: usize| ui.file(i);

    // Without a session: to the sign-in page; a wrong token is refused.
    let (status, _) = get(hub, "skiff_session=forged", "/ui");
    assert_eq!(status, 303);
    let r = curl(
        &format!("{}/ui/login", hub.url()),
        &["--data-urlencode", "token=not-a-token-of-this-hub"],
    );
    assert_eq!(r.status, 401);

    let admin = sign_in(hub, &hub.admin_token);
    assert!(
        wait_for(WAIT, || get(hub, &admin, "/ui")
            .1
            .contains("state=synced\"><strong>2</strong>")),
        "{}",
        get(hub, &admin, "/ui").1
    );
    let (status, fleet) = get(hub, &admin, "/ui?group=region");
    assert_eq!(status, 200);
    for needle in [
        "shop-0",
        "shop-1",
        "Clusters by state",
        "Channels by region",
        "1 / 1 in sync",
    ] {
        assert!(fleet.contains(needle), "{needle}: {fleet}");
    }
    // Nothing on the page comes from elsewhere.
    assert!(
        !fleet.contains("http://") && !fleet.contains("https://"),
        "{fleet}"
    );
    let (_, filtered) = get(hub, &admin, "/ui?q=shop-1");
    assert!(
        filtered.contains("shop-1") && !filtered.contains(">shop-0<"),
        "{filtered}"
    );

    // A hand edit on shop-1 shows as drift with its path and values.
    let text = std::fs::read_to_string(file(1)).unwrap();
    std::fs::write(file(1), text.replace("v1", "edited-by-hand")).unwrap();
    assert!(
        wait_for(WAIT, || get(hub, &admin, "/ui/clusters/shop-1")
            .1
            .contains("edited-by-hand")),
        "{}",
        agents[1].1.log()
    );
    let (_, page) = get(hub, &admin, "/ui/clusters/shop-1");
    assert!(
        page.contains("Drifted objects") && page.contains("region=us"),
        "{page}"
    );
    let (_, fleet) = get(hub, &admin, "/ui?state=drifted");
    assert!(fleet.contains("shop-1"), "{fleet}");

    // A new commit starts a rollout; it soaks at the canary. Pause and resume it.
    repo.write("apps/app.yaml", configmap("v2"));
    repo.commit_all("v2");
    assert!(
        wait_for(WAIT, || get(hub, &admin, "/ui/channels/demo")
            .1
            .contains("soaking until")),
        "{}",
        get(hub, &admin, "/ui/channels/demo").1
    );
    let (_, page) = get(hub, &admin, "/ui/channels/demo");
    let token = csrf(&page);
    assert_eq!(post(hub, &admin, "/ui/channels/demo/rollout/pause", None), 403);
    assert_eq!(
        post(hub, &admin, "/ui/channels/demo/rollout/pause", Some("wrong")),
        403
    );
    let paused = || ui.phase();
    assert_eq!(paused(), "running");
    assert_eq!(
        post(hub, &admin, "/ui/channels/demo/rollout/pause", Some(&token)),
        303
    );
    assert_eq!(paused(), "paused");

    // A viewer reads, and the server refuses its actions (not only greyed-out buttons).
    let viewer = sign_in(hub, VIEWER_TOKEN);
    let (_, page) = get(hub, &viewer, "/ui/channels/demo");
    assert!(page.contains("viewer") && page.contains("disabled"), "{page}");
    assert_eq!(
        post(
            hub,
            &viewer,
            "/ui/channels/demo/rollout/resume",
            Some(&csrf(&page))
        ),
        403
    );
    assert_eq!(paused(), "paused");
    assert_eq!(
        post(hub, &admin, "/ui/channels/demo/rollout/resume", Some(&token)),
        303
    );
    assert_eq!(paused(), "running");
    assert!(hub.log().contains("Dashboard action: rollout command"));
    assert!(hub.log().contains("viewers cannot act"));
}
