r"""Exact vs ScaNN vs faiss search on synthetic retrieval-like descriptors.

Data: `--num_db` unit descriptors of `--dim` dims from a long-tailed mixture
of clusters. Cluster i has max(U[min_cluster, max_small_cluster],
max_cluster * (i + 1) ** -zipf_exponent) members (Zipf-like: a few clusters
with thousands of members, most with tens). Every member, and every query,
lies at exactly cosine c to its cluster centre:
x = c * centre + sqrt(1 - c^2) * u, u a random unit vector orthogonal to the
centre, for each c in `--cosines` (lower c = noisier clusters). Queries are
fresh members of clusters picked in proportion to their size.

Centres and directions u are drawn from an anisotropic Gaussian (a random
rotation of variances (i + 1) ** -spectrum_decay, i = 0..dim-1), because real
global descriptors have a decaying PCA spectrum; with `--spectrum_decay=0`
they are isotropic, and then the part of a top-100 outside the query's
cluster is nearly random points that no partition-based index finds.

For every c the table gives, for exact search (the tiled BLAS search and
faiss.knn, exact_search.exact_search's two backends, all queries in one batch) and
several ScaNN / faiss settings: build time, index size (bytes of
the serialised index; exact = the float32 matrix, 2 GB at 1M x 512; ScaNN's
includes the float32 copy it reorders with), queries/s for the whole
query batch (2 threads where the library threads), recall@10 and recall@k
against exact search, and "match R@k": the recall restricted to the exact
top-k entries that belong to the query's own cluster (the true matches, what
retrieval quality depends on). Under each table: the fastest setting with
recall@k >= `--target_recall`, its speed-up over the fastest exact search
(and over the tiled one) and after how many queries its build time is paid
back. ScaNN builds come from `--scann_configs` (tree size as a multiple of
sqrt(N), AH dimensions per block, SOAR spilling lambda); one faiss IVF-PQ
build has many lists (`--ivf_hnsw_lists_multiple` x sqrt(N)) behind an HNSW
coarse quantiser; faiss HNSW runs up to `--hnsw_max_db`. A database-size sweep at
`--sweep_cosine` then shows from which size an approximate index beats exact
search at that recall.

With `--descriptors_dir` and `--labels_csv` the same table is printed for
descriptors the project extracted (the demo's synthetic landmark views): a
few hundred images, where exact search is the right choice and the table
only checks that the indices agree with it on real descriptors.

Under each generated table one line times SuperGlobal re-ranking
(dolg_tf.retrieval.superglobal; `--superglobal_m`, 0 = skip) of the exact
top-M of the first `--superglobal_queries` queries: ms per query of the
re-ranking alone, and the fraction of the top-k from the query's own cluster
before and after it.

Usage:
  .venv/bin/python benchmarks/search_benchmark.py --num_db=100000   # quick
  .venv/bin/python benchmarks/search_benchmark.py                   # 1M
  .venv/bin/python benchmarks/search_benchmark.py --descriptors_dir=runs/demo/features_trained \
      --labels_csv=runs/demo/benchmark/labels.csv

At 1M x 512 the database is 2 GB of float32; one database and one index
exist at a time (peak well under 24 GB).
"""

import os

