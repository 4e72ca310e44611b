"""The visual-word codebook of VLAD / ASMK / ASMK*: k-means with faiss, saved as DELF reads it.

    descriptors = codebook.sample_descriptors(paths, max_descriptors=500_000, seed=0)
    centroids = codebook.train_kmeans(descriptors, codebook_size=1024, iterations=20)
    codebook.save_codebook(output_dir, centroids, {"codebook_size": 1024, ...})
    centroids = codebook.load_codebook(path, codebook_size=1024, feature_dimensionality=128)

DELF trains its codebook with tf.compat.v1.estimator KMeans (gone in TF >=
2.16); here faiss.Kmeans does it on every supported stack. What is written in
`output_dir` (each file atomically):

* `codebook_tfckpt/codebook` (a TF checkpoint prefix): the [K, D] float32
  centroids as the object-based checkpoint of `tf.train.Checkpoint(codebook=
  tf.Variable(..., name="clusters"))`, which is exactly what DELF's
  feature_aggregation_extractor restores (key
  `codebook/.ATTRIBUTES/VARIABLE_VALUE`); the AggregationConfig's
  codebook_path names this prefix, as DELF's configs do;
* `codebook.npy`: the same centroids (read without TensorFlow);
* `codebook_config.json`: the settings it was trained with and its statistics.

`load_codebook` reads the .npy, the checkpoint above, a folder holding
either, or a TF1 checkpoint whose centroids variable is DELF's KMeans
`clusters`.
"""

import json
import os
import time

import numpy as np
from absl import logging

from dolg_tf.io import feature_io
from dolg_tf.utils import files as file_utils
from dolg_tf.utils import progress as progress_lib

CHECKPOINT_DIR = "codebook_tfckpt"
CHECKPOINT_NAME = "codebook"
NPY_FILE = "codebook.npy"
CONFIG_FILE = "codebook_config.json"
# The checkpoint key of tf.train.Checkpoint(codebook=variable) (DELF's restore).
CHECKPOINT_KEY = "codebook/.ATTRIBUTES/VARIABLE_VALUE"
# DELF's tf.compat.v1 KMeans cluster-centres variable (older DELF checkpoints).
LEGACY_CHECKPOINT_KEY = "clusters"
VARIABLE_NAME = "clusters"


def read_image_names(path: str) -> list[str]:
  """Image names from a UTF-8 list file, one per line (blank lines and `#` comments skipped).

  Raises:
    FileNotFoundError / OSError: naming `path`; ValueError if it is not UTF-8.
  """
  data = file_utils.read_bytes(path)
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: image list is not UTF-8 text ({e})") from e
  lines = (line.strip() for line in text.splitlines())
  return [line for line in lines if line and not line.startswith("#")]


def read_local_descriptors(path: str) -> np.ndarray:
  """The float32 [N, D] descriptors of a DelfFeatures file (.delf / .delg_local).

  Raises:
    OSError: naming `path`, if it is missing, corrupt, or holds binarised
      (integer) descriptors, which cannot be clustered or aggregated.
  """
  descriptors = feature_io.read_from_file(path).descriptors
  if descriptors.dtype.kind != "f":
    raise OSError(
      f"{path}: binarised local descriptors ({descriptors.dtype}); "
      "aggregation needs float descriptors (extract without binarisation)"
    )
  if descriptors.ndim != 2:
    descriptors = descriptors.reshape(len(descriptors), -1)
  return np.ascontiguousarray(descriptors, dtype=np.float32)


