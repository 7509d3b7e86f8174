//! The operator's dashboard in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver` packages, driven over the W3C WebDriver protocol): a `crat dispatcher`
//! with 3-second rounds and a `crat node --stopped`; the page loads showing the node stopped;
//! START puts it online (the dispatcher says so too); a task run through the CLI shows in the
//! live figures and the models table; a closed round shows in the earnings chart; STOP takes
//! the node off the network (the dispatcher counts it offline at once).
//!
//! Needs `chromedriver` and `chromium` (`CRAT_CHROMEDRIVER` / `CRAT_CHROMIUM` name other
//! paths). Without them the test fails and says what to install: it never passes without
//! a browser.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

#[allow(dead_code)]
mod common;
#[path = "chaos/processes.rs"]
#[allow(dead_code)]
mod processes;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use common::{Network, crat};
use crat_dispatcher::ledger::{Ledger, SqliteLedger};
use processes::Proc;
use serde_json::{Value, json};

const START_TIMEOUT: Duration = Duration::from_secs(60);
const TINY: &[u8] = include_bytes!("../../backend/models/tiny_cnn.onnx");
/// How long the page has to show a change (it polls every second, the standing every 10 s).
const PAGE_TIMEOUT: Duration = Duration::from_secs(45);
/// The key WebDriver names element references with.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A program from the environment variable `var`, else found on `PATH` under one of `names`.
fn program(var: &str, names: &[&str]) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "{} not found on PATH (nor {var} set): the dashboard test needs a real browser; on \
         Debian: apt-get install chromium chromium-driver (.ci/run installs them)",
        names.join(" or ")
    )
}

