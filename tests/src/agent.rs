//! A real `skiff-agent` for tests: its config, and the process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Run, bin};

/// Writes an agent config in `dir` and returns its path. `extra` is appended YAML.
pub fn write_config(dir: &Path, cluster: &str, trusted_key: &Path, target: &str, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("agent dir");
    let path = dir.join("agent.yaml");
    let config = format!(
        "cluster: {cluster}\ntrusted_keys: [{}]\ndata_dir: {}\ntarget: {target}\nlong_poll_wait: 2s\npoll_interval: 1s\nmax_backoff: 2s\n{extra}\n",
        trusted_key.display(),
        dir.join("data").display(),
    );
    std::fs::write(&path, config).expect("agent config");
    path
}

/// Runs `skiff-agent ARGS`.
pub fn agent(args: &[&str]) -> Run {
    Command::new(bin("skiff-agent"))
        .args(args)
        .output()
        .expect("run skiff-agent")
        .into()
}

/// A running `skiff-agent run` process. Killed on drop.
pub struct AgentProcess {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    env: Vec<(String, String)>,
}

impl AgentProcess {
    /// Starts `skiff-agent run --config CONFIG`.
    pub fn start(config: &Path) -> Self {
        Self::start_with_env(config, &[])
    }

    /// [`Self::start`] with extra environment variables for the process (kept on restarts).
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Self {
        let mut a = Self {
            child: None,
            config: config.to_owned(),
            log: config.with_file_name("agent.log"),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        a.spawn();
        a
    }

    /// Starts it again after [`Self::kill`].
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        self.child = Some(
            Command::new(bin("skiff-agent"))
                .arg("run")
                .arg("--config")
                .arg(&self.config)
                .env("SKIFF_LOG", "info,skiff_agent=debug")
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start skiff-agent"),
        );
    }

    /// SIGKILL, and wait.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    condition()
}

/// Writes a bundle of `files` for `channel` at `generation`, signed by `key`, into `dir` as
/// `<sha256>.tar.gz` + `<sha256>.dsse.json`, bypassing every check the hub makes (attack
/// fixtures: what a hub key could be made to sign). Returns both paths.
pub fn signed_pair(
    dir: &Path,
    channel: &str,
    generation: u64,
    files: &std::collections::BTreeMap<String, Vec<u8>>,
    key: &skiff_proto::keys::SigningKey,
) -> (PathBuf, PathBuf) {
    use skiff_proto::bundle::{Limits, Source, write_bundle};
    use skiff_proto::dsse::Envelope;
    use skiff_proto::statement::{BundleRef, Statement};
    let built = write_bundle(
        channel,
        Source::default(),
        Some("demo".into()),
        files,
        &Limits::default(),
    )
    .expect("bundle within the format's caps");
    let statement = Statement::new(
        BundleRef {
            sha256: built.digest,
            size: built.bytes.len() as u64,
        },
        channel,
        generation,
        None,
    );
    std::fs::create_dir_all(dir).expect("dir");
    let bundle = dir.join(format!("{}.tar.gz", built.digest));
    let envelope = dir.join(format!("{}.dsse.json", built.digest));
    std::fs::write(&bundle, &built.bytes).expect("bundle");
    std::fs::write(&envelope, Envelope::sign_statement(&statement, &[key]).to_json()).expect("envelope");
    (bundle, envelope)
}

/// Runs `skiff-agent ARGS` and returns its result with its peak resident memory in KiB
/// (from the kernel's accounting of finished children, read by python3).
pub fn agent_with_peak_rss(args: &[&str]) -> (Run, u64) {
    let script = "import resource,subprocess,sys\nr=subprocess.run(sys.argv[1:],capture_output=True)\nsys.stdout.buffer.write(r.stdout)\nsys.stderr.buffer.write(r.stderr)\nsys.stderr.write('\\nPEAK_RSS_KIB=%d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\nsys.exit(r.returncode)\n";
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(bin("skiff-agent"))
        .args(args)
        .output()
        .expect("run python3 (needed to measure peak memory)");
    let run: Run = out.into();
    let peak = run
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("PEAK_RSS_KIB="))
        .and_then(|v| v.trim().parse().ok())
        .expect("peak RSS printed");
    (run, peak)
}

/// Peak resident memory of a running process so far, KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
