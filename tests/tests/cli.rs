//! The `atelier` binary end to end: generate, inspect, pipeline, and clear
//! errors for catalogues that are wrong.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::sync::Arc;

use arrow_array::{Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use atelier_tests::{atelier, atelier_ok};

#[test]
fn generate_inspect_and_pipeline_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cat");
    let out = out.to_str().unwrap();
    let stdout = atelier_ok(&[
        "catalog", "generate", "--items", "120", "--out", out, "--size", "128x160", "--seed", "5",
    ]);
    assert!(stdout.contains("generated 120 items (128x160)"), "{stdout}");
    assert!(stdout.contains("items/s"), "{stdout}");

    let report = atelier_ok(&["catalog", "inspect", out]);
    assert!(report.contains("120 rows in 1 files"), "{report}");
    assert!(report.contains("schema: ok"), "{report}");
    assert!(report.contains("item_id: unique"), "{report}");
    assert!(report.contains("jpeg 128x160"), "{report}");

    let json = atelier_ok(&["catalog", "inspect", out, "--json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["rows"], 120);

    let run = atelier_ok(&[
        "pipeline",
        "--catalog",
        out,
        "--image-size",
        "64",
        "--threads",
        "2",
    ]);
    assert!(
        run.contains("pipeline: 120 items (120 ok, 0 errors)"),
        "{run}"
    );
    assert!(run.contains("images/s"), "{run}");

    // What is left for the CPU when a GPU decodes: every JPEG handed over.
    let encoded = atelier_ok(&["pipeline", "--catalog", out, "--encoded"]);
    assert!(
        encoded.contains("120 JPEGs handed over undecoded"),
        "{encoded}"
    );
}

fn write_parquet(path: &std::path::Path, batch: &RecordBatch) {
    let file = std::fs::File::create(path).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(batch).unwrap();
    writer.close().unwrap();
}

fn inspect_error(path: &std::path::Path) -> String {
    let output = atelier(&["catalog", "inspect", path.to_str().unwrap()]);
    assert!(
        !output.status.success(),
        "inspect of a bad catalogue must fail"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_missing_column_is_named_with_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("sku", DataType::Utf8, false)]));
    let batch = RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(vec!["a"]))]).unwrap();
    write_parquet(&dir.path().join("part-0.parquet"), &batch);
    let err = inspect_error(dir.path());
    assert!(
        err.contains("part-0.parquet") && err.contains("missing the item id column \"item_id\""),
        "{err}"
    );
    assert!(err.contains("found: sku"), "{err}");
}

#[test]
fn a_wrongly_typed_column_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("item_id", DataType::Utf8, false),
        Field::new("image", DataType::Int64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec!["a"])),
            Arc::new(Int64Array::from(vec![1])),
        ],
    )
    .unwrap();
    write_parquet(&dir.path().join("x.parquet"), &batch);
    let err = inspect_error(dir.path());
    assert!(
        err.contains("x.parquet") && err.contains("\"image\" has type Int64, expected binary"),
        "{err}"
    );
}

#[test]
fn a_file_that_is_not_parquet_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("part-0.parquet"),
        b"this is a csv, really\n1,2,3\n",
    )
    .unwrap();
    let err = inspect_error(dir.path());
    assert!(
        err.contains("part-0.parquet is not a Parquet file"),
        "{err}"
    );
}

#[test]
fn empty_and_missing_catalogues_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let err = inspect_error(&dir.path().join("nowhere"));
    assert!(
        err.contains("not found") && err.contains("nowhere"),
        "{err}"
    );
    std::fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    let err = inspect_error(dir.path());
    assert!(
        err.contains("holds no Parquet files") && err.contains("notes.txt"),
        "{err}"
    );
}

#[test]
fn unsupported_urls_are_refused_by_scheme() {
    let output = atelier(&["catalog", "inspect", "ftp://host/catalog"]);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("unsupported scheme \"ftp\""), "{err}");
}

/// The standalone coordinator on port 0 over the state file `state`.
fn coordinator_on(state: &std::path::Path) -> std::process::Command {
    let mut command = std::process::Command::new(atelier_tests::built_bin("atelier-coordinator"));
    command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--state",
            state.to_str().unwrap(),
        ])
        .env("RUST_LOG", "warn");
    command
}

/// A coordinator that exited naming its state file and `why`, before it
/// said it was listening.
fn assert_refused_over_state(output: &std::process::Output, state: &std::path::Path, why: &str) {
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains(&format!("state store {}", state.display())) && err.contains(why),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&output.stdout).contains("listening"));
}

#[test]
fn the_standalone_coordinator_names_an_address_in_use_a_missing_certificate_and_a_bad_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let state = dir.path().join("coordinator.db");
    let run = |extra: &[&str]| {
        std::process::Command::new(atelier_tests::built_bin("atelier-coordinator"))
            .args(["--state", state.to_str().unwrap()])
            .args(extra)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let output = run(&["--listen", &address]);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains(&format!("binding {address}")) && err.contains("in use"),
        "{err}"
    );
    let missing = dir.path().join("absent.pem");
    let missing = missing.to_str().unwrap();
    let output = run(&[
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        missing,
        "--tls-key",
        missing,
    ]);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains(&format!("reading {missing}")) && !err.contains("panicked"),
        "{err}"
    );

    // A bad state file is refused before the coordinator says it listens,
    // so nothing waiting for that line takes it for a running server.
    let bad_state = |state: &std::path::Path| coordinator_on(state).output().unwrap();
    let not_sqlite = dir.path().join("notes.db");
    std::fs::write(&not_sqlite, b"these are not the jobs you are looking for").unwrap();
    assert_refused_over_state(&bad_state(&not_sqlite), &not_sqlite, "not a database");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let output = bad_state(&file.join("coordinator.db"));
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains(&format!("creating the state directory {}", file.display())),
        "{err}"
    );
    assert_eq!(
        err.matches("File exists").count(),
        1,
        "the cause once, not once per link of the chain: {err}"
    );
}

