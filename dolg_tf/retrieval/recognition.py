"""Instance-level recognition (GLDv2): k-nearest-neighbour voting over global descriptors.

    result = recognition.recognize(inputs, RecognitionConfig(k=5, voting="sum"))
    result.predictions["test_id"]  # Prediction(landmark_id, score) or None

Rule, per test image:

1. Search. Queries and database descriptors are L2-normalised; the database
   images most similar by inner product (cosine similarity) are found by exact
   search (exact_search.py) or in a saved index (`index_dir`,
   indexes.load_index: its rows must be the database descriptors in the order
   descriptor_reading.read_descriptors gives them).
2. Optional local re-ranking (DELG, `use_geometric_verification`): the first
   `geometric_verification.top_k` neighbours are verified against the test
   image (local feature matching + RANSAC, rerank.rerank and
   geometric_verification.py) and every neighbour's score becomes
   `inliers + (1 + cosine) / 2` (inliers 0 when not verified or under
   `min_inliers`). Since (1 + cosine) / 2 lies in [0, 1], sorting by this
   score is DELF's re-ranking order (by inliers, then by global score), and
   the inlier count becomes the voting weight, as in DELF's re-ranking,
   where the inlier count is the image's new similarity.
3. Voting among the best `k` neighbours (after re-ranking): each labelled
   neighbour gives its score to its landmark; `voting="sum"` adds them up,
   `"max"` keeps the largest. The predicted landmark is the one with the
   highest total (a tie goes to the landmark met first in the ranking); its
   total is the confidence. Database images without a label do not vote.
4. Non-landmark handling: with `min_score` set, a test image whose confidence
   is below it gets no prediction (an empty row in the submission), as for a
   non-landmark image. Units: cosine similarity (summed over up to k
   neighbours with "sum"), or inliers + (1 + cosine) / 2 with re-ranking.
   The dropped predictions are the last of GAP's sorted list, so a threshold
   never raises GAP; it is for users who prefer no answer to an unsure one.
"""

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from absl import logging

from dolg_tf.data import gldv2_files
from dolg_tf.io import descriptor_files, descriptor_reading, feature_io
from dolg_tf.retrieval import exact_search, indexes, rerank
from dolg_tf.retrieval import geometric_verification as verification_lib
from dolg_tf.retrieval import recognition_metrics as rm
from dolg_tf.utils import progress as progress_lib

VOTING = ("sum", "max")
# Neighbours kept for the retrieval mAP@100 of a scored run.
MAP_DEPTH = 100


@dataclasses.dataclass(frozen=True)
class RecognitionConfig:
  """The settings of one recognition run (module doc).

  Attributes:
    k: neighbours that vote.
    voting: "sum" or "max" of the neighbours' scores per landmark.
    min_score: no landmark predicted under this confidence (None: always one).
    suffix: per-image global descriptor file suffix.
    local_suffix: local feature file suffix (re-ranking).
    use_geometric_verification: re-rank the neighbours with local features.
    geometric_verification: its settings (top_k = neighbours verified).
  """

  k: int = 5
  voting: str = "sum"
  min_score: float | None = None
  suffix: str = descriptor_files.DEFAULT_SUFFIX
  local_suffix: str = rerank.LOCAL_SUFFIX
  use_geometric_verification: bool = False
  geometric_verification: verification_lib.GeometricVerificationConfig = dataclasses.field(
    default_factory=verification_lib.GeometricVerificationConfig
  )

  def __post_init__(self):
    if self.k < 1:
      raise ValueError(f"k: must be >= 1, got {self.k}")
    if self.voting not in VOTING:
      raise ValueError(f"voting: must be one of {VOTING}, got {self.voting!r}")


@dataclasses.dataclass(frozen=True)
class RecognitionInputs:
  """Where a run's files are.

  Attributes:
    database_descriptors: folder or shard glob (descriptor_reading).
    database_labels: train.csv (id,url,landmark_id), train_clean.csv
      (landmark_id,images) or any CSV with columns id,landmark_id.
    query_descriptors: folder or shard glob of the test images.
    index_dir: optional saved search index of the database descriptors.
    query_local_dir, database_local_dir: local features (re-ranking).
  """

  database_descriptors: str
  database_labels: str
  query_descriptors: str
  index_dir: str = ""
  query_local_dir: str = ""
  database_local_dir: str = ""


