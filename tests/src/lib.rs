//! Shared helpers for the end-to-end tests.

pub mod cluster;
pub mod output;
pub mod partition;
pub mod photo_server;
pub mod s3;

use std::path::PathBuf;
use std::process::{Command, Output};

/// The workspace root, found at run time: a test binary in a shared target
/// directory may have been compiled from another checkout, so the compile-time
/// `env!("CARGO_MANIFEST_DIR")` can name a folder that is gone.
pub fn workspace_root() -> PathBuf {
    let package = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_default();
    package.parent().map(PathBuf::from).unwrap_or(package)
}

/// The real product photos shipped beside the checkout (`../shared/data/fashion-products`),
/// or wherever `ATELIER_FASHION_DATA` points.
pub fn fashion_data() -> PathBuf {
    std::env::var_os("ATELIER_FASHION_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/data/fashion-products"))
}

/// The `atelier` binary built beside the test executables (`cargo build` first),
/// or `ATELIER_BIN`.
pub fn atelier_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("ATELIER_BIN") {
        return PathBuf::from(path);
    }
    built_bin("atelier")
}

/// A binary of this workspace built beside the test executables.
pub fn built_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    profile_dir.join(name)
}

/// Runs `atelier` with `args`; returns its output, whatever the exit code.
pub fn atelier(args: &[&str]) -> Output {
    let bin = atelier_bin();
    Command::new(&bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} (build it with `cargo build --bins`): {e}",
                bin.display()
            )
        })
}

/// Runs `atelier` and fails the test, showing its output, unless it exits 0.
/// A real colour checkpoint, quick to make: two steps of ResNet-18 at 32 px.
pub fn train_quick_color_model(catalog: &str, checkpoint: &str) {
    atelier_ok(&[
        "train",
        "--model-type",
        "color",
        "--arch",
        "resnet18",
        "--image-size",
        "32",
        "--n-epochs",
        "1",
        "--max-steps",
        "2",
        "--catalog",
        catalog,
        "--checkpoint",
        checkpoint,
    ]);
}

pub fn atelier_ok(args: &[&str]) -> String {
    succeeded(args, &atelier(args))
}

/// Fails the test, showing the output, unless `atelier args` exited 0; returns stdout.
pub fn succeeded(args: &[&str], output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "atelier {args:?} failed with {}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A multi-thread runtime, as the image loader needs for its reads.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot build a runtime: {e}"))
}

/// The project venv's Python (with torch and torchvision), as set up by `scripts/setup.sh`.
pub fn venv_python() -> PathBuf {
    let venv = std::env::var_os("ATELIER_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".cache/atelier/venv-torch-2.11.0")
        });
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "no Python at {} (run the tests through scripts/test.sh, which creates the venv)",
        python.display()
    );
    python
}

/// Runs the project venv's python on `args` from the workspace root; fails
/// the test, showing its output, unless it exits 0. Returns stdout.
pub fn python(args: &[&str]) -> String {
    let venv = std::env::var("ATELIER_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/atelier/venv-torch-2.11.0")
        });
    let output = Command::new(venv.join("bin/python"))
        .args(args)
        .current_dir(workspace_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run python in {}: {e}", venv.display()));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "python {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A checkpoint's weights by name, and the step they were saved at.
pub fn checkpoint_weights(url: &str) -> (std::collections::HashMap<String, tch::Tensor>, i64) {
    let rt = runtime();
    let dir = atelier_models::CheckpointDir::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    let manifest = rt
        .block_on(dir.require_manifest())
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let tensors = rt
        .block_on(dir.read_tensors(&manifest.weights))
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .into_iter()
        .collect();
    (tensors, manifest.step)
}

/// Files under `dir`, at any depth, last modified at or after `since`.
pub fn written_since(dir: &std::path::Path, since: std::time::SystemTime) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else if entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|modified| modified >= since)
            {
                found.push(path);
            }
        }
    }
    found
}