#[test]
fn a_second_coordinator_on_a_state_file_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = atelier_tests::cluster::Cluster::start(dir.path(), None, &[]);
    let state = dir.path().join("coordinator.db");
    let mut child = coordinator_on(&state)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A coordinator that wrongly shares the file would serve forever.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let second = child.wait_with_output().unwrap();
    assert_refused_over_state(&second, &state, "held by another process");
    // The first one is unharmed, and its lock dies with it.
    cluster.cli_ok(&["jobs"]);
    cluster.kill_coordinator();
    cluster.restart_coordinator();
    cluster.cli_ok(&["jobs"]);
}

#[test]
fn gpu_decoding_without_a_gpu_is_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("cat");
    let catalog = catalog.to_str().unwrap();
    atelier_ok(&[
        "catalog", "generate", "--items", "4", "--out", catalog, "--size", "64x64",
    ]);
    let out = dir.path().join("tags");
    for command in [
        vec!["tag", "--out", out.to_str().unwrap()],
        vec!["test"],
        vec!["train", "--model-type", "color"],
    ] {
        let mut args = command;
        args.extend([
            "--checkpoint",
            "/nonexistent/model",
            "--catalog",
            catalog,
            "--gpu-decode",
        ]);
        let output = atelier(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains("--gpu-decode needs a CUDA device"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn doctor_reports_what_the_machine_offers() {
    let report = atelier_ok(&["doctor"]);
    assert!(report.contains("libtorch_cpu.so"), "{report}");
    let gpus = tch::Cuda::device_count();
    assert!(
        report.contains(&format!("cuda devices: {gpus}")),
        "{report}"
    );
    assert!(
        report.contains("\nnccl: ") && report.contains("\nnvjpeg: "),
        "{report}"
    );
    // Two lines per GPU: its decode check (or why there is none) and its
    // completion events.
    assert_eq!(
        report.matches("\ncuda:").count() as i64,
        2 * gpus,
        "{report}"
    );
    for index in 0..gpus {
        let events = format!("\ncuda:{index}: completion events: ");
        assert!(report.contains(&events), "{report}");
    }
    // The bf16 verdict agrees with the kernel's view of the CPU.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let expected = if cpuinfo.contains(" avx512_bf16") {
        "cpu bf16: avx512-bf16"
    } else {
        "cpu bf16: no bf16 instructions"
    };
    assert!(report.contains(expected), "{report}");
}

/// The subcommands `atelier` lists in its help, and those of its groups.
fn subcommands(args: &[&str]) -> Vec<String> {
    let mut args = args.to_vec();
    args.push("--help");
    let help = atelier_ok(&args);
    help.lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn the_cli_reference_covers_every_command() {
    let reference =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/cli.md")).unwrap();
    let mut commands = Vec::new();
    for top in subcommands(&[]) {
        match top.as_str() {
            "catalog" | "submit" => {
                for sub in subcommands(&[&top]) {
                    commands.push(format!("atelier {top} {sub}"));
                }
            }
            _ => commands.push(format!("atelier {top}")),
        }
    }
    assert!(commands.len() > 15, "{commands:?}");
    let missing: Vec<&String> = commands
        .iter()
        .filter(|command| !reference.contains(&format!("`{command}")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/cli.md does not describe {missing:?}"
    );
}

#[test]
fn training_flags_default_to_the_recipe() {
    let help = atelier_ok(&["train", "--help"]);
    for default in [
        "[default: onecycle]",
        "[default: 0.0005]",
        "[default: pool]",
    ] {
        assert!(help.contains(default), "{default} missing from:\n{help}");
    }
    // `submit train` offers the same options, and not the local run's own.
    let submit = atelier_ok(&["submit", "train", "--help"]);
    assert!(submit.contains("[default: onecycle]") && submit.contains("--world-size"));
    assert!(!submit.contains("--threads"), "{submit}");
}

#[test]
fn a_coordinator_open_beyond_loopback_without_a_token_refuses_to_start_unless_told_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("coordinator.db");
    let open = || {
        let mut command =
            std::process::Command::new(atelier_tests::built_bin("atelier-coordinator"));
        command
            .args(["--state", state.to_str().unwrap(), "--listen", "0.0.0.0:0"])
            .env("RUST_LOG", "warn");
        command
    };
    // Bounded: a coordinator that serves anyway must fail the test, not hang it.
    let mut refused = open()
        .env_remove("ATELIER_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = refused.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = refused.kill();
            panic!("the coordinator served 0.0.0.0 without a token");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut refused.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("0.0.0.0:0") && err.contains("--token") && err.contains("--insecure"),
        "{err}"
    );
    // Told so, it serves; its first line names the address it bound.
    let mut child = open()
        .arg("--insecure")
        .env_remove("ATELIER_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.starts_with("coordinator listening on 0.0.0.0:"),
        "{line}"
    );
}