/// A chromedriver process and one headless Chromium session in it.
struct Browser {
    driver: Child,
    http: reqwest::Client,
    base: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> anyhow::Result<Self> {
        let driver_path = program("CRAT_CHROMEDRIVER", &["chromedriver"])?;
        let chromium = program("CRAT_CHROMIUM", &["chromium", "chromium-browser"])?;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", driver_path.display()))?;
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http.get(format!("{base}/status")).send().await;
            if let Ok(r) = ready {
                let v: Value = r.json().await?;
                if v["value"]["ready"] == true {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("chromedriver did not come up on {base}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir()?;
        let mut browser = Self {
            driver,
            http,
            base,
            _profile: profile,
        };
        let profile_dir = browser._profile.path().to_str().context("path")?.to_owned();
        let session = browser
            .call(
                "POST",
                "/session",
                json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
                    "binary": chromium,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--no-first-run",
                             format!("--user-data-dir={profile_dir}")],
                }}}}),
            )
            .await
            .context("starting a Chromium session")?;
        let id = session["sessionId"]
            .as_str()
            .context("no session id")?
            .to_owned();
        browser.base = format!("{}/session/{id}", browser.base);
        Ok(browser)
    }

    /// One WebDriver command; its `value`, or the error it answered.
    async fn call(&self, method: &str, path: &str, body: Value) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.post(&url).json(&body),
        };
        let response = request.send().await?;
        let status = response.status();
        let v: Value = response.json().await?;
        if !status.is_success() {
            bail!("WebDriver {method} {path}: {status}: {}", v["value"]);
        }
        Ok(v["value"].clone())
    }

    async fn open(&self, url: &str) -> anyhow::Result<()> {
        self.call("POST", "/url", json!({ "url": url })).await?;
        Ok(())
    }

    async fn element(&self, css: &str) -> anyhow::Result<String> {
        let v = self
            .call(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await?;
        Ok(v[ELEMENT]
            .as_str()
            .context("no element reference")?
            .to_owned())
    }

    /// Clicks the element as a user would (WebDriver refuses a disabled or hidden one).
    async fn click(&self, css: &str) -> anyhow::Result<()> {
        let e = self.element(css).await?;
        self.call("POST", &format!("/element/{e}/click"), json!({}))
            .await?;
        Ok(())
    }

    /// Runs `script` in the page and returns what it returns.
    async fn eval(&self, script: &str) -> anyhow::Result<Value> {
        self.call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// What the page shows: the texts of the elements the test reads, and more.
    async fn page(&self) -> anyhow::Result<Value> {
        self.eval(
            "const t = (id) => document.getElementById(id).textContent;
             return {
               mode: t('mode'),
               start_disabled: document.getElementById('start').disabled,
               stop_disabled: document.getElementById('stop').disabled,
               message: t('message'),
               backend: t('backend'),
               cpu: t('cpu'),
               tasks_total: t('tasks-total'),
               models: t('models'),
               proven_rating: t('proven-rating'),
               reach: t('reach'),
               observed: t('observed'),
               idle: t('idle-state'),
               rounds_drawn: document.querySelectorAll('#earnings-chart g.round').length,
               rounds_listed: document.querySelectorAll('#rounds tr').length,
               rounds_text: t('rounds'),
             };",
        )
        .await
    }

    /// Waits until `ok` holds of [`Browser::page`].
    async fn wait_page(&self, what: &str, ok: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        let deadline = Instant::now() + PAGE_TIMEOUT;
        loop {
            let page = self.page().await?;
            if ok(&page) {
                return Ok(page);
            }
            if Instant::now() > deadline {
                bail!("the page did not show {what} within {PAGE_TIMEOUT:?}: {page:#}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `crat node status --json` of the node in `node_dir`: the dispatcher's view.
fn dispatcher_view(addr: &str, id: &str, node_dir: &str) -> Value {
    let out = crat(&[
        "node",
        "status",
        "--json",
        "--dispatcher",
        addr,
        "--dispatcher-id",
        id,
        "--data-dir",
        node_dir,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_and_stop_from_the_dashboard_in_a_real_browser() {
    // The browser first: without one the test fails here, with what to install.
    let browser = Browser::start().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let net = Network::start(
        dir.path(),
        &format!(
            "replicas = 1\nheartbeat_interval_s = 1\nproof_scale = \"test\"\nround_s = 3\n\
             round_epoch_s = {epoch}\nround_close_delay_s = 1\n"
        ),
    )
    .await
    .unwrap();
    let (addr, id) = (net.addr.clone(), net.id.clone());

    // The node starts stopped, its dashboard on a port of its choosing.
    let node_dir = dir.path().join("node");
    let node_port = net.free_port().unwrap();
    let args = [
        "node",
        "--dispatcher",
        &addr,
        "--dispatcher-id",
        &id,
        "--listen",
        &format!("127.0.0.1:{node_port}"),
        "--data-dir",
        node_dir.to_str().unwrap(),
        "--dashboard-addr",
        "127.0.0.1:0",
        "--stopped",
    ]
    .map(String::from);
    let mut node = Proc::spawn("node".into(), &args, &net.logs, "warn").unwrap();
    let line = node.wait_for("dashboard on http://").await.unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();
    node.wait_for("press START").await.unwrap();

    // Loaded: stopped, START offered, the hardware and backend shown.
    browser.open(&url).await.unwrap();
    let page = browser
        .wait_page("the node stopped", |p| p["mode"] == "stopped")
        .await
        .unwrap();
    assert_eq!(page["start_disabled"], false, "{page:#}");
    assert_eq!(page["stop_disabled"], true, "{page:#}");
    let backend = page["backend"].as_str().unwrap();
    assert!(
        backend.starts_with("ort / ") || backend.starts_with("tract / "),
        "{page:#}"
    );
    assert!(page["cpu"].as_str().unwrap().contains("cores"), "{page:#}");
    assert_eq!(page["tasks_total"], "0");
    assert!(
        page["idle"].as_str().unwrap().starts_with("not configured"),
        "{page:#}"
    );

    // START: the node joins; the page and the dispatcher both say online.
    browser.click("#start").await.unwrap();
    let page = browser
        .wait_page("the node online", |p| p["mode"] == "online")
        .await
        .unwrap();
    assert_eq!(page["stop_disabled"], false, "{page:#}");
    let node_dir_s = node_dir.to_str().unwrap();
    let deadline = Instant::now() + START_TIMEOUT;
    while dispatcher_view(&addr, &id, node_dir_s)["online"] != true {
        assert!(
            Instant::now() < deadline,
            "the dispatcher never saw it online"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A task through the CLI shows in the live figures and the models table.
    let (model, deployment, _) = net.deploy(dir.path(), TINY).unwrap();
    net.infer_zeros(&deployment).unwrap();
    let page = browser
        .wait_page("the task served", |p| {
            p["tasks_total"] == "1"
                && p["models"]
                    .as_str()
                    .is_some_and(|m| m.contains(&deployment) && m.contains("serving"))
        })
        .await
        .unwrap();
    assert!(
        page["models"].as_str().unwrap().contains(&model),
        "{page:#}"
    );

    // A closed round the node took part in shows in the chart and the table.
    let ledger = SqliteLedger::open(&net.data.join("ledger.sqlite")).unwrap();
    let deadline = Instant::now() + START_TIMEOUT;
    let closed = loop {
        let view = dispatcher_view(&addr, &id, node_dir_s);
        if let Some(round) = view["closed"].as_array().and_then(|c| c.first()) {
            break round["index"].as_u64().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no round closed with the node in it"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(ledger.round(closed).unwrap().is_some());
    let page = browser
        .wait_page("a closed round in the chart", |p| {
            p["rounds_drawn"].as_u64() >= Some(1)
                && p["rounds_text"]
                    .as_str()
                    .is_some_and(|t| !t.contains("no closed round"))
        })
        .await
        .unwrap();
    assert!(
        !page["proven_rating"].as_str().unwrap().starts_with('–'),
        "{page:#}"
    );
    // Reachability: the dispatcher dialled the node from another port at the address its
    // packets come from (loopback here, so it got through).
    assert!(
        page["reach"].as_str().unwrap().starts_with("yes"),
        "{page:#}"
    );
    let observed = page["observed"].as_str().unwrap();
    assert!(
        observed.starts_with("127.0.0.1:") && observed.contains("reached it directly"),
        "{page:#}"
    );
    // CRAT_DASHBOARD_SCREENSHOT=file.png keeps a picture of the page at this point.
    if let Some(path) = std::env::var_os("CRAT_DASHBOARD_SCREENSHOT") {
        browser
            .call(
                "POST",
                "/window/rect",
                json!({"width": 1280, "height": 1400}),
            )
            .await
            .unwrap();
        let png = browser.call("GET", "/screenshot", json!({})).await.unwrap();
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }

    // STOP: the page says stopped with the report, and the dispatcher has it offline.
    browser.click("#stop").await.unwrap();
    let page = browser
        .wait_page("the node stopped again", |p| {
            p["mode"] == "stopped"
                && p["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("Stopped in"))
        })
        .await
        .unwrap();
    assert_eq!(page["start_disabled"], false, "{page:#}");
    assert!(
        page["message"]
            .as_str()
            .unwrap()
            .contains("0 tasks unfinished"),
        "{page:#}"
    );
    let view = dispatcher_view(&addr, &id, node_dir_s);
    assert_eq!(view["online"], false, "{view:#}");

    let _ = browser.call("DELETE", "", json!({})).await;
    drop(node);
}
