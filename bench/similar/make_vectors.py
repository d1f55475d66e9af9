"""Writes N random unit vectors of D floats as a tag output's `item_id` and
`embedding` columns (fixed_size_list<float>[D]), in parts of 100,000 rows.

python make_vectors.py OUT_DIR N D
"""
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

out, n, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(7)
part_rows = 100_000
for part, start in enumerate(range(0, n, part_rows)):
    rows = min(part_rows, n - start)
    vectors = rng.standard_normal((rows, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = pa.array([f"item-{i:08d}" for i in range(start, start + rows)])
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
    table = pa.table({"item_id": ids, "embedding": embedding})
    pq.write_table(table, os.path.join(out, f"part-{part:05d}.parquet"), compression="none")
