"""A downstream team's reader of a tag job's output prefix, without atelier:
it follows manifest.json and checks the parts with pyarrow and with DuckDB.
Prints one JSON line of what it found; exits non-zero on a broken output.

python tests/python/read_tags.py OUTPUT_DIR EXPECTED_ROWS
"""
import json
import os
import sys

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

out, expected = sys.argv[1], int(sys.argv[2])
assert os.path.exists(os.path.join(out, "_SUCCESS")), "no _SUCCESS: the job did not finish"
manifest = json.load(open(os.path.join(out, "manifest.json")))
files = [os.path.join(out, part["file"]) for part in manifest["parts"]]

table = pa.concat_tables(pq.read_table(f) for f in files)
schema = {field.name: str(field.type) for field in table.schema}
assert schema["item_id"] == "string", schema
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

glob = os.path.join(out, "part-*.parquet")
[(rows, distinct)] = duckdb.sql(
    f"SELECT count(*), count(DISTINCT item_id) FROM read_parquet('{glob}')"
).fetchall()
assert rows == distinct == expected, (rows, distinct, expected)

print(json.dumps({"rows": table.num_rows, "parts": len(files), "columns": sorted(schema)}))
