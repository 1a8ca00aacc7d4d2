//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The shared data folder: `TRAINSPOTTER_SHARED_DATA`, or `shared/data` beside the checkout.
pub fn shared_data() -> PathBuf {
    if let Ok(p) = std::env::var("TRAINSPOTTER_SHARED_DATA") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    assert!(
        p.is_dir(),
        "shared data not found at {}; set TRAINSPOTTER_SHARED_DATA",
        p.display()
    );
    p
}

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The Python with kafka-python: `TRAINSPOTTER_PYTHON`, or the project's `.venv` (scripts/deps.sh).
pub fn python() -> PathBuf {
    let p = std::env::var("TRAINSPOTTER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "no Python with kafka-python at {}: run scripts/deps.sh",
        p.display()
    );
    p
}

/// A tansu broker process on loopback, started by scripts/broker.sh and stopped on drop.
pub struct Broker {
    pub bootstrap: String,
    dir: tempfile::TempDir,
}

impl Broker {
    /// Starts a fresh broker with `topics` ("name:partitions"). Panics (fails the test) when the
    /// broker cannot be started: these tests never skip.
    pub fn start(topics: &[&str]) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let out = Command::new(repo().join("scripts/broker.sh"))
            .arg("start")
            .arg(port.to_string())
            .arg(dir.path())
            .args(topics)
            .output()
            .expect("run scripts/broker.sh");
        assert!(
            out.status.success(),
            "tansu broker did not start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Broker {
            bootstrap: format!("127.0.0.1:{port}"),
            dir,
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/broker.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// A child process killed on drop (so a failing test leaves nothing running).
pub struct Proc(pub Child);

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        Proc(cmd.stdin(Stdio::null()).spawn().expect("spawn process"))
    }

    /// `trainspotter run --config CONFIG`, logging to LOG.
    pub fn daemon(binary: &str, config: &Path, log: &Path) -> Proc {
        let log =
            std::fs::File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        Proc::spawn(
            Command::new(binary)
                .arg("run")
                .arg("--config")
                .arg(config)
                .stdout(Stdio::null())
                .stderr(log),
        )
    }

    /// Sends SIGTERM and waits up to `grace` for the exit status.
    pub fn terminate(&mut self, grace: Duration) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + grace;
        loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {grace:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a Python script from tests/e2e with the kafka-python interpreter; returns stdout.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(repo().join("tests/e2e").join(script))
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{script} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// GET a URL on loopback and return the body (panics on error statuses).
pub fn http_get(url: &str) -> String {
    ureq::get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .body_mut()
        .read_to_string()
        .unwrap()
}

/// The value of an unlabelled sample in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

pub fn write_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
