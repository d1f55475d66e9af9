//! A real S3 server for the tests: `s3-test-server` (s3s-fs) on loopback.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::built_bin;

const ACCESS_KEY: &str = "atelier-test";
const SECRET_KEY: &str = "atelier-test-secret";

/// The S3 server the tests run: s3s-fs on loopback with its data under
/// `root`, reached through object_store's standard AWS_* settings, which it
/// sets for the whole test process (and so for every atelier process the
/// test starts).
#[derive(Debug)]
pub struct S3Server {
    pub root: PathBuf,
    address: String,
    child: Option<Child>,
}

impl S3Server {
    /// Starts it with the buckets `catalogs`, `models` and `tags`.
    pub fn start(root: &Path) -> Self {
        let mut server = Self {
            root: root.to_path_buf(),
            address: "127.0.0.1:0".into(),
            child: None,
        };
        server.spawn();
        // Every atelier process of the test (CLI, coordinator, workers) inherits these.
        std::env::set_var("AWS_ENDPOINT", format!("http://{}", server.address));
        std::env::set_var("AWS_ALLOW_HTTP", "true");
        std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
        std::env::set_var("AWS_REGION", "us-east-1");
        for bucket in ["catalogs", "models", "tags"] {
            std::fs::create_dir_all(root.join(bucket)).expect("a bucket folder");
        }
        server
    }

    fn spawn(&mut self) {
        let mut child = Command::new(built_bin("s3-test-server"))
            .args([
                self.root.to_str().expect("a UTF-8 path"),
                &self.address,
                ACCESS_KEY,
                SECRET_KEY,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3-test-server (cargo build --bins)");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the server's first line");
        self.address = line
            .trim()
            .strip_prefix("s3 listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        self.child = Some(child);
    }

    /// Stops it: every request fails until [`S3Server::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, over the same data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}
