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
}

impl AgentProcess {
    /// Starts `skiff-agent run --config CONFIG`.
    pub fn start(config: &Path) -> Self {
        let mut a = Self {
            child: None,
            config: config.to_owned(),
            log: config.with_file_name("agent.log"),
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
