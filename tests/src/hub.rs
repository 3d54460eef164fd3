//! A real `skiff-hub serve` process for tests, with its keys, admin token and config.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bin;

/// A running hub process. Killed on drop.
pub struct HubProcess {
    child: Option<Child>,
    /// Its folder: `keys/`, `admin.token`, `hub.yaml`, `data/`, `hub.log`.
    pub dir: PathBuf,
    /// Its port.
    pub port: u16,
    /// The admin token.
    pub admin_token: String,
    extra_args: Vec<String>,
    extra_env: Vec<(String, String)>,
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl HubProcess {
    /// Prepares `dir` (keys, admin token) and starts a hub with `repos_and_channels` (YAML
    /// for the `repos:` and `channels:` keys) appended to a generated config.
    pub fn start(dir: &Path, repos_and_channels: &str) -> Self {
        Self::start_with_env(dir, repos_and_channels, &[])
    }

    /// [`Self::start`] with extra environment variables for the process.
    pub fn start_with_env(dir: &Path, repos_and_channels: &str, env: &[(&str, &str)]) -> Self {
        std::fs::create_dir_all(dir).expect("hub dir");
        if !dir.join("keys/signing.pem").exists() {
            let out = Command::new(bin("skiff-hub"))
                .args(["keygen", "--out"])
                .arg(dir.join("keys"))
                .output()
                .expect("keygen");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        let admin_token = "admin-token-for-tests-0123456789".to_owned();
        std::fs::write(dir.join("admin.token"), &admin_token).expect("token");
        let port = free_port();
        let config = format!(
            "listen: 127.0.0.1:{port}\ndata_dir: {data}\nsigning_key: {key}\nadmin_token_file: {token}\n{repos_and_channels}\n",
            data = dir.join("data").display(),
            key = dir.join("keys/signing.pem").display(),
            token = dir.join("admin.token").display(),
        );
        std::fs::write(dir.join("hub.yaml"), config).expect("config");
        let mut hub = Self {
            child: None,
            dir: dir.to_owned(),
            port,
            admin_token,
            extra_args: Vec::new(),
            extra_env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        hub.spawn();
        hub
    }

    /// Starts the process again (after [`Self::kill`]), same config and port.
    pub fn spawn(&mut self) {
        let logged_before = self.log().len();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("hub.log"))
            .expect("log");
        let child = Command::new(bin("skiff-hub"))
            .arg("serve")
            .arg("--config")
            .arg(self.dir.join("hub.yaml"))
            .args(&self.extra_args)
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .env("SKIFF_LOG", "info,skiff_hub=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start skiff-hub");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            // Ready when this process says it listens (not merely when something answers on
            // the port: after a restart, another test's socket may have taken it).
            let ours = self
                .log()
                .get(logged_before..)
                .is_some_and(|l| l.contains("Hub listening"));
            if ours && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("skiff-hub exited with {status}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("skiff-hub did not listen within 20s:\n{}", self.log());
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The hub's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("hub.log")).unwrap_or_default()
    }

    /// The public key file agents trust.
    pub fn public_key(&self) -> PathBuf {
        self.dir.join("keys/signing.pub.pem")
    }

    /// SIGKILL, and wait.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns the exit status once it exits (or None after `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Runs `skiff-hub ARGS` against this hub (admin token and URL in the environment).
    pub fn admin(&self, args: &[&str]) -> crate::Run {
        Command::new(bin("skiff-hub"))
            .args(args)
            .env("SKIFF_HUB_URL", self.url())
            .env("SKIFF_HUB_ADMIN_TOKEN", &self.admin_token)
            .env_remove("SKIFF_HUB_ADMIN_TOKEN_FILE")
            .output()
            .expect("run skiff-hub")
            .into()
    }

    /// Registers a cluster and returns its token.
    pub fn add_cluster(&self, name: &str, labels: &[&str]) -> String {
        let mut args = vec!["cluster", "add", name];
        for l in labels {
            args.extend(["--label", l]);
        }
        let run = self.admin(&args).success();
        run.stdout.trim().to_owned()
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
