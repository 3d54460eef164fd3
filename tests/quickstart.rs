//! The README's first command, `deploy/quickstart.sh`, run for real (with the binaries of
//! this build): it brings up a hub and an agent, corrects drift, rolls out a commit, and
//! Ctrl-C stops everything.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_tests::agent::wait_for;
use skiff_tests::{bin, workspace_root};

#[test]
fn quickstart_runs_a_local_fleet_until_ctrl_c() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("qs");
    let bin_dir = bin("skiff-hub").parent().unwrap().to_owned();
    let mut child = Command::new("bash")
        .arg(workspace_root().join("deploy/quickstart.sh"))
        .arg(&work)
        .env("SKIFF_BIN_DIR", &bin_dir)
        .env_remove("KUBECONFIG")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(tmp.path().join("quickstart.err")).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut output = String::new();
    while !output.contains("Ctrl-C stops") && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            output.push_str(&line);
            output.push('\n');
        }
    }
    let err = || std::fs::read_to_string(tmp.path().join("quickstart.err")).unwrap_or_default();
    assert!(output.contains("skiff is running"), "{output}\n{}", err());
    assert!(output.contains("Ctrl-C stops"), "{output}");
    // The dashboard's address is printed, and it answers (the sign-in page).
    let url = output
        .lines()
        .find_map(|l| l.strip_prefix("Dashboard: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no dashboard address: {output}"))
        .to_owned();
    let page = Command::new("curl")
        .args(["-sS", "-L", "--max-time", "10", &url])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&page.stdout).contains("Admin or viewer token"),
        "{url}"
    );

    // Drift: an emptied file comes back.
    let cm = work.join("cluster/demo/demo/configmap.web-config.yaml");
    assert!(cm.exists(), "{output}");
    std::fs::write(&cm, "{}\n").unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || std::fs::read_to_string(&cm)
            .is_ok_and(|t| t.contains("web-config"))),
        "drift corrected:\n{}",
        std::fs::read_to_string(work.join("agent.log")).unwrap_or_default()
    );
    // Roll-out: a commit reaches the folder.
    let deploy = work.join("fleet/apps/web/deployment.yaml");
    let text = std::fs::read_to_string(&deploy)
        .unwrap()
        .replace("replicas: 2", "replicas: 3");
    std::fs::write(&deploy, text).unwrap();
    let git = Command::new("git")
        .arg("-C")
        .arg(work.join("fleet"))
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qam",
            "3 replicas",
        ])
        .status()
        .unwrap();
    assert!(git.success());
    let applied = work.join("cluster/demo/demo/deployment.web.yaml");
    assert!(wait_for(Duration::from_secs(30), || std::fs::read_to_string(
        &applied
    )
    .is_ok_and(|t| t.contains("\"replicas\": 3"))));

    // Ctrl-C: the script and both services stop.
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status();
    let stopped = wait_for(Duration::from_secs(20), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    assert!(stopped, "quickstart did not stop on Ctrl-C");
    // Both services are gone: their ports no longer answer.
    let hub_url = output
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .map(|u| u.trim_end_matches(|c: char| !c.is_ascii_digit()).to_owned())
        .expect("hub URL in the output");
    let port: u16 = hub_url.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_err()),
        "hub still listening on {port}"
    );
    // The agent let go of its store: status reads the store itself, not the snapshot.
    let status =
        skiff_tests::agent::agent(&["status", "--data-dir", work.join("agent-data").to_str().unwrap()])
            .success();
    assert!(!status.stdout.contains("agent running"), "{}", status.stdout);
    assert!(status.stdout.contains("applied"), "{}", status.stdout);
}
