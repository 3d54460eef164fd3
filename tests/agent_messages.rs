//! What the agent says when it cannot reach its hub: the cause, once, and what to do.

use std::path::Path;
use std::time::Duration;

use skiff_proto::keys::SigningKey;
use skiff_tests::agent::{AgentProcess, agent, wait_for, write_config};
use skiff_tests::hub::{HubProcess, free_port};

fn key(dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("signing.pub.pem");
    std::fs::write(&p, SigningKey::generate().unwrap().public_key().to_spki_pem()).unwrap();
    p
}

fn log_of(extra: &str, expect: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(
        &tmp.path().join("agent"),
        "edge-1",
        &key(&tmp.path().join("keys")),
        &format!("dir:{}", tmp.path().join("out").display()),
        &format!("{extra}token: t0k3n\n"),
    );
    let mut proc = AgentProcess::start(&config);
    let said = wait_for(Duration::from_secs(20), || proc.log().contains(expect));
    let log = proc.log();
    proc.kill();
    assert!(said, "expected {expect:?} in:\n{log}");
    log
}

#[test]
fn connection_failures_say_their_cause_and_what_to_do() {
    // Nothing listens: the cause, at WARN, and no claim of a last good state on a fresh agent.
    let port = free_port();
    let log = log_of(&format!("hub: http://127.0.0.1:{port}\n"), "Connection refused");
    let line = log.lines().find(|l| l.contains("Connection refused")).unwrap();
    assert!(
        line.contains("WARN") && line.contains("nothing applied yet"),
        "{line}"
    );
    assert!(!log.contains("keeping the last good state"), "{log}");

    // https:// to a plain HTTP hub.
    let dir = tempfile::tempdir().unwrap();
    let repo = skiff_tests::GitRepo::init(&dir.path().join("fleet"));
    repo.copy_dir(&skiff_tests::examples_dir().join("apps"), "apps");
    repo.commit_all("fleet");
    let hub = HubProcess::start(
        &dir.path().join("hub"),
        &format!(
            "repos:\n  - {{name: fleet, url: \"file://{}\", poll: 1h}}\nchannels: []\n",
            repo.path().display()
        ),
    );
    log_of(
        &format!("hub: https://127.0.0.1:{}\n", hub.port),
        "is the hub plain HTTP?",
    );

    // A hub URL with a path: 404 says the URL is wrong.
    log_of(&format!("hub: {}/skiff\n", hub.url()), "is `hub` the hub's URL");

    // An unknown token: 401 says so, and the hub logs it.
    log_of(
        &format!("hub: {}\n", hub.url()),
        "the hub does not know this token",
    );
    assert!(
        wait_for(Duration::from_secs(15), || hub
            .log()
            .contains("unknown bearer token")),
        "{}",
        hub.log()
    );
}

#[test]
fn a_missing_token_file_is_a_config_error_that_says_where_tokens_come_from() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(
        &tmp.path().join("agent"),
        "edge-1",
        &key(&tmp.path().join("keys")),
        &format!("dir:{}", tmp.path().join("out").display()),
        &format!(
            "hub: http://127.0.0.1:9\ntoken_file: {}\n",
            tmp.path().join("missing").display()
        ),
    );
    let run = agent(&["run", "--config", config.to_str().unwrap()]);
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr.contains("token_file") && run.stderr.contains("skiff-hub cluster add"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("Agent starting"), "{}", run.stderr);
}

#[test]
fn swapped_bundle_and_envelope_get_a_hint() {
    let run = agent(&["bundle", "verify", "--key", "k.pem", "x.dsse.json", "x.tar.gz"]);
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr.contains("the bundle (.tar.gz) comes first"),
        "{}",
        run.stderr
    );
}

/// A cluster relabelled out of a channel whose `on_unassign` is `keep` keeps its objects, and
/// the agent stops enforcing them (said in its log; the hub's status shows the channel
/// untargeted).
#[test]
fn an_untargeted_channel_is_kept_and_no_longer_enforced() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = skiff_tests::GitRepo::init(&tmp.path().join("fleet"));
    repo.copy_dir(&skiff_tests::examples_dir().join("apps"), "apps");
    repo.commit_all("fleet");
    let hub = HubProcess::start(
        &tmp.path().join("hub"),
        &format!(
            "repos:\n  - {{name: fleet, url: \"{}\", poll: 1h}}\nchannels:\n  - {{name: demo, repo: fleet, branch: main, path: apps, namespace: demo, on_unassign: keep, targets: {{labels: {{env: dev}}}}}}\n",
            repo.path().display()
        ),
    );
    let token = hub.add_cluster("edge-1", &["env=dev"]);
    let target = tmp.path().join("out");
    let config = write_config(
        &tmp.path().join("agent"),
        "edge-1",
        &hub.public_key(),
        &format!("dir:{}", target.display()),
        &format!("hub: {}\ntoken: {token}\ndrift_interval: 1s\n", hub.url()),
    );
    let mut proc = AgentProcess::start(&config);
    let cm = target.join("demo/demo/configmap.web-config.yaml");
    assert!(
        wait_for(Duration::from_secs(20), || cm.exists()),
        "{}",
        proc.log()
    );
    // Healed while targeted.
    std::fs::write(&cm, "edited").unwrap();
    assert!(
        wait_for(Duration::from_secs(20), || std::fs::read_to_string(&cm)
            .is_ok_and(|t| t != "edited")),
        "{}",
        proc.log()
    );
    // A file nobody of skiff's wrote in the channel's folder is named in the log, left alone.
    let stray = target.join("demo/demo/someone-elses.yaml");
    std::fs::write(&stray, "kind: Note\n").unwrap();
    assert!(
        wait_for(Duration::from_secs(20), || proc
            .log()
            .contains("someone-elses.yaml")),
        "{}",
        proc.log()
    );
    assert!(
        proc.log()
            .contains("Files in the channel's folder that skiff did not write")
    );
    assert!(stray.exists());
    hub.admin(&["cluster", "label", "edge-1", "env-"]).success();
    assert!(
        wait_for(Duration::from_secs(20), || proc
            .log()
            .contains("no longer assigned: its objects are kept")),
        "{}",
        proc.log()
    );
    std::fs::write(&cm, "edited again").unwrap();
    std::thread::sleep(Duration::from_secs(4)); // several drift intervals
    assert_eq!(
        std::fs::read_to_string(&cm).unwrap(),
        "edited again",
        "not enforced any more"
    );
    let status = hub.admin(&["status"]).success().stdout;
    assert!(status.contains("untargeted (kept, not enforced)"), "{status}");
    proc.kill();
}

/// JSON logs carry message and level at the top level (what log shippers index).
#[test]
fn json_logs_have_message_and_level_at_the_top() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(
        &tmp.path().join("agent"),
        "edge-1",
        &key(&tmp.path().join("keys")),
        &format!("dir:{}", tmp.path().join("out").display()),
        &format!("import_dir: {}\n", tmp.path().join("usb").display()),
    );
    let log = tmp.path().join("json.log");
    let mut child = std::process::Command::new(skiff_tests::bin("skiff-agent"))
        .args([
            "run",
            "--config",
            config.to_str().unwrap(),
            "--log-format",
            "json",
        ])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("Agent starting"))
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(started);
    let text = std::fs::read_to_string(&log).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["message"], "Agent starting", "{line}");
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["cluster"], "edge-1", "{line}");
}