def sample_descriptors(
  paths, max_descriptors: int, seed: int = 0, read=read_local_descriptors, log_interval=30.0
):
  """A uniform random sample of at most `max_descriptors` rows over all files of `paths`.

  Bottom-k sampling: every descriptor gets a random key (from `seed`, in file
  order) and the `max_descriptors` smallest keys are kept, so at most
  `max_descriptors` rows plus one file's rows are in memory at any time and
  the sample is the same for the same files, order and seed.

  Args:
    paths: the local feature files.
    max_descriptors: the sample size bound (> 0).
    seed: the random seed.
    read: path -> float32 [N, D] (read_local_descriptors).
    log_interval: seconds between progress lines.

  Returns:
    (sample float32 [M, D], stats dict: files, files_failed (list of
    (path, reason)), descriptors_seen, descriptors_kept).

  Raises:
    ValueError: if files disagree on D, or no descriptor was found.
  """
  paths = list(paths)
  rng = np.random.default_rng(seed)
  keys = np.zeros([0], np.float64)
  rows = None
  failed, seen = [], 0
  progress = progress_lib.Progress(len(paths), verb="read", unit="files", interval=log_interval)
  for i, path in enumerate(paths):
    try:
      block = read(path)
    except (OSError, ValueError) as e:
      failed.append((path, str(e)))
      logging.warning("skipped %s", e)
      continue
    finally:
      progress.update(i + 1, failed=len(failed))
    if rows is None:
      rows = np.zeros([0, block.shape[1]], np.float32)
    if block.shape[1] != rows.shape[1]:
      raise ValueError(
        f"{path}: descriptors of dimension {block.shape[1]}, earlier files had {rows.shape[1]}"
      )
    seen += len(block)
    keys = np.concatenate([keys, rng.random(len(block))])
    rows = np.concatenate([rows, block])
    if len(keys) > max_descriptors:
      keep = np.sort(np.argpartition(keys, max_descriptors - 1)[:max_descriptors])
      keys, rows = keys[keep], rows[keep]
  progress.update(len(paths), failed=len(failed), force=True, note=f"{len(keys)} descriptors kept")
  if rows is None or not len(rows):
    raise ValueError(f"no local descriptors found in {len(paths)} files ({len(failed)} unreadable)")
  stats = {
    "files": len(paths),
    "files_failed": failed,
    "descriptors_seen": seen,
    "descriptors_kept": len(rows),
  }
  return rows, stats