# faiss k-means / HNSW run many short OpenMP parallel regions; on a shared or
# oversubscribed machine spin-waiting threads make builds 5-10x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from dolg_tf.retrieval import exact_search, indexes, search_index, superglobal  # noqa: E402
from dolg_tf.utils import arrays  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_db", 1_000_000, "Database size.")
flags.DEFINE_integer("num_queries", 1000, "Number of queries.")
flags.DEFINE_integer("dim", 512, "Descriptor dimension.")
flags.DEFINE_list("cosines", ["0.3", "0.5", "0.7"], "Member-to-centre cosines (noise levels).")
flags.DEFINE_float("spectrum_decay", 0.8, "Variance decay exponent (0 = isotropic).")
flags.DEFINE_integer("k", 100, "Neighbours per query.")
flags.DEFINE_integer("max_cluster", 5000, "Size of the largest cluster.")
flags.DEFINE_integer("min_cluster", 10, "Smallest tail cluster size.")
flags.DEFINE_integer("max_small_cluster", 60, "Largest tail cluster size.")
flags.DEFINE_float("zipf_exponent", 1.0, "Exponent of the head of the size law.")
flags.DEFINE_float("target_recall", 0.95, "Recall@k that counts as good enough.")
flags.DEFINE_integer("hnsw_max_db", 200_000, "Benchmark faiss HNSW only up to this size.")
flags.DEFINE_integer("scann_training_sample", 50_000, "ScaNN tree / AH training sample.")
flags.DEFINE_list(
  "scann_configs",
  ["1:2:0", "1:2:1.5", "2:2:1.5", "3:2:1.5"],
  "ScaNN builds of the full table, each leaves_multiple:dims_per_block:soar_lambda "
  "(leaves = multiple x ~sqrt(N); soar_lambda 0 = no SOAR spilling).",
)
flags.DEFINE_integer(
  "ivf_hnsw_lists_multiple", 4, "IVF-HNSW-PQ row: lists = this x ~sqrt(N) (0 = skip the row)."
)
flags.DEFINE_float("sweep_cosine", 0.5, "Cosine of the database-size sweep (<= 0: no sweep).")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_integer("superglobal_m", superglobal.DEFAULT_M, "SuperGlobal top-M (0 = skip it).")
flags.DEFINE_integer("superglobal_k", superglobal.DEFAULT_K, "SuperGlobal K.")
flags.DEFINE_integer("superglobal_queries", 200, "Queries of the SuperGlobal timing.")
flags.DEFINE_string(
  "descriptors_dir",
  None,
  "Instead of generated data: an extraction output folder (e.g. the demo's "
  "runs/demo/features_trained) whose database images are the index and whose queries query it.",
)
flags.DEFINE_string(
  "labels_csv", None, "With --descriptors_dir: name,set,class,kind rows (synthetic labels.csv)."
)

_CHUNK = 65536
# An approximate index "pays off" when it is at least this much faster.
_PAYS_OFF_SPEEDUP = 1.25


# ----------------------------------------------------------------------------- data


def cluster_sizes(rng, num_db):
  """Zipf-like head and a tail of tens, summing exactly to num_db."""
  sizes, total, i = [], 0, 0
  while total < num_db:
    head = int(round(FLAGS.max_cluster * (i + 1) ** -FLAGS.zipf_exponent))
    size = max(int(rng.integers(FLAGS.min_cluster, FLAGS.max_small_cluster + 1)), head)
    size = min(size, num_db - total)
    sizes.append(size)
    total += size
    i += 1
  return np.asarray(sizes)


class Dataset:
  """Cluster structure fixed by the seed; descriptors generated per cosine."""

  def __init__(self, num_db, num_queries, dim, seed, spectrum_decay):
    rng = np.random.default_rng(seed)
    self.dim = dim
    self.seed = seed
    self.sizes = cluster_sizes(rng, num_db)
    self.labels = rng.permutation(np.repeat(np.arange(self.sizes.size), self.sizes))
    self.query_labels = self.labels[rng.integers(0, num_db, num_queries)]
    self.std = ((np.arange(dim) + 1.0) ** (-spectrum_decay / 2)).astype(np.float32)
    self.rotation = None
    if spectrum_decay:
      q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
      self.rotation = np.ascontiguousarray(q.T, dtype=np.float32)
    self.centres = arrays.l2_normalize(self._gaussian(self.sizes.size, rng))

  def _gaussian(self, n, rng):
    z = rng.standard_normal((n, self.dim), dtype=np.float32) * self.std
    return z @ self.rotation if self.rotation is not None else z

  def _members(self, labels, cosine, seed):
    c = self.centres[labels]
    u = self._gaussian(labels.size, np.random.default_rng(seed))
    u -= np.sum(u * c, axis=1, keepdims=True) * c
    u = arrays.l2_normalize(u, axis=1)
    return cosine * c + np.float32(math.sqrt(1.0 - cosine * cosine)) * u

  def database(self, cosine):
    n = self.labels.size
    db = np.empty((n, self.dim), dtype=np.float32)
    for j, start in enumerate(range(0, n, _CHUNK)):
      rows = slice(start, start + _CHUNK)
      db[rows] = self._members(self.labels[rows], cosine, (self.seed, 1, j))
    return db

  def queries(self, cosine):
    return self._members(self.query_labels, cosine, (self.seed, 2))


