//! A real headless Chromium, driven over the W3C WebDriver protocol by
//! ChromeDriver: enough to open a page and run scripts in it. The protocol
//! is plain JSON over HTTP, so a few requests replace a client crate.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use testkit::http::request as http_request;
use testkit::{PATIENCE, free_port};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CERTUTIL: &str = "/usr/bin/certutil";

/// Makes an NSS database under `home` that trusts `ca` for servers.
async fn trust(home: &Path, ca: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        Path::new(CERTUTIL).exists(),
        "{CERTUTIL} is missing: install Debian's libnss3-tools (scripts/test.sh does)"
    );
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db)?;
    let db = format!("sql:{}", db.display());
    let create = ["-N", "--empty-password", "-d", &db];
    let ca = ca.to_str().context("a UTF-8 CA path")?;
    let add = ["-A", "-d", &db, "-n", "test CA", "-t", "C,,", "-i", ca];
    for args in [&create[..], &add[..]] {
        let out = Command::new(CERTUTIL).args(args).output().await?;
        anyhow::ensure!(
            out.status.success(),
            "certutil {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A browser session; the driver (and its browser) is killed on drop.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    driver_addr: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium session.
    pub async fn start() -> anyhow::Result<Browser> {
        Self::launch(None).await
    }

    /// Starts a session whose Chromium trusts the CA in the PEM file `ca`,
    /// as a user who installed it would: the CA goes into the NSS database
    /// Chromium reads on Linux (`$HOME/.pki/nssdb`), under a home of its
    /// own.
    pub async fn start_trusting(ca: &Path) -> anyhow::Result<Browser> {
        Self::launch(Some(ca)).await
    }

    async fn launch(trusted_ca: Option<&Path>) -> anyhow::Result<Browser> {
        for path in [CHROMIUM, CHROMEDRIVER] {
            anyhow::ensure!(
                std::path::Path::new(path).exists(),
                "{path} is missing: install Debian's chromium and chromium-driver (scripts/test.sh does)"
            );
        }
        let profile = tempfile::tempdir()?;
        let home = profile.path().join("home");
        if let Some(ca) = trusted_ca {
            trust(&home, ca).await?;
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            // Chromium, started by the driver, finds its NSS database here.
            .env("HOME", &home)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting chromedriver")?;
        let driver_addr = format!("127.0.0.1:{port}");
        testkit::wait_until_listening(&driver_addr, "chromedriver", PATIENCE).await?;
        // Root, no display, and a closed network: no sandbox, no GPU, and no
        // background traffic to hosts that cannot be reached.
        let user_data_dir = format!("--user-data-dir={}", profile.path().display());
        let args = vec![
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1300,900",
            &user_data_dir,
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            // The page's console, for `console_errors`.
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let mut browser = Browser {
            driver,
            driver_addr,
            session: String::new(),
            _profile: profile,
        };
        let created = browser.call("POST", "/session", Some(capabilities)).await?;
        browser.session = created["sessionId"]
            .as_str()
            .context("no session id")?
            .to_owned();
        Ok(browser)
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let body = body.map(|b| b.to_string());
        let (status, text) =
            http_request(&self.driver_addr, method, path, &[], body.as_deref()).await?;
        let reply: Value =
            serde_json::from_str(&text).with_context(|| format!("webdriver said {text}"))?;
        if status != 200 {
            bail!("webdriver {method} {path}: {status} {}", reply["value"]);
        }
        Ok(reply["value"].clone())
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.call(
            "POST",
            &format!("/session/{}/url", self.session),
            Some(json!({"url": url})),
        )
        .await
        .map(|_| ())
    }

    /// Runs `script` (a function body; `return` gives the result) in the page.
    pub async fn eval(&self, script: &str) -> anyhow::Result<Value> {
        self.call(
            "POST",
            &format!("/session/{}/execute/sync", self.session),
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Evaluates `script` until it returns `true`.
    pub async fn wait_for(&self, what: &str, script: &str) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if self.eval(script).await? == Value::Bool(true) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let shot = self.save_failure_screenshot(what).await;
                bail!("the page never showed {what} ({shot})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the monitor page says its stream is live.
    pub async fn wait_until_live(&self) -> anyhow::Result<()> {
        self.wait_for(
            "the live badge",
            "return document.getElementById('state').textContent === 'live'",
        )
        .await
    }

    /// A PNG of the window, base64-encoded as WebDriver returns it.
    pub async fn screenshot_base64(&self) -> anyhow::Result<String> {
        let value = self
            .call(
                "GET",
                &format!("/session/{}/screenshot", self.session),
                None,
            )
            .await?;
        Ok(value.as_str().context("no screenshot")?.to_owned())
    }

    /// Saves a screenshot of a failed wait under the build's folder and
    /// says where, so a CI failure can be seen.
    async fn save_failure_screenshot(&self, what: &str) -> String {
        let name: String = what
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser-failures");
        let path = dir.join(format!("{name}.png"));
        let saved = match self.screenshot_png().await {
            Ok(png) => std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, png)),
            Err(err) => Err(std::io::Error::other(err.to_string())),
        };
        match saved {
            Ok(()) => format!("screenshot: {}", path.display()),
            Err(err) => format!("no screenshot: {err}"),
        }
    }

    /// What the page wrote to its console at the error level (and uncaught
    /// errors, failed loads) since the last call.
    ///
    /// # Errors
    /// WebDriver fails.
    pub async fn console_errors(&self) -> anyhow::Result<Vec<String>> {
        let entries = self
            .call(
                "POST",
                &format!("/session/{}/se/log", self.session),
                Some(json!({"type": "browser"})),
            )
            .await?;
        Ok(entries
            .as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect())
    }

    /// A PNG of the window.
    ///
    /// # Errors
    /// WebDriver fails, or its answer is not base64.
    pub async fn screenshot_png(&self) -> anyhow::Result<Vec<u8>> {
        use base64::Engine as _;
        let text = self.screenshot_base64().await?;
        Ok(base64::engine::general_purpose::STANDARD.decode(text)?)
    }

    /// Ends the session (the driver is killed on drop either way).
    pub async fn quit(mut self) {
        let _ = self
            .call("DELETE", &format!("/session/{}", self.session), None)
            .await;
        let _ = self.driver.kill().await;
    }
}
