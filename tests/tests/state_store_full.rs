//! A coordinator whose state file can no longer be written (the disk is
//! full) must stop serving and exit with an error, not keep answering with
//! a dead event loop while its workers retry for ever.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use atelier_tests::{atelier, atelier_ok, built_bin};

/// Files the coordinator writes may grow to this size; past it a write
/// fails with EFBIG, as on a full disk.
const FILE_LIMIT: libc::rlim_t = 1 << 20;

#[test]
fn a_coordinator_that_cannot_save_its_state_stops_serving_and_exits_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let catalog = path("catalog");
    atelier_ok(&[
        "catalog",
        "generate",
        "--items",
        "2000",
        "--out",
        &catalog,
        "--size",
        "32x32",
        "--rows-per-group",
        "10",
    ]);
    // Submitting checks only that a checkpoint has a manifest.
    let checkpoint = path("checkpoint");
    std::fs::create_dir_all(&checkpoint).unwrap();
    std::fs::write(dir.path().join("checkpoint/manifest.json"), "{}").unwrap();

    let mut command = Command::new(built_bin("atelier-coordinator"));
    command
        .args(["--listen", "127.0.0.1:0", "--state", &path("state.db")])
        .env("RUST_LOG", "warn")
        .env_remove("ATELIER_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: FILE_LIMIT,
                rlim_max: FILE_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // A write past the limit then fails instead of killing the process.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut coordinator = command.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(coordinator.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .trim()
        .strip_prefix("coordinator listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    let url = format!("http://{address}");

    // Each job of 200 shards writes its task records; a few fill the file.
    let mut refused = None;
    for n in 0..40 {
        let out = path(&format!("out-{n}"));
        let submitted = atelier(&[
            "submit",
            "tag",
            "--coordinator",
            &url,
            "--catalog",
            &catalog,
            "--checkpoint",
            &checkpoint,
            "--out",
            &out,
            "--shard-rows",
            "10",
        ]);
        if !submitted.status.success() {
            refused = Some(String::from_utf8_lossy(&submitted.stderr).to_string());
            break;
        }
    }
    let refused = refused.expect("the state file never filled up");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = coordinator.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = coordinator.kill();
            panic!("the coordinator still serves after its store failed: {refused}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    coordinator
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("state store"), "{stderr}");
    // And nothing is answering on its port any more.
    let after = atelier(&["jobs", "--coordinator", &url]);
    assert!(!after.status.success());
}
