//! Visual embeddings for similar-product search: `tag --embeddings` writes
//! them, pyarrow and DuckDB read them as they are, and `atelier similar`
//! ranks the neighbours as DuckDB's `array_cosine_similarity` does.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use atelier_tests::{atelier_ok, python, train_quick_color_model};

/// `(item_id, similarity)` rows of `atelier similar`'s table.
fn similar_rows(stdout: &str) -> Vec<(String, f64)> {
    stdout
        .lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields[2].to_string(), fields[1].parse().unwrap())
        })
        .collect()
}

fn duckdb_rows(json: &serde_json::Value) -> Vec<(String, f64)> {
    json["neighbours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n[0].as_str().unwrap().to_string(), n[1].as_f64().unwrap()))
        .collect()
}

#[test]
fn embeddings_are_written_read_by_duckdb_and_ranked_alike_by_atelier_similar() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    atelier_ok(&[
        "catalog",
        "generate",
        "--items",
        "400",
        "--out",
        &path("catalog"),
        "--size",
        "48x64",
        "--rows-per-group",
        "100",
    ]);
    train_quick_color_model(&path("catalog"), &path("model"));
    let tag = |out: &str, precision: &str| {
        atelier_ok(&[
            "tag",
            "--checkpoint",
            &path("model"),
            "--catalog",
            &path("catalog"),
            "--out",
            &path(out),
            "--embeddings",
            precision,
        ]);
    };
    tag("tags32", "float32");
    tag("tags16", "float16");
    // An item of the catalogue: the tag output keeps the input's order.
    let item = atelier_tests::output::read_column(dir.path().join("tags32").as_path(), "item_id")
        [17]
    .clone()
    .unwrap();

    let read = python(&[
        "tests/python/similar_with_duckdb.py",
        &path("tags32"),
        &item,
        "10",
    ]);
    let json: serde_json::Value = serde_json::from_str(read.trim()).unwrap();
    assert_eq!(json["dim"], 512, "{json}");
    assert_eq!(json["element"], "float", "{json}");
    assert_eq!(json["with_embedding"], 400, "{json}");
    let by_duckdb = duckdb_rows(&json);
    assert_eq!(by_duckdb.len(), 10);

    let by_atelier = similar_rows(&atelier_ok(&[
        "similar",
        "--tags",
        &path("tags32"),
        "--item",
        &item,
        "-k",
        "10",
    ]));
    let ids = |rows: &[(String, f64)]| rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&by_atelier), ids(&by_duckdb));
    for ((_, ours), (_, theirs)) in by_atelier.iter().zip(&by_duckdb) {
        assert!((ours - theirs).abs() < 1e-3, "{ours} against {theirs}");
    }
    assert!(
        !ids(&by_atelier).contains(&item),
        "the item is its own neighbour"
    );

    // float16 halves the column and keeps the ranking's head.
    let half = python(&[
        "tests/python/similar_with_duckdb.py",
        &path("tags16"),
        &item,
        "10",
    ]);
    let half: serde_json::Value = serde_json::from_str(half.trim()).unwrap();
    assert_eq!(half["element"], "halffloat", "{half}");
    let by_atelier_half = similar_rows(&atelier_ok(&[
        "similar",
        "--tags",
        &path("tags16"),
        "--item",
        &item,
        "-k",
        "10",
    ]));
    assert_eq!(by_atelier_half[0].0, by_atelier[0].0);
    assert!((by_atelier_half[0].1 - by_atelier[0].1).abs() < 5e-3);

    // Without --embeddings there is nothing to search, and the command says so.
    atelier_ok(&[
        "tag",
        "--checkpoint",
        &path("model"),
        "--catalog",
        &path("catalog"),
        "--out",
        &path("plain"),
    ]);
    let refused = atelier_tests::atelier(&["similar", "--tags", &path("plain"), "--item", &item]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--embeddings"), "{stderr}");
}
