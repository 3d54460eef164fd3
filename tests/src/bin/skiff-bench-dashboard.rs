//! `skiff-bench-dashboard`: how fast the dashboard's fleet page is with a large fleet, as
//! the hub serves it (time to the last byte, measured here) and as headless Chromium shows
//! it (navigation start to DOM interactive and to load end, from the page's own timing).
//!
//! ```text
//! skiff-bench-dashboard --hub URL --token ADMIN_TOKEN [--runs 20]
//! ```
//! Needs `chromedriver` and `chromium` on the PATH (Debian: chromium, chromium-driver).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use fantoccini::{ClientBuilder, Locator};

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Time to the last byte of one page, by `curl`, with the session cookie.
fn server_ms(url: &str, cookie: &str) -> anyhow::Result<f64> {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{time_total}", "-b", cookie, url])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse::<f64>()? * 1000.0)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut hub, mut token, mut runs) = (String::new(), String::new(), 20usize);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--hub" => hub = args.next().context("--hub URL")?,
            "--token" => token = args.next().context("--token TOKEN")?,
            "--runs" => runs = args.next().context("--runs N")?.parse()?,
            _ => bail!("usage: skiff-bench-dashboard --hub URL --token ADMIN_TOKEN [--runs N]"),
        }
    }
    // Sign in once for the server figures.
    let login = Command::new("curl")
        .args([
            "-sS",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--data-urlencode",
            &format!("token={token}"),
        ])
        .arg(format!("{hub}/ui/login"))
        .output()?;
    let head = String::from_utf8_lossy(&login.stdout).into_owned();
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .context("sign-in gave no session cookie")?
        .to_owned();
    for page in ["/ui", "/ui?page=50", "/ui?state=synced", "/ui/channels/demo"] {
        let mut ms: Vec<f64> = (0..runs)
            .map(|_| server_ms(&format!("{hub}{page}"), &cookie))
            .collect::<Result<_, _>>()?;
        println!(
            "server {page}: median {:.1} ms, p95 {:.1} ms (to the last byte, {runs} runs)",
            percentile(&mut ms, 0.5),
            percentile(&mut ms, 0.95)
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting chromedriver")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("chromedriver did not listen");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let profile = tempfile::tempdir()?;
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let mut caps = serde_json::Map::new();
            caps.insert(
                "goog:chromeOptions".into(),
                serde_json::json!({"binary": "/usr/bin/chromium", "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--no-first-run", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display())]}),
            );
            let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps)
                .connect(&format!("http://127.0.0.1:{port}"))
                .await?;
            c.goto(&format!("{hub}/ui/login")).await?;
            c.find(Locator::Id("token")).await?.send_keys(&token).await?;
            c.find(Locator::Css("button[type=submit]")).await?.click().await?;
            let (mut interactive, mut loaded) = (Vec::new(), Vec::new());
            for _ in 0..runs.min(10) {
                c.goto(&format!("{hub}/ui")).await?;
                let t = c
                    .execute(
                        "const n = performance.getEntriesByType('navigation')[0]; return [n.domInteractive, n.loadEventEnd];",
                        vec![],
                    )
                    .await?;
                let t: Vec<f64> = serde_json::from_value(t)?;
                interactive.push(t[0]);
                loaded.push(t[1]);
            }
            c.close().await?;
            println!(
                "chromium /ui: DOM interactive median {:.0} ms, load end median {:.0} ms ({} runs)",
                percentile(&mut interactive, 0.5),
                percentile(&mut loaded, 0.5),
                interactive.len()
            );
            Ok::<_, anyhow::Error>(())
        });
    let _ = driver.kill();
    let _ = driver.wait();
    result
}