# ----------------------------------------------------------------------------- runs


class Reference:
  """Exact top-k of one query set, and which of its entries are true matches."""

  def __init__(self, exact_ids, db_labels, query_labels, k):
    self.ids = exact_ids
    self.k = k
    self.match = db_labels[exact_ids] == query_labels[:, None]

  def match_fraction(self):
    return float(self.match.mean())

  def match_recall(self, ids):
    found = [
      np.isin(e[m], a).mean() for a, e, m in zip(ids, self.ids, self.match, strict=True) if m.any()
    ]
    return float(np.mean(found)) if found else float("nan")


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def _build(kind, db, with_size, **params):
  """Builds an index; returns it with (build seconds, index bytes)."""
  index, build_s = _timed(lambda: indexes.make_index(kind, **params).build(db))
  return index, (build_s, index.memory_bytes() if with_size else 0)


def _row(rows, method, setting, build, index, queries, ref, search_s=None, ids=None):
  """Times one search setting and records its recalls."""
  if ids is None:
    (ids, _), search_s = _timed(lambda: index.search(queries, ref.k))
  build_s, nbytes = build
  row = {
    "method": method,
    "setting": setting,
    "build_s": build_s,
    "bytes": nbytes,
    "qps": queries.shape[0] / search_s,
    "r10": indexes.recall_at_k(ids, ref.ids, 10),
    "rk": indexes.recall_at_k(ids, ref.ids, ref.k),
    "match": ref.match_recall(ids),
  }
  rows.append(row)
  logging.info(
    "%-15s %-26s build %5.1fs %7.0f q/s R@%d %.3f",
    method,
    setting,
    build_s,
    row["qps"],
    ref.k,
    row["rk"],
  )


