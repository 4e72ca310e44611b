"""DELG re-ranking: the top of each global ranking re-sorted by geometric verification.

    ranks, _ = query_expansion.search_with_expansion(queries, database, k)
    new_ranks, inliers = rerank.rerank(ranks, query_features, load_index_features, top_k=100)

For each query, the `top_k` best database images of the global ranking are
verified against the query (local feature matching + RANSAC,
geometric_verification.py); the number of RANSAC inliers is the image's score:
the top-k images are re-sorted by (inliers, descending; then their global
rank), the rest of the ranking is unchanged.

Junk images (Revisited Oxford/Paris). DELF re-ranks once per protocol: its
top-100 window is made of the first 100 *non-junk* images of that protocol, so
junk images do not use up re-ranking slots, and the window (hence which images
move) differs between Easy, Medium and Hard. Re-ranking the first 100
positions once and evaluating every protocol on that ranking is NOT the same
when junk images sit in the window (fewer non-junk images get verified), so
`rerank_protocols` (evaluation.evaluate's geometric verification)
re-ranks per protocol as DELF does, with `junk` set to that protocol's junk
list; the inlier counts are computed once per (query, image) and shared
between protocols, so the extra cost is only sorting. Where the junk images
of the window end up is irrelevant: the metrics remove junk from a ranking
before scoring it.

Images without local features (e.g. +1M distractor shards, which hold global
descriptors only): the index loader returns None for them and they count 0
inliers without being matched. They still use up their slot of the window, so
after re-ranking they sit below every verified image with inliers and keep
their global order among the images with none.
"""

import functools
import os
import time
from collections.abc import Callable, Sequence

import numpy as np
from absl import logging

from dolg_tf.data import ground_truth
from dolg_tf.io import feature_io
from dolg_tf.retrieval import geometric_verification, metrics

LOCAL_SUFFIX = ".delg_local"


def rerank_one(
  ranking: np.ndarray,
  inliers_of: Callable[[int], int],
  top_k: int = geometric_verification.DEFAULT_TOP_K,
  min_inliers: int = 0,
  junk: Sequence[int] | set | None = None,
) -> tuple[np.ndarray, dict[int, int]]:
  """Re-sorts the first `top_k` non-junk images of one ranking by inliers.

  Args:
    ranking: int [K] database indices, best first.
    inliers_of: database index -> inlier count (called once per verified image).
    top_k: images verified.
    min_inliers: counts below this are treated as 0 (not verified).
    junk: database indices that neither use up a slot nor get verified.

  Returns:
    (new ranking [K]: the verified images by (inliers desc, global rank), then
    the junk images met in the window, then the rest unchanged;
    {database index: inliers} of the verified images).
  """
  ranking = np.asarray(ranking)
  junk = set() if junk is None else set(int(j) for j in junk)
  window, skipped, end = [], [], 0
  while end < len(ranking) and len(window) < top_k:
    image = int(ranking[end])
    (skipped if image in junk else window).append(image)
    end += 1
  counts = {}
  for image in window:
    n = int(inliers_of(image))
    counts[image] = n if n >= min_inliers else 0
  order = sorted(range(len(window)), key=lambda i: (-counts[window[i]], i))
  head = [window[i] for i in order] + skipped
  return np.concatenate([np.asarray(head, dtype=ranking.dtype), ranking[end:]]), counts


