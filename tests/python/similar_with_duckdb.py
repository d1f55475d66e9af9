"""Finding similar products in a tag output's `embedding` column the way a
downstream team would, without atelier: pyarrow for the type, DuckDB's
array_cosine_similarity for the ranking. Prints one JSON line.

python tests/python/similar_with_duckdb.py TAGS_DIR ITEM_ID K
"""
import glob
import json
import os
import sys

import duckdb
import numpy as np
import pyarrow.parquet as pq

tags, item, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
files = sorted(glob.glob(os.path.join(tags, "*.parquet")))
assert files, f"no parquet under {tags}"

table = pq.read_table(files)
field = table.schema.field("embedding")
# fixed_size_list<item: float>[512] (or halffloat)
dim = field.type.list_size
element = str(field.type.value_type)
vectors = [v for v in table.column("embedding").to_pylist() if v is not None]
norms = np.linalg.norm(np.asarray(vectors, dtype=np.float32), axis=1)
assert np.allclose(norms, 1.0, atol=2e-3), (norms.min(), norms.max())

pattern = os.path.join(tags, "*.parquet")
rows = duckdb.sql(
    f"""
    WITH t AS (SELECT item_id, CAST(embedding AS FLOAT[{dim}]) AS e
               FROM read_parquet('{pattern}') WHERE embedding IS NOT NULL)
    SELECT t.item_id, array_cosine_similarity(t.e, q.e) AS s
    FROM t, (SELECT e FROM t WHERE item_id = '{item}') AS q
    WHERE t.item_id <> '{item}'
    ORDER BY s DESC, t.item_id
    LIMIT {k}
    """
).fetchall()
print(json.dumps({
    "type": str(field.type),
    "dim": dim,
    "element": element,
    "with_embedding": len(vectors),
    "rows": table.num_rows,
    "neighbours": [[r[0], float(r[1])] for r in rows],
}))