def approximate_rows(db, queries, ref, rows, sweep=False):
  """Builds each index once and sweeps its search-time knobs."""
  n, dim = db.shape
  k = ref.k
  leaves = search_index.default_num_leaves(n)

  def part(fraction):
    return max(1, min(leaves, int(round(fraction * leaves))))

  # (fraction of the ScaNN leaves searched, candidates re-scored exactly). At
  # member cosine 0.5 partition recall, not the AH scoring, limits recall@100:
  # about a quarter of ~sqrt(N) leaves is needed for 0.95, which ScaNN's 4-bit
  # LUT scan still does >10x faster than exact search at 1M.
  if sweep:
    scann_settings = ((0.02, 2), (0.05, 3), (0.1, 5), (0.2, 8), (0.4, 8))
  else:
    scann_settings = ((0.01, 2), (0.02, 3), (0.05, 5), (0.1, 5), (0.2, 8), (0.25, 8), (0.3, 8))
  # IVF-Flat scans float32 vectors one query at a time (slower than batched
  # exact search at wide settings), so it stops at a tenth of the lists.
  ivf_fractions = (0.02, 0.05, 0.1) if sweep else (0.01, 0.02, 0.05, 0.1)
  with_size = not sweep

  configs = ["1:2:0"] if sweep else FLAGS.scann_configs
  for config in configs:
    multiple, dims_per_block, soar = (float(v) for v in config.split(":"))
    num_leaves = max(1, min(n, int(round(multiple * leaves))))
    params = {"dimensions_per_block": int(dims_per_block)}
    if soar:
      params["soar_lambda"] = soar
    index, build = _build(
      "scann",
      db,
      with_size,
      num_leaves=num_leaves,
      training_sample_size=FLAGS.scann_training_sample,
      **params,
    )
    if soar:
      # SOAR stores each point in a second partition too: fewer leaves reach
      # the same recall. (4 dims per AH block, "1:4:1.5", halves the scan but
      # at 1M x 512, cosine 0.5, its recall@100 stalls near 0.87 even with
      # 1500 candidates reordered.)
      reorder_factor = 8 if dims_per_block <= 2 else 15
      settings = [(f, reorder_factor) for f in (0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2)]
      settings += [(f, r * reorder_factor // 8) for f, r in ((0.1, 4), (0.12, 4), (0.15, 4))]
      settings += [(f, r * reorder_factor // 8) for f, r in ((0.12, 6), (0.15, 6))]
    else:
      settings = scann_settings
    method = "scann" + (f" soar{soar:g}" if soar else "")
    for f, reorder_factor in settings:
      to_search = max(1, min(num_leaves, int(round(f * num_leaves))))
      reorder = reorder_factor * k
      index.set_search_params(num_leaves_to_search=to_search, reorder=reorder)
      setting = f"L{num_leaves} d{int(dims_per_block)} search {to_search} rr {reorder}"
      _row(rows, method, setting, build, index, queries, ref)
    del index

  index, build = _build("faiss_ivf_flat", db, with_size, nlist=leaves)
  for f in ivf_fractions:
    index.set_search_params(nprobe=part(f))
    _row(rows, "faiss_ivf_flat", f"IVF{leaves} nprobe {part(f)}", build, index, queries, ref)
  del index
  if sweep:
    return

  m = dim // 4
  index, build = _build("faiss_ivf_pq", db, with_size, nlist=leaves, m=m)
  for f in (0.02, 0.05, 0.1):
    index.set_search_params(nprobe=part(f))
    _row(rows, "faiss_ivf_pq", f"PQ{m}x4fs nprobe {part(f)}", build, index, queries, ref)
  del index

  index, build = _build("faiss_ivf_pq", db, with_size, nlist=leaves, m=m, refine_k_factor=4)
  for f, kf in ((0.05, 4), (0.1, 10), (0.2, 10)):
    index.set_search_params(nprobe=part(f), refine_k_factor=kf)
    setting = f"PQ{m}x4fs nprobe {part(f)} kf {kf}"
    _row(rows, "faiss_ivfpq+rf", setting, build, index, queries, ref)
  del index

  if FLAGS.ivf_hnsw_lists_multiple > 0:
    # Many small lists behind an HNSW coarse quantiser (scoring 4000 centroids
    # per query exactly would cost as much as scanning a few lists).
    nlist = min(n // 40, FLAGS.ivf_hnsw_lists_multiple * leaves)
    index, build = _build(
      "faiss_ivf_pq",
      db,
      with_size,
      nlist=nlist,
      m=m,
      refine_k_factor=4,
      coarse_hnsw_m=32,
      train_size=40 * nlist,
    )
    for f, kf in ((0.025, 10), (0.05, 10), (0.1, 10), (0.15, 10)):
      nprobe = max(1, int(round(f * nlist)))
      index.set_search_params(nprobe=nprobe, refine_k_factor=kf)
      setting = f"IVF{nlist}_HNSW32 np {nprobe} kf {kf}"
      _row(rows, "faiss_ivfhnsw+rf", setting, build, index, queries, ref)
    del index

  if n <= FLAGS.hnsw_max_db:
    index, build = _build("faiss_hnsw", db, with_size, m=32, ef_construction=80)
    for ef in (128, 256, 512):
      index.set_search_params(ef_search=ef)
      _row(rows, "faiss_hnsw", f"HNSW32 efSearch {ef}", build, index, queries, ref)
    del index


def superglobal_line(db, queries, db_labels, query_labels, k):
  """Times SuperGlobal re-ranking of the exact top-M; one printable line."""
  m, sg_k = FLAGS.superglobal_m, FLAGS.superglobal_k
  n = min(FLAGS.superglobal_queries, queries.shape[0])
  queries, query_labels = queries[:n], query_labels[:n]
  (ids, scores), search_s = _timed(lambda: exact_search.exact_search(queries, db, m))
  (new_ids, _), rerank_s = _timed(
    lambda: superglobal.superglobal_rerank(queries, db, ids, scores, m=m, k=sg_k)
  )

  def own(ranking):
    return float(np.mean(db_labels[ranking[:, :k]] == query_labels[:, None]))

  return (
    f"  SuperGlobal re-ranking (M={m}, K={sg_k}, beta={superglobal.DEFAULT_BETA:g}) of the exact "
    f"top-{m}, {n} queries: {1000 * rerank_s / n:.1f} ms/query (exact top-{m} search "
    f"{1000 * search_s / n:.1f} ms/query); own cluster in the top-{k} "
    f"{100 * own(ids):.1f}% -> {100 * own(new_ids):.1f}%"
  )


def _fmt_bytes(b):
  for unit in ("B", "KB", "MB", "GB"):
    if b < 1024 or unit == "GB":
      return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
    b /= 1024.0
  return ""


def print_table(title, rows, k):
  print(f"\n{title}")
  header = (
    f"{'method':<15} {'setting':<28} {'build s':>8} {'index size':>11} {'queries/s':>10} "
    f"{'R@10':>6} {'R@' + str(k):>6} {'match R@' + str(k):>12}"
  )
  print(header)
  print("-" * len(header))
  for r in rows:
    print(
      f"{r['method']:<15} {r['setting']:<28} {r['build_s']:>8.1f} {_fmt_bytes(r['bytes']):>11} "
      f"{r['qps']:>10.0f} {r['r10']:>6.3f} {r['rk']:>6.3f} {r['match']:>12.3f}"
    )


def pay_off_lines(rows, k):
  exact_rows = [r for r in rows if r["method"].startswith("exact")]
  tiled = exact_rows[0]
  exact = max(exact_rows, key=lambda r: r["qps"])
  lines = []
  if exact is not tiled:
    lines.append(
      f"  fastest exact: {exact['method']} [{exact['setting']}] "
      f"{exact['qps'] / tiled['qps']:.2f}x the tiled search"
    )
  for key, what in (("rk", f"recall@{k}"), ("match", f"match recall@{k}")):
    good = [r for r in rows if r not in exact_rows and r[key] >= FLAGS.target_recall]
    if not good:
      lines.append(f"  no approximate setting reached {what} >= {FLAGS.target_recall}")
      continue
    best = max(good, key=lambda r: r["qps"])
    speedup = best["qps"] / exact["qps"]
    line = (
      f"  fastest with {what} >= {FLAGS.target_recall}: {best['method']} "
      f"[{best['setting']}] {best['qps']:.0f} q/s = {speedup:.1f}x the fastest exact"
    )
    if exact is not tiled:
      line += f" ({best['qps'] / tiled['qps']:.1f}x the tiled search)"
    if speedup > 1:
      saved = 1.0 / exact["qps"] - 1.0 / best["qps"]
      line += (
        f"; build ({best['build_s']:.0f}s) repaid after {best['build_s'] / saved:,.0f} queries"
      )
    else:
      line += "; exact search is faster at this size"
    lines.append(line)
  return "\n".join(lines)


def size_sweep(data, cosine, k):
  """Exact vs the fastest ScaNN / IVF-Flat setting with recall >= target, per size."""
  n_full = data.labels.size
  sizes = sorted({n_full // d for d in (500, 200, 100, 30, 10)})
  sizes = [s for s in sizes if s >= max(2000, 4 * k)]
  if not sizes:
    return
  db_full = data.database(cosine)
  queries = data.queries(cosine)
  print(
    f"\nDatabase-size sweep, cosine {cosine}: fastest ScaNN / IVF-Flat setting with "
    f"recall@{k} >= {FLAGS.target_recall} vs exact (full size: table above)"
  )
  header = (
    f"{'num_db':>9} {'exact q/s':>10} {'best approximate':<44} {'q/s':>8} "
    f"{'R@' + str(k):>6} {'speedup':>8}"
  )
  print(header)
  print("-" * len(header))
  crossover = None
  for n in sizes:
    db = db_full[:n]  # The database order is random: a prefix is a random subset.
    start = time.perf_counter()
    exact_ids, _ = exact_search.exact_search(queries, db, k)
    exact_qps = queries.shape[0] / (time.perf_counter() - start)
    ref = Reference(exact_ids, data.labels[:n], data.query_labels, k)
    rows = []
    approximate_rows(db, queries, ref, rows, sweep=True)
    good = [r for r in rows if r["rk"] >= FLAGS.target_recall]
    if not good:
      print(f"{n:>9} {exact_qps:>10.0f} {'(no setting reached the target recall)':<44}")
      continue
    best = max(good, key=lambda r: r["qps"])
    speedup = best["qps"] / exact_qps
    name = f"{best['method']} {best['setting']}"
    print(
      f"{n:>9} {exact_qps:>10.0f} {name:<44} {best['qps']:>8.0f} {best['rk']:>6.3f} "
      f"{speedup:>7.1f}x"
    )
    if speedup >= _PAYS_OFF_SPEEDUP and crossover is None:
      crossover = n
  if crossover is None:
    print(f"  approximate search was not >= {_PAYS_OFF_SPEEDUP}x faster at any swept size")
  else:
    print(
      f"  approximate search pays off from about {crossover:,} database vectors (smallest "
      f"swept size where it is >= {_PAYS_OFF_SPEEDUP}x faster at recall@{k} >= "
      f"{FLAGS.target_recall})"
    )


def own_descriptors(k):
  """The same table on extracted descriptors (database = non-query rows of the labels)."""
  import csv  # noqa: PLC0415

  from dolg_tf.io import descriptor_files, descriptor_reading  # noqa: PLC0415

  if not FLAGS.labels_csv:
    raise app.UsageError("--descriptors_dir needs --labels_csv")
  with open(FLAGS.labels_csv, newline="") as f:
    rows = list(csv.DictReader(f))
  query_rows = [r for r in rows if r["set"] == "query"]
  db_rows = [r for r in rows if r["set"] != "query"]
  _, db = descriptor_reading.read_descriptors(
    FLAGS.descriptors_dir, ids=[r["name"] for r in db_rows], suffix=descriptor_files.DEFAULT_SUFFIX
  )
  _, queries = descriptor_reading.read_descriptors(
    FLAGS.descriptors_dir,
    ids=[r["name"] for r in query_rows],
    suffix=descriptor_files.DEFAULT_SUFFIX,
  )
  db_labels = np.asarray([int(r["class"]) for r in db_rows])
  query_labels = np.asarray([int(r["class"]) for r in query_rows])
  k = min(k, db.shape[0] // 2)
  print(
    f"Search benchmark on extracted descriptors {FLAGS.descriptors_dir}: {db.shape[0]} x "
    f"{db.shape[1]} database, {queries.shape[0]} queries, k={k}"
  )
  exact = indexes.make_index("exact").build(db)
  (exact_ids, _), exact_s = _timed(lambda: exact.search(queries, k))
  ref = Reference(exact_ids, db_labels, query_labels, k)
  table = []
  build = (0.0, exact.memory_bytes())
  _row(table, "exact", "tiled BLAS", build, exact, queries, ref, search_s=exact_s, ids=exact_ids)
  leaves = search_index.default_num_leaves(db.shape[0])
  index, build = _build("scann", db, True, num_leaves=leaves)
  for f in (0.1, 0.25, 0.5):
    to_search = max(1, int(round(f * leaves)))
    index.set_search_params(num_leaves_to_search=to_search, reorder=4 * k)
    _row(table, "scann", f"L{leaves} search {to_search} rr {4 * k}", build, index, queries, ref)
  index, build = _build("faiss_hnsw", db, True, m=32, ef_construction=80)
  for ef in (64, 256):
    index.set_search_params(ef_search=ef)
    _row(table, "faiss_hnsw", f"HNSW32 efSearch {ef}", build, index, queries, ref)
  print_table(
    f"extracted descriptors: {100 * ref.match_fraction():.0f}% of the exact top-{k} are the "
    "query's landmark",
    table,
    k,
  )
  print(pay_off_lines(table, k), flush=True)


def main(argv):
  del argv
  start = time.perf_counter()
  k = FLAGS.k
  if FLAGS.descriptors_dir:
    own_descriptors(k)
    return
  data = Dataset(FLAGS.num_db, FLAGS.num_queries, FLAGS.dim, FLAGS.seed, FLAGS.spectrum_decay)
  sizes = data.sizes
  print(
    f"Search benchmark: {FLAGS.num_db:,} x {FLAGS.dim} float32 database, "
    f"{FLAGS.num_queries} queries, k={k}, {sizes.size:,} clusters (largest {sizes.max()}, "
    f"median {int(np.median(sizes))}, smallest {sizes.min()}), spectrum decay "
    f"{FLAGS.spectrum_decay}, {len(os.sched_getaffinity(0))} CPU threads; "
    f"ScaNN: tree ~sqrt(N) leaves + AH (2 dims/block, eta 0.2, "
    f"{FLAGS.scann_training_sample:,} training points) + float reorder; faiss IVF "
    f"~sqrt(N) lists, inner product"
  )
  for cosine in [float(c) for c in FLAGS.cosines]:
    db, gen_s = _timed(lambda cosine=cosine: data.database(cosine))
    queries = data.queries(cosine)
    logging.info("cosine %.2f: generated %s descriptors in %.1fs", cosine, f"{len(db):,}", gen_s)
    exact = indexes.make_index("exact", backend="numpy").build(db)
    t0 = time.perf_counter()
    exact_ids, _ = exact.search(queries, k)
    exact_s = time.perf_counter() - t0
    ref = Reference(exact_ids, data.labels, data.query_labels, k)
    rows = []
    build = (0.0, exact.memory_bytes())
    setting = "tiled BLAS, batched"
    _row(rows, "exact", setting, build, exact, queries, ref, search_s=exact_s, ids=exact_ids)
    # The same matrix searched by faiss.knn (exact_search.exact_search's 'faiss' backend).
    exact.set_search_params(backend="faiss")
    _row(rows, "exact faiss", "faiss.knn, batched", build, exact, queries, ref)
    del exact
    sg_line = ""
    if FLAGS.superglobal_m > 0:
      sg_line = superglobal_line(db, queries, data.labels, data.query_labels, k)
      logging.info("%s", sg_line.strip())
    approximate_rows(db, queries, ref, rows)
    del db
    print_table(
      f"member cosine {cosine:.2f}: {100 * ref.match_fraction():.0f}% of the exact top-{k} "
      f"are the query's cluster (generated in {gen_s:.1f}s)",
      rows,
      k,
    )
    print(pay_off_lines(rows, k), flush=True)
    if sg_line:
      print(sg_line, flush=True)
  if FLAGS.sweep_cosine > 0:
    size_sweep(data, FLAGS.sweep_cosine, k)
  print(f"\ntotal time {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
  app.run(main)
