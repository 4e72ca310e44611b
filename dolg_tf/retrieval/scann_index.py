"""The ScaNN index (k-means tree + anisotropic hashing + exact reorder), numpy API only."""

import functools
import importlib
import importlib.util
import os
import re
import sys
from typing import Any

import numpy as np

from dolg_tf.retrieval import exact_search, search_index
from dolg_tf.utils import cli, native_logs


class ScannIndex(search_index.SearchIndex):
  """ScaNN: k-means tree + anisotropic asymmetric hashing + exact reorder.

  Parameters (None = chosen from the database size at build):
    num_leaves: tree partitions, default ~sqrt(num_db); <= 1 disables the tree.
    num_leaves_to_search: partitions scanned per query, default num_leaves/10.
    reorder: candidates re-scored exactly in float32 (0 = no reordering; at
      search time max(reorder, k) is used), default 250.
    dimensions_per_block: AH dimensions per 4-bit code (lut16), default 2.
    anisotropic_quantization_threshold: AH eta threshold, default 0.2.
    training_sample_size: points used to train the tree and AH codebooks.
    num_threads: search threads (0 = ScaNN's default).
    soar_lambda: SOAR spilling (None = off): every point is also stored in a
      second partition chosen with orthogonality-amplified residuals (this
      lambda), so fewer leaves reach the same recall; the AH codes, and so
      the index, grow accordingly.
    overretrieve_factor: with SOAR, how many more candidates the partitions
      return before de-duplication (None = ScaNN's default).
    spherical: spherical k-means for the tree (centres normalised).
  """

  kind = "scann"
  DEFAULTS = {
    "num_leaves": None,
    "num_leaves_to_search": None,
    "reorder": 250,
    "dimensions_per_block": 2,
    "anisotropic_quantization_threshold": 0.2,
    "training_sample_size": 100000,
    "num_threads": 0,
    "soar_lambda": None,
    "overretrieve_factor": None,
    "spherical": False,
  }
  SEARCH_PARAMS = frozenset({"num_leaves_to_search", "reorder"})

  def __init__(self, **params: Any):
    super().__init__(**params)
    self._searcher = None

  def build(self, database: Any) -> "ScannIndex":
    scann_ops_pybind = _scann_numpy_api()
    db = self._check_database(database)
    n = db.shape[0]
    p = self.params
    num_leaves = min(n, p["num_leaves"] or search_index.default_num_leaves(n))
    to_search = p["num_leaves_to_search"] or max(1, int(round(num_leaves / 10)))
    p["num_leaves"] = num_leaves
    p["num_leaves_to_search"] = min(to_search, num_leaves)
    sample = min(n, p["training_sample_size"])
    builder = scann_ops_pybind.builder(db, 10, "dot_product")
    if num_leaves > 1:
      builder = builder.tree(
        num_leaves=num_leaves,
        num_leaves_to_search=p["num_leaves_to_search"],
        training_sample_size=sample,
        spherical=bool(p["spherical"]),
        soar_lambda=p["soar_lambda"],
        overretrieve_factor=p["overretrieve_factor"],
      )
    builder = builder.score_ah(
      p["dimensions_per_block"],
      anisotropic_quantization_threshold=p["anisotropic_quantization_threshold"],
      training_sample_size=sample,
    )
    if p["reorder"]:
      builder = builder.reorder(p["reorder"])
    with native_logs.quiet_native_info():
      self._searcher = builder.build()
    self._set_threads()
    return self

  def _set_threads(self) -> None:
    if self.params["num_threads"]:
      self._searcher.set_num_threads(self.params["num_threads"])

  def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    q = self._check_built(queries, k)
    p = self.params
    pre = max(p["reorder"], k) if p["reorder"] else k
    leaves = min(p["num_leaves_to_search"], p["num_leaves"]) if p["num_leaves"] > 1 else None
    ids, dists = self._searcher.search_batched_parallel(
      q, final_num_neighbors=k, pre_reorder_num_neighbors=pre, leaves_to_search=leaves
    )
    # ScaNN returns uint32 ids and, for dot_product, the similarity itself.
    ids = np.asarray(ids).astype(np.int64)
    return exact_search.sort_results(ids, np.asarray(dists, dtype=np.float32), k)

  def _save_payload(self, directory: str) -> None:
    self._searcher.serialize(directory)

  def _finalize_payload(self, tmp_dir: str, final_dir: str) -> None:
    _rewrite_scann_asset_paths(tmp_dir, final_dir)

  def _load_payload(self, directory: str) -> None:
    scann_ops_pybind = _scann_numpy_api()
    assets = _rewrite_scann_asset_paths(directory, os.path.abspath(directory), write=False)
    with native_logs.quiet_native_info():
      self._searcher = scann_ops_pybind.ScannSearcher(
        scann_ops_pybind.scann_pybind.ScannNumpy(directory, assets)
      )
    self._set_threads()


@functools.cache
def _scann_numpy_api():
  """ScaNN's numpy API (scann_ops_pybind), loaded without ScaNN's TensorFlow ops.

  `import scann` also loads scann_ops, a TF op library built against one
  TensorFlow release (scann 1.4.2's fails to load on TF 2.21), and dolg_tf never
  uses it. So the module is imported under a bare `scann` package whose
  `__init__` does not run, and every `scann` module this import added is taken
  out of sys.modules again: a later `import scann` of the user's is a fresh,
  complete import, as if dolg_tf had not been there.
  """
  if "scann" in sys.modules:  # The user's complete ScaNN: use its module.
    return importlib.import_module("scann.scann_ops.py.scann_ops_pybind")
  spec = importlib.util.find_spec("scann")
  if spec is None:
    raise cli.UserError("a 'scann' index needs the scann package (pip install scann)")
  before = set(sys.modules)
  sys.modules["scann"] = importlib.util.module_from_spec(spec)
  try:
    return importlib.import_module("scann.scann_ops.py.scann_ops_pybind")
  finally:
    for name in set(sys.modules) - before:
      if name == "scann" or name.startswith("scann."):
        del sys.modules[name]


def _rewrite_scann_asset_paths(directory: str, target_dir: str, write: bool = True) -> str:
  """Points ScaNN's absolute asset paths at `target_dir` (folder may move)."""
  path = os.path.join(directory, "scann_assets.pbtxt")
  if not os.path.isfile(path):
    raise OSError(f"{path}: ScaNN assets file not found")
  with open(path) as f:
    text = f.read()
  text = re.sub(
    r'asset_path: "([^"]*)"',
    lambda m: f'asset_path: "{os.path.join(target_dir, os.path.basename(m.group(1)))}"',
    text,
  )
  if write:
    with open(path, "w") as f:
      f.write(text)
  return text
