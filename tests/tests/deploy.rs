//! deploy/: every Kubernetes manifest passes `kubernetes-validate --strict`
//! offline, the kustomization lists them all, and every flag they pass to
//! `atelier` exists.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::path::PathBuf;
use std::process::Command;

use atelier_tests::{atelier, built_bin, workspace_root};

fn k8s_dir() -> PathBuf {
    workspace_root().join("deploy/k8s")
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(k8s_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    files
}

/// `kubernetes-validate --strict` from the project's venv (setup.sh installs it).
fn validate(files: &[PathBuf]) -> std::process::Output {
    let venv = std::env::var("ATELIER_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/atelier/venv-torch-2.11.0")
        });
    Command::new(venv.join("bin/kubernetes-validate"))
        .arg("--strict")
        .args(files)
        .output()
        .expect("kubernetes-validate (scripts/setup.sh installs it)")
}

#[test]
fn every_manifest_passes_strict_schema_validation() {
    let files = manifests();
    assert!(files.len() >= 5, "{files:?}");
    let output = validate(&files);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    // namespace, config map, secret, claim, deployment, service, statefulset, cronjob.
    assert_eq!(text.matches(" passed for resource ").count(), 8, "{text}");
}

#[test]
fn strict_validation_rejects_an_unknown_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let workers = std::fs::read_to_string(k8s_dir().join("workers.yaml")).unwrap();
    std::fs::write(&bad, workers.replace("  serviceName:", "  servicName:")).unwrap();
    assert!(!validate(&[bad]).status.success());
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let kustomization = std::fs::read_to_string(k8s_dir().join("kustomization.yaml")).unwrap();
    for file in manifests() {
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(
            kustomization.contains(&format!("- {name}")),
            "{name} is not in kustomization.yaml"
        );
    }
}

#[test]
fn every_flag_in_the_manifests_exists() {
    for file in manifests() {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut command = None;
        for line in text.lines() {
            let item = line.trim().trim_start_matches("- ");
            if item == "coordinator" || item == "worker" || item == "atelier-coordinator" {
                command = Some(item.to_string());
            }
            let flag = item
                .strip_prefix("--")
                .filter(|f| f.starts_with(|c: char| c.is_ascii_lowercase()));
            if let (Some(command), Some(flag)) = (&command, flag) {
                let flag = flag.split('=').next().unwrap();
                let help = if command == "atelier-coordinator" {
                    std::process::Command::new(built_bin(command))
                        .arg("--help")
                        .output()
                        .unwrap()
                } else {
                    atelier(&[command.as_str(), "--help"])
                };
                let help = String::from_utf8_lossy(&help.stdout);
                assert!(
                    help.contains(&format!("--{flag}")),
                    "{}: {command} has no --{flag}",
                    file.display()
                );
            }
        }
    }
}