def rerank(
  ranks: np.ndarray,
  query_features: Sequence[feature_io.LocalFeatures] | Callable[[int], feature_io.LocalFeatures],
  index_feature_loader: Callable[[int], feature_io.LocalFeatures],
  top_k: int = geometric_verification.DEFAULT_TOP_K,
  min_inliers: int = 0,
  junk: Sequence[Sequence[int]] | None = None,
  cache: dict | None = None,
  **verify_kwargs,
) -> tuple[np.ndarray, list[dict[int, int]]]:
  """Geometric re-ranking of every query's global ranking.

  Args:
    ranks: int [Q, K] global rankings (database indices, best first).
    query_features: per query LocalFeatures, a list or a function of the
      query index.
    index_feature_loader: database index -> LocalFeatures (cache it if
      loading is expensive), or None for an image without local features
      (it counts 0 inliers).
    top_k: images verified per query.
    min_inliers: inlier counts below this count as 0.
    junk: optional per-query junk indices (see the module doc).
    cache: optional {(query, database index): inliers} reused and filled,
      e.g. across protocols.
    **verify_kwargs: `geometric_verification.count_inliers` options (distance_threshold, ratio,
      model, residual_threshold, max_trials, seed, max_scale_change,
      max_anisotropy).

  Returns:
    (re-ranked int [Q, K], per query {database index: inliers}).
  """
  ranks = np.asarray(ranks)
  cache = {} if cache is None else cache
  get_query = query_features if callable(query_features) else query_features.__getitem__
  out = np.empty_like(ranks)
  all_counts = []
  for q in range(ranks.shape[0]):
    query = None

    def inliers_of(image, q=q):
      nonlocal query
      key = (q, image)
      if key not in cache:
        index = index_feature_loader(image)
        if index is None:
          cache[key] = 0
        else:
          if query is None:
            query = get_query(q)
          cache[key] = geometric_verification.count_inliers(query, index, **verify_kwargs)
      return cache[key]

    out[q], counts = rerank_one(
      ranks[q], inliers_of, top_k, min_inliers, None if junk is None else junk[q]
    )
    all_counts.append(counts)
  return out, all_counts


def local_features_loader(
  features_dir: str, names: Sequence[str], suffix: str = LOCAL_SUFFIX, cache_size: int = 4096
) -> Callable[[int], feature_io.LocalFeatures]:
  """index -> LocalFeatures of `<features_dir>/<names[index]><suffix>`, LRU-cached.

  A missing file raises FileNotFoundError naming it, a corrupt one IOError and
  one with NaN or inf locations, scales or descriptors ValueError (named).
  """

  @functools.lru_cache(maxsize=cache_size)
  def load(index: int) -> feature_io.LocalFeatures:
    path = os.path.join(features_dir, names[index] + suffix)
    features = feature_io.read_from_file(path)
    for field in ("locations", "scales", "descriptors"):
      values = getattr(features, field)
      if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise ValueError(f"{path}: non-finite local feature {field} (NaN or inf)")
    return features

  return load


def rerank_protocols(
  ranks: np.ndarray,
  gt: ground_truth.RevisitedGroundTruth,
  query_loader: Callable[[int], feature_io.LocalFeatures],
  index_loader: Callable[[int], feature_io.LocalFeatures | None],
  config: geometric_verification.GeometricVerificationConfig | None = None,
  ranks_out: dict[str, np.ndarray] | None = None,
) -> dict[str, metrics.MapResult]:
  """Revisited-protocol results of the global `ranks` re-ranked per protocol (module doc).

  Args:
    ranks: int [Q, K] global rankings (database indices, best first).
    gt: the ground truth (queries and the first database indices are its images).
    query_loader: query index -> LocalFeatures.
    index_loader: database index -> LocalFeatures, or None for an image
      without local features (a distractor): 0 inliers.
    config: the verification settings (default GeometricVerificationConfig()).
    ranks_out: if given, filled with {protocol: re-ranked int [Q, K]}.

  Returns:
    {protocol: MapResult} after re-ranking.
  """
  config = config or geometric_verification.GeometricVerificationConfig()
  cache = {}
  after = {}
  start = time.time()
  for protocol in ground_truth.PROTOCOLS:
    protocol_gnd = ground_truth.protocol_ground_truth(gt, protocol)
    junk = [entry["junk"] for entry in protocol_gnd]
    new_ranks, _ = rerank(
      ranks,
      query_loader,
      index_loader,
      config.top_k,
      config.min_inliers,
      junk=junk,
      cache=cache,
      **config.verify_kwargs(),
    )
    after[protocol] = metrics.compute_map(new_ranks, protocol_gnd, metrics.DEFAULT_KAPPAS)
    if ranks_out is not None:
      ranks_out[protocol] = new_ranks
  elapsed = time.time() - start
  logging.info(
    "verified %d (query, image) pairs in %.1fs (%.3fs per query)",
    len(cache),
    elapsed,
    elapsed / max(1, len(ranks)),
  )
  return after
