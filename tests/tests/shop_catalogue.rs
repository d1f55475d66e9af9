//! A shop's own catalogue, read as it is: a warehouse export with `int64`
//! ids under its own column names, photos behind HTTP URLs, a label under
//! the shop's name, a column atelier does not know, and one id twice.
//! Without the mapping it is refused, naming the file and the column; with
//! it, `inspect`, `train`, `test`, `tag` and `submit tag` read it, and the
//! tags carry the ids as `int64`.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::DataType;
use atelier_catalog::{render_item, GenerateOptions};
use atelier_proto::JobState;
use atelier_tests::cluster::Cluster;
use atelier_tests::output::{column_type, read_column};
use atelier_tests::photo_server::serve;
use atelier_tests::{atelier, atelier_ok, runtime};
use parquet::arrow::ArrowWriter;
use tokio::net::TcpListener;

const ITEMS: i64 = 80;
/// Row 5 repeats row 4's id, as a warehouse export sometimes does.
const REPEATED_ROW: i64 = 5;

fn id_of(row: i64) -> i64 {
    if row == REPEATED_ROW {
        id_of(row - 1)
    } else {
        1000 + row
    }
}

/// Writes `dir/export.parquet` with the photos behind `base`, and returns
/// what the photo server must serve.
fn warehouse_export(dir: &Path, base: &str) -> HashMap<String, Vec<u8>> {
    let options = GenerateOptions {
        width: 48,
        height: 64,
        ..Default::default()
    };
    let mut photos = HashMap::new();
    let (mut ids, mut links, mut colours, mut prices) = (vec![], vec![], vec![], vec![]);
    let mut fits = vec![];
    for row in 0..ITEMS {
        let mut item = render_item(&options, row as u64).unwrap();
        let path = format!("/cdn/{row}.jpg");
        photos.insert(path.clone(), item.image.take().unwrap());
        ids.push(id_of(row));
        links.push(format!("{base}{path}"));
        colours.push(item.labels.get("color").map(str::to_string));
        prices.push(9.5 + row as f64);
        fits.push(["slim", "regular", "loose"][row as usize % 3]);
    }
    let batch = RecordBatch::try_from_iter([
        ("id", Arc::new(Int64Array::from(ids)) as _),
        ("link", Arc::new(StringArray::from(links)) as _),
        ("baseColour", Arc::new(StringArray::from(colours)) as _),
        ("price", Arc::new(Float64Array::from(prices)) as _),
        ("fit", Arc::new(StringArray::from(fits)) as _),
    ])
    .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let file = std::fs::File::create(dir.join("export.parquet")).unwrap();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    photos
}

const MAPPING: [&str; 6] = [
    "--id-column",
    "id",
    "--image-uri-column",
    "link",
    "--label-column",
    "color=baseColour",
];

fn with_mapping<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    all.extend(MAPPING);
    all
}

fn failed_saying(args: &[&str]) -> String {
    let output = atelier(args);
    assert!(!output.status.success(), "{args:?} should have failed");
    String::from_utf8_lossy(&output.stderr).to_string()
}