@dataclasses.dataclass
class RecognitionResult:
  """Predictions of every test image and the neighbour lists they came from."""

  query_ids: list[str]
  predictions: dict[str, rm.Prediction | None]
  neighbours: dict[str, list[str]]
  database_labels: dict[str, int]


def read_labels(path: str) -> dict[str, int]:
  """image id -> landmark id from train.csv, train_clean.csv or an id,landmark_id CSV.

  Raises:
    FileNotFoundError / ValueError: naming the file (and line).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: labels file not found")
  with open(path, "rb") as f:
    header = f.readline().decode("utf-8", "replace")
  columns = [c.strip().lstrip("\ufeff") for c in header.split(",")]
  if "images" in columns and "landmark_id" in columns:
    entries = gldv2_files.read_train_clean_csv(path)
  else:
    entries = gldv2_files.read_train_csv(path)
  return {e.image_id: e.landmark_id for e in entries}


def vote(
  neighbour_labels: Sequence[int | None], scores: Sequence[float], k: int, voting: str
) -> rm.Prediction | None:
  """The landmark the first k labelled-or-not neighbours vote for (module doc, step 3).

  Args:
    neighbour_labels: landmark of each ranked neighbour, None = unlabelled or padding.
    scores: their scores, same order (best first).
    k: neighbours that vote.
    voting: "sum" or "max".

  Returns:
    The Prediction, or None when no neighbour has a label.
  """
  totals: dict[int, float] = {}
  for label, score in zip(list(neighbour_labels)[:k], list(scores)[:k]):
    if label is None:
      continue
    score = float(score)
    if label not in totals:
      totals[label] = score
    elif voting == "sum":
      totals[label] += score
    else:
      totals[label] = max(totals[label], score)
  if not totals:
    return None
  best = max(totals, key=totals.__getitem__)  # the first of equal totals (dict order)
  return rm.Prediction(int(best), totals[best])


def _search(queries: np.ndarray, database: np.ndarray, index_dir: str, depth: int):
  if not index_dir:
    return exact_search.exact_search(queries, database, depth)
  index = indexes.load_index(index_dir)
  if index.size != database.shape[0]:
    raise ValueError(
      f"{index_dir}: index of {index.size} images, the database descriptors are "
      f"{database.shape[0]} (build it from the same descriptors, in their order)"
    )
  return index.search(queries, depth)


def rerank_scores(
  ids: np.ndarray,
  scores: np.ndarray,
  query_loader: Callable[[int], feature_io.LocalFeatures],
  index_loader: Callable[[int], feature_io.LocalFeatures | None],
  config: verification_lib.GeometricVerificationConfig,
) -> tuple[np.ndarray, np.ndarray]:
  """Neighbours re-sorted by `inliers + (1 + cosine) / 2` (module doc, step 2).

  Args:
    ids: int [Q, K] database rows (-1: padding), best first.
    scores: float [Q, K] cosine similarities.
    query_loader: query row -> LocalFeatures.
    index_loader: database row -> LocalFeatures, or None (0 inliers).
    config: verification settings; its top_k neighbours are verified.

  Returns:
    (ids, scores) [Q, K] in the new order, with the new scores.
  """
  progress = progress_lib.Progress(len(ids), verb="verified", unit="queries")
  out_ids, out_scores = np.empty_like(ids), np.empty(ids.shape, np.float64)
  for q in range(len(ids)):
    _, (counts,) = rerank.rerank(
      ids[q : q + 1],
      lambda _, q=q: query_loader(q),
      lambda row: None if row < 0 else index_loader(row),
      config.top_k,
      config.min_inliers,
      **config.verify_kwargs(),
    )
    inliers = np.array([counts.get(int(i), 0) for i in ids[q]], np.float64)
    combined = inliers + (1.0 + np.where(ids[q] < 0, -1.0, scores[q])) / 2.0
    order = np.argsort(-combined, kind="stable")
    out_ids[q], out_scores[q] = ids[q][order], combined[order]
    progress.update(q + 1, force=q + 1 == len(ids))
  return out_ids, out_scores


def _local_loaders(inputs: RecognitionInputs, config: RecognitionConfig, query_ids, db_ids):
  for name in ("query_local_dir", "database_local_dir"):
    if not getattr(inputs, name):
      raise ValueError(f"{name}: needed for geometric verification")
  query = rerank.local_features_loader(inputs.query_local_dir, query_ids, config.local_suffix)
  index = rerank.local_features_loader(inputs.database_local_dir, db_ids, config.local_suffix)
  return query, index


def recognize(
  inputs: RecognitionInputs, config: RecognitionConfig, map_depth: int = 0
) -> RecognitionResult:
  """Predicts a landmark for every test image (module doc).

  Args:
    inputs: the files.
    config: the settings.
    map_depth: neighbours kept per test image in the result (at least k; e.g.
      MAP_DEPTH for the retrieval mAP@100).

  Raises:
    FileNotFoundError / ValueError / IOError: a bad input, named.
  """
  labels = read_labels(inputs.database_labels)
  db_ids, database = _read(inputs.database_descriptors, config.suffix)
  query_ids, queries = _read(inputs.query_descriptors, config.suffix)
  unlabelled = sum(1 for i in db_ids if i not in labels)
  if unlabelled == len(db_ids):
    raise ValueError(f"{inputs.database_labels}: labels none of the {len(db_ids)} database images")
  if unlabelled:
    logging.warning(
      "%d of %d database images have no label: they do not vote", unlabelled, len(db_ids)
    )
  gv = config.geometric_verification
  depth = max(config.k, map_depth, gv.top_k if config.use_geometric_verification else 0)
  depth = min(depth, len(db_ids))
  logging.info(
    "searching %d test images in %d database images (top %d)", len(query_ids), len(db_ids), depth
  )
  ids, scores = _search(
    exact_search.normalized_matrix(queries, "queries"),
    exact_search.normalized_matrix(database, "database"),
    inputs.index_dir,
    depth,
  )
  if config.use_geometric_verification:
    ids, scores = rerank_scores(ids, scores, *_local_loaders(inputs, config, query_ids, db_ids), gv)
  row_labels = [labels.get(i) for i in db_ids]
  predictions, neighbours = {}, {}
  for q, query_id in enumerate(query_ids):
    neighbours[query_id] = [db_ids[i] for i in ids[q] if i >= 0]
    neighbour_labels = [row_labels[i] if i >= 0 else None for i in ids[q]]
    predictions[query_id] = _thresholded(
      vote(neighbour_labels, scores[q], config.k, config.voting), config.min_score
    )
  db_labels = {i: labels[i] for i in db_ids if i in labels}
  return RecognitionResult(query_ids, predictions, neighbours, db_labels)


def _read(source: str, suffix: str) -> tuple[list[str], np.ndarray]:
  ids, matrix = descriptor_reading.read_descriptors(source, None, suffix)
  if not ids:
    raise ValueError(f"{source}: no descriptors (*{suffix} files or .npz shards; see --suffix)")
  return ids, matrix


def _thresholded(prediction: rm.Prediction | None, min_score: float | None):
  """None when the confidence is under min_score (module doc, step 4)."""
  if prediction is None or min_score is None or prediction.score >= min_score:
    return prediction
  return None


def evaluate(result: RecognitionResult, solution: rm.Solution) -> dict[str, rm.RecognitionMetrics]:
  """{subset name: metrics} of a result against a solution (Public / Private, or All)."""
  ignored = set(solution.ignored)
  predictions = {i: p for i, p in result.predictions.items() if i not in ignored}
  return {
    name: rm.evaluate_subset(predictions, subset, result.neighbours, result.database_labels)
    for name, subset in solution.subsets().items()
  }


def missing_from_queries(result: RecognitionResult, solution: rm.Solution) -> list[str]:
  """Scored test ids of the solution without a query descriptor (they count as unpredicted)."""
  known = set(result.query_ids)
  return [i for s in solution.subsets().values() for i in s if i not in known]


def summary(metrics: Mapping[str, rm.RecognitionMetrics]) -> str:
  """One line per subset."""
  return "\n".join(m.format(name) for name, m in metrics.items())