def train_kmeans(
  descriptors: np.ndarray,
  codebook_size: int,
  iterations: int = 20,
  seed: int = 0,
  verbose=False,
  redo: int = 1,
):
  """K-means centroids of `descriptors` with faiss (L2, Lloyd iterations).

  Args:
    descriptors: float32 [N, D], N >= codebook_size.
    codebook_size: K.
    iterations: k-means iterations.
    seed: faiss's seed (same data and seed -> same centroids on one machine).
    verbose: print faiss's per-iteration lines.
    redo: runs from different random starts; the one with the lowest
      objective is kept.

  Returns:
    (centroids float32 [K, D], objective: the final sum of squared distances).

  Raises:
    ValueError: if there are fewer descriptors than visual words.
  """
  import logging as std_logging  # noqa: PLC0415

  std_logging.getLogger("faiss.loader").setLevel(std_logging.WARNING)  # its INFO lines
  import faiss  # noqa: PLC0415 (only the training command needs it)

  descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
  if len(descriptors) < codebook_size:
    raise ValueError(
      f"{len(descriptors)} descriptors for {codebook_size} visual words: "
      "need at least one descriptor per word"
    )
  kmeans = faiss.Kmeans(
    descriptors.shape[1],
    int(codebook_size),
    niter=int(iterations),
    seed=int(seed),
    verbose=verbose,
    nredo=int(redo),
    max_points_per_centroid=max(256, -(-len(descriptors) // codebook_size)),
  )
  kmeans.train(descriptors)
  objective = float(kmeans.obj[-1]) if len(kmeans.obj) else float("nan")
  return np.ascontiguousarray(kmeans.centroids, dtype=np.float32), objective


def write_checkpoint(prefix: str, centroids: np.ndarray) -> None:
  """Writes `centroids` as DELF restores its codebook (module doc): `prefix`.index / .data-*."""
  import tensorflow as tf  # noqa: PLC0415 (not needed to read the .npy)

  variable = tf.Variable(np.asarray(centroids, np.float32), name=VARIABLE_NAME)
  tf.train.Checkpoint(codebook=variable).write(prefix)


def save_codebook(output_dir: str, centroids: np.ndarray, config: dict) -> dict:
  """Writes the checkpoint, the .npy and the json of `centroids` (module doc), atomically.

  Returns:
    {"checkpoint": prefix, "npy": path, "config": path}.

  Raises:
    OSError: naming the file that cannot be written.
  """
  os.makedirs(output_dir, exist_ok=True)
  centroids = np.ascontiguousarray(centroids, np.float32)
  checkpoint_dir = os.path.join(output_dir, CHECKPOINT_DIR)
  file_utils.atomic_write_dir(
    checkpoint_dir, lambda tmp: write_checkpoint(os.path.join(tmp, CHECKPOINT_NAME), centroids)
  )
  npy_path = os.path.join(output_dir, NPY_FILE)
  with file_utils.atomic_open(npy_path, "wb") as f:
    np.save(f, centroids, allow_pickle=False)
  config = dict(config)
  config.update(
    codebook_size=int(centroids.shape[0]),
    feature_dimensionality=int(centroids.shape[1]),
    written=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
  )
  config_path = os.path.join(output_dir, CONFIG_FILE)
  file_utils.atomic_write_text(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
  return {
    "checkpoint": os.path.join(checkpoint_dir, CHECKPOINT_NAME),
    "npy": npy_path,
    "config": config_path,
  }


def _read_checkpoint(prefix: str) -> np.ndarray:
  import tensorflow as tf  # noqa: PLC0415

  try:
    reader = tf.train.load_checkpoint(prefix)
  except (ValueError, tf.errors.OpError) as e:
    raise ValueError(f"{prefix}: not a readable TF checkpoint ({' '.join(str(e).split())})") from e
  names = reader.get_variable_to_shape_map()
  for key in (CHECKPOINT_KEY, LEGACY_CHECKPOINT_KEY):
    if key in names:
      return reader.get_tensor(key)
  raise ValueError(
    f"{prefix}: checkpoint has no codebook variable ({CHECKPOINT_KEY} or "
    f"{LEGACY_CHECKPOINT_KEY}); it holds {sorted(names)[:5]}"
  )


def _read_any(path: str) -> np.ndarray:
  if os.path.isdir(path):
    if os.path.isfile(os.path.join(path, NPY_FILE)):
      return _read_any(os.path.join(path, NPY_FILE))
    prefix = os.path.join(path, CHECKPOINT_DIR, CHECKPOINT_NAME)
    if os.path.exists(prefix + ".index"):
      return _read_checkpoint(prefix)
    import tensorflow as tf  # noqa: PLC0415

    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise ValueError(f"{path}: folder holds no {NPY_FILE} and no TF checkpoint")
    return _read_checkpoint(latest)
  if path.endswith(".npy"):
    try:
      with open(path, "rb") as f:
        return np.load(f, allow_pickle=False)
    except FileNotFoundError:
      raise
    except (OSError, ValueError, EOFError) as e:
      raise ValueError(f"{path}: not a readable .npy codebook ({e})") from e
  if not os.path.exists(path + ".index") and not os.path.exists(path):
    raise FileNotFoundError(f"{path}: codebook not found (no such file or checkpoint prefix)")
  return _read_checkpoint(path)


def load_codebook(path: str, codebook_size=None, feature_dimensionality=None) -> np.ndarray:
  """Reads a codebook (.npy, checkpoint prefix, or folder: module doc) as float32 [K, D].

  Args:
    path: where it is.
    codebook_size / feature_dimensionality: the K / D it must have (e.g. the
      AggregationConfig's), or None not to check.

  Raises:
    FileNotFoundError: naming `path`, if nothing is there.
    ValueError: one line naming `path`: unreadable, not [K, D], K or D not
      the expected ones, or non-finite values.
  """
  centroids = _read_any(path)
  if centroids.ndim != 2 or centroids.dtype.kind != "f":
    raise ValueError(
      f"{path}: codebook must be a float [K, D] matrix, got {centroids.dtype} "
      f"{list(centroids.shape)}"
    )
  for name, want, got in (
    ("codebook_size", codebook_size, centroids.shape[0]),
    ("feature_dimensionality", feature_dimensionality, centroids.shape[1]),
  ):
    if want is not None and int(want) != got:
      raise ValueError(
        f"{path}: codebook is {list(centroids.shape)}, but the config's {name} is {want}"
      )
  if not np.isfinite(centroids).all():
    raise ValueError(f"{path}: codebook has non-finite values")
  return np.ascontiguousarray(centroids, np.float32)
