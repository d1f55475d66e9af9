"""A downstream team's reader of a tag output prefix, without atelier: it
opens the prefix itself as a Parquet dataset with pyarrow, pandas and DuckDB
(readers skip `_manifest.json` and `_SUCCESS`), and checks it against
`_manifest.json`. Prints one JSON line of what it found; exits non-zero on a
broken output.

python tests/python/read_tags.py OUTPUT EXPECTED_ROWS

OUTPUT is a local folder or an s3://bucket/prefix, reached through the
standard AWS_* variables (AWS_ENDPOINT for a server of one's own). DuckDB's
own S3 reader is an extension it downloads on first use; here it scans the
pyarrow dataset instead, as it does for any Arrow source.
"""
import json
import os
import sys
from urllib.parse import urlparse

import duckdb
import pandas as pd
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

out, expected = sys.argv[1], int(sys.argv[2])

if out.startswith("s3://"):
    endpoint = urlparse(os.environ["AWS_ENDPOINT"])
    fs = pafs.S3FileSystem(
        access_key=os.environ["AWS_ACCESS_KEY_ID"],
        secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region=os.environ.get("AWS_REGION", "us-east-1"),
        endpoint_override=endpoint.netloc,
        scheme=endpoint.scheme,
    )
    path = out[len("s3://"):].rstrip("/")
else:
    fs = pafs.LocalFileSystem()
    path = os.path.abspath(out)


def read_text(name):
    with fs.open_input_stream(f"{path}/{name}") as f:
        return f.read().decode()


assert fs.get_file_info(f"{path}/_SUCCESS").type == pafs.FileType.File, "no _SUCCESS: the job did not finish"
manifest = json.loads(read_text("_manifest.json"))

# The prefix as it is, as a user would open it first.
table = pq.read_table(path, filesystem=fs)
schema = {field.name: str(field.type) for field in table.schema}
assert schema["item_id"] in ("string", "int64"), schema
assert schema["model_version"] == "string", schema
assert schema["error"] == "string", schema
for attribute in ("color", "brand", "category"):
    if attribute in schema:
        assert schema[attribute] == "string", schema
        assert schema[f"{attribute}_prob"] == "float", schema
        assert schema[f"{attribute}_top3"].startswith("list<"), schema
assert table.num_rows == expected == manifest["rows"], (table.num_rows, expected, manifest["rows"])
ids = table.column("item_id").to_pylist()
assert len(set(ids)) == len(ids), "duplicate item_id"
parts = {p["file"]: p["rows"] for p in manifest["parts"]}
assert sum(parts.values()) == expected, parts

frame = pd.read_parquet(path, filesystem=fs)
assert len(frame) == expected and frame["item_id"].is_unique, len(frame)

if out.startswith("s3://"):
    dataset = pads.dataset(path, filesystem=fs, format="parquet")  # noqa: F841, DuckDB scans it by name
    source = "dataset"
else:
    source = f"read_parquet('{path}/*.parquet')"
[(rows, distinct)] = duckdb.sql(f"SELECT count(*), count(DISTINCT item_id) FROM {source}").fetchall()
assert rows == distinct == expected, (rows, distinct, expected)

print(json.dumps({"rows": table.num_rows, "parts": len(parts), "columns": sorted(schema)}))