#[test]
fn a_warehouse_export_is_read_through_its_column_mapping_and_keeps_its_integer_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let rt = runtime();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let photos = warehouse_export(&dir.path().join("shop"), &base);
    rt.spawn(serve(listener, Arc::new(photos)));
    let shop = path("shop");

    // Under atelier's own names the export is refused, naming it and the column.
    let error = failed_saying(&["catalog", "inspect", &shop]);
    assert!(
        error.contains("export.parquet")
            && error.contains("\"item_id\"")
            && error.contains("--id-column"),
        "{error}"
    );
    // A mapped column of an unusable type is named with its type.
    let error = failed_saying(&["catalog", "inspect", &shop, "--id-column", "price"]);
    assert!(error.contains("\"price\" has type Float64"), "{error}");

    let report = atelier_ok(&with_mapping(&["catalog", "inspect", &shop]));
    assert!(
        report.contains("1 rows repeat an earlier row's id (for example 1004)"),
        "{report}"
    );
    assert!(report.contains("color (column baseColour)"), "{report}");

    // Train and evaluate on the export as it is: a head for the shop's own
    // `fit` beside colour, the whole photo squashed to the square; the
    // checkpoint records the mapping, the targets and the framing.
    let model = path("model");
    let train = |framing: &'static str| {
        with_mapping(&[
            "train",
            "--model-type",
            "pool",
            "--targets",
            "fit,color",
            "--arch",
            "resnet18",
            "--image-size",
            "32",
            "--n-epochs",
            "1",
            "--max-steps",
            "2",
            "--framing",
            framing,
            "--catalog",
            &shop,
            "--checkpoint",
            &model,
        ])
    };
    atelier_ok(&train("squash"));
    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("model/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(recorded["framing"], "squash");
    assert_eq!(
        recorded["model"]["targets"],
        serde_json::json!(["fit", "color"])
    );
    assert_eq!(recorded["columns"]["id"], "id");
    // Resuming it framed otherwise would mix two inputs in one model.
    let error = failed_saying(&train("center-crop"));
    assert!(error.contains("trained with --framing squash"), "{error}");
    let tested = atelier_ok(&with_mapping(&[
        "test",
        "--checkpoint",
        &model,
        "--catalog",
        &shop,
        "--all",
    ]));
    assert!(
        tested.contains(&format!("evaluated {ITEMS} items")),
        "{tested}"
    );
    assert!(tested.contains("color: accuracy"), "{tested}");
    assert!(tested.contains("fit: accuracy"), "{tested}");
    // A target that is not a label column is refused before training, named.
    let mut wrong = train("squash");
    let at = wrong.iter().position(|a| *a == "fit,color").unwrap();
    wrong[at] = "price";
    let error = failed_saying(&wrong);
    assert!(error.contains("\"price\" has type Float64"), "{error}");
    wrong[at] = "size";
    let error = failed_saying(&wrong);
    assert!(
        error.contains("export.parquet") && error.contains("no label column \"size\""),
        "{error}"
    );

    // Tags keep the ids' type and every row, the repeated id twice.
    let expected: Vec<Option<String>> = (0..ITEMS).map(|r| Some(id_of(r).to_string())).collect();
    atelier_ok(&with_mapping(&[
        "tag",
        "--checkpoint",
        &model,
        "--catalog",
        &shop,
        "--out",
        &path("tags"),
    ]));
    let tags = dir.path().join("tags");
    assert_eq!(column_type(&tags, "item_id"), DataType::Int64);
    assert_eq!(column_type(&tags, "fit_prob"), DataType::Float32);
    assert!(read_column(&tags, "fit").iter().all(|f| f
        .as_deref()
        .is_some_and(|f| ["slim", "regular", "loose"].contains(&f))));
    assert_eq!(read_column(&tags, "item_id"), expected);
    assert!(read_column(&tags, "error").iter().all(Option::is_none));

    // The same through a cluster: refused at submit without the mapping.
    let mut cluster = Cluster::start(dir.path(), None, &[]);
    cluster.add_worker(&[]);
    let out = path("cluster-tags");
    let refused = cluster.cli(&[
        "submit",
        "tag",
        "--catalog",
        &shop,
        "--checkpoint",
        &model,
        "--out",
        &out,
    ]);
    assert!(!refused.status.success());
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(
        error.contains("export.parquet") && error.contains("\"item_id\""),
        "{error}"
    );
    let job = cluster.submit(&with_mapping(&[
        "submit",
        "tag",
        "--catalog",
        &shop,
        "--checkpoint",
        &model,
        "--out",
        &out,
    ]));
    let done = rt.block_on(cluster.wait_done(&job, Duration::from_secs(120)));
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    let out = Path::new(&out);
    assert_eq!(column_type(out, "item_id"), DataType::Int64);
    let mut ids = read_column(out, "item_id");
    ids.sort_by_key(|id| id.as_deref().map(|i| i.parse::<i64>().unwrap()));
    assert_eq!(ids, expected);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("_manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["columns"]["id"], "id");
    assert_eq!(manifest["columns"]["image_uri"], "link");
    assert_eq!(manifest["columns"]["labels"][0]["column"], "baseColour");
}
