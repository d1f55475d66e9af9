"""The NumPy peer of `atelier similar`: read the embedding column with
pyarrow, then one matrix-vector product and a partial sort. Prints the
seconds end to end and for the product alone, and the top ids.

python peer.py TAGS_DIR ITEM_ID K
"""
import glob
import json
import os
import sys
import time

import numpy as np
import pyarrow.parquet as pq

tags, item, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
started = time.perf_counter()
table = pq.read_table(sorted(glob.glob(os.path.join(tags, "*.parquet"))))
ids = table.column("item_id").to_numpy()
column = table.column("embedding").combine_chunks()
dim = column.type.list_size
vectors = column.values.to_numpy(zero_copy_only=False).reshape(-1, dim)
query = vectors[np.nonzero(ids == item)[0][0]]
product = time.perf_counter()
scores = vectors @ query
scores[ids == item] = -np.inf
top = np.argpartition(-scores, k)[:k]
top = top[np.lexsort((ids[top], -scores[top]))]
ended = time.perf_counter()
print(json.dumps({
    "seconds": ended - started,
    "product_seconds": ended - product,
    "top": [str(i) for i in ids[top]],
}))
