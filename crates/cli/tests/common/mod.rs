//! What the CLI tests that run real `crat` processes share: a `crat dispatcher` with a funded
//! SDK key, and the client verbs run against it. Used next to `chaos/processes.rs`, which
//! each test includes as `mod processes`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use crate::processes::{DispatcherProc, free_port, operator};

/// Runs `crat args` to completion.
pub(crate) fn crat(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_crat"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running crat {args:?}: {e}"))
}

/// The test PostgreSQL server's URL (`CRAT_TEST_POSTGRES_URL`, which `scripts/test.sh` sets);
/// without it the calling test fails, saying so.
pub(crate) fn postgres_url() -> String {
    match std::env::var("CRAT_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "CRAT_TEST_POSTGRES_URL is not set: this test needs a PostgreSQL server. Run the \
             tests through scripts/test.sh (it starts one), or start one with \
             `scripts/postgres.sh start` and set CRAT_TEST_POSTGRES_URL to the URL it prints"
        ),
    }
}

/// The test S3-compatible service's endpoint (`CRAT_TEST_S3_ENDPOINT`, which `scripts/test.sh`
/// sets: `scripts/s3.sh`, moto's server, with the bucket `crat-test`); without it the calling
/// test fails, saying so.
pub(crate) fn s3_endpoint() -> String {
    match std::env::var("CRAT_TEST_S3_ENDPOINT") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "CRAT_TEST_S3_ENDPOINT is not set: this test needs an S3-compatible service. Run \
             the tests through scripts/test.sh (it starts one), or start one with \
             `scripts/s3.sh start` and set CRAT_TEST_S3_ENDPOINT to the endpoint it prints"
        ),
    }
}

/// The CA of the test PostgreSQL server's TLS certificate (`CRAT_TEST_POSTGRES_CA`, which
/// `scripts/test.sh` sets); without it the calling test fails, saying so.
pub(crate) fn postgres_ca() -> PathBuf {
    match std::env::var("CRAT_TEST_POSTGRES_CA") {
        Ok(path) if !path.is_empty() => path.into(),
        _ => panic!(
            "CRAT_TEST_POSTGRES_CA is not set: this test needs the test PostgreSQL server's CA. \
             Run the tests through scripts/test.sh, or set it to what `scripts/postgres.sh ca` \
             prints"
        ),
    }
}

/// A dispatcher process and an SDK key with credits.
pub(crate) struct Network {
    pub(crate) dispatcher: DispatcherProc,
    /// The SDK key (`crat keys create`).
    pub(crate) key: String,
    /// The dispatcher's id.
    pub(crate) id: String,
    /// Its address.
    pub(crate) addr: String,
    /// Its data directory.
    pub(crate) data: PathBuf,
    /// Where the processes' output goes.
    pub(crate) logs: PathBuf,
}

impl Network {
    /// Starts a dispatcher under `dir` (data in `dir/dispatcher`, output in `dir/logs`) with
    /// `settings` as its `[dispatcher]` table, and grants 100,000 credits to a new key.
    pub(crate) async fn start(dir: &Path, settings: &str) -> anyhow::Result<Self> {
        Self::start_on_ledger(dir, settings, &[]).await
    }

    /// [`Network::start`] with `ledger` (e.g. `["--ledger", URL]`) added to the dispatcher's
    /// flags and to the operator verbs that fund the key, so that both use that ledger.
    pub(crate) async fn start_on_ledger(
        dir: &Path,
        settings: &str,
        ledger: &[&str],
    ) -> anyhow::Result<Self> {
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let config = dir.join("dispatcher.toml");
        std::fs::write(&config, format!("[dispatcher]\n{settings}"))?;
        let data = dir.join("dispatcher");
        let d = data.to_str().context("path")?;
        operator(
            &[
                &[
                    "credits",
                    "grant",
                    "--data-dir",
                    d,
                    "--account",
                    "test",
                    "100000",
                ][..],
                ledger,
            ]
            .concat(),
        )?;
        let key = operator(
            &[
                &["keys", "create", "--data-dir", d, "--account", "test"][..],
                ledger,
            ]
            .concat(),
        )?;
        let mut dispatcher = DispatcherProc {
            port: free_port(&[])?,
            data: data.clone(),
            config,
            logs: logs.clone(),
            proc: None,
            lives: 0,
            id: None,
            args: ledger.iter().map(|a| (*a).to_owned()).collect(),
        };
        dispatcher.start().await?;
        Ok(Self {
            key: key.trim().to_owned(),
            id: dispatcher.id.clone().context("dispatcher id")?,
            addr: dispatcher.addr(),
            dispatcher,
            data,
            logs,
        })
    }

    /// A port no process of this network listens on (UDP).
    pub(crate) fn free_port(&self) -> anyhow::Result<u16> {
        free_port(&[self.dispatcher.port])
    }

    /// The client flags: `--dispatcher ADDR --dispatcher-id ID --key KEY`.
    pub(crate) fn client(&self) -> [&str; 6] {
        [
            "--dispatcher",
            &self.addr,
            "--dispatcher-id",
            &self.id,
            "--key",
            &self.key,
        ]
    }

    /// `crat VERB <client flags> args…`, which must succeed: its stdout, trimmed, and stderr.
    pub(crate) fn client_verb(
        &self,
        verb: &str,
        args: &[&str],
    ) -> anyhow::Result<(String, String)> {
        let out = crat(&[&[verb][..], &self.client(), args].concat());
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        ensure!(out.status.success(), "crat {verb} {args:?}: {stderr}");
        Ok((String::from_utf8(out.stdout)?.trim().to_owned(), stderr))
    }

    /// Uploads `model` (written to `dir/model.onnx`) and deploys it per request with an
    /// allowance of 50,000 credits, retrying the deploy while the network has no capacity
    /// yet (a node still registering): the model id, the deployment id, and what the
    /// deploy printed to stderr (its progress).
    pub(crate) fn deploy(
        &self,
        dir: &Path,
        model: &[u8],
    ) -> anyhow::Result<(String, String, String)> {
        let path = dir.join("model.onnx");
        std::fs::write(&path, model)?;
        let (model, _) = self.client_verb("upload", &[path.to_str().context("path")?])?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.client_verb("deploy", &["--model", &model, "--allowance", "50000"]) {
                Ok((deployment, stderr)) => return Ok((model, deployment, stderr)),
                Err(e) if e.to_string().contains("no capacity") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One task of the tiny CNN (zeros) on `deployment` with `crat infer`; its stdout.
    pub(crate) fn infer_zeros(&self, deployment: &str) -> anyhow::Result<String> {
        let args = [
            "--deployment",
            deployment,
            "--input",
            "input:f32:1x1x28x28=zeros",
        ];
        Ok(self.client_verb("infer", &args)?.0)
    }
}
