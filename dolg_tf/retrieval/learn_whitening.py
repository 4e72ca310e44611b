r"""Learns PCA / whitening of global descriptors and writes DolgConfig's pca_parameters files.

  dolg-learn-whitening --descriptors=features/train [--suffix=.dolg_global] \
      (--labels_csv=train.csv | --gnd=gnd_x.pkl | --pairs_csv=pairs.csv) \
      [--method=learned|pca_whitening|pca] [--dim=128] [--max_pairs=100000] \
      [--file_format=npy|datum] --output_dir=whitening

Descriptors: an extraction output folder (per-image files or Beam / bulk .npz
shards) or a glob, read with io/descriptor_reading.py. Matching pairs (for
--method=learned, the default):
  --labels_csv   GLDv2's train.csv (`id,landmark_id`, other columns ignored) or
                 train_clean.csv (`landmark_id,images`) layout: pairs of
                 images with the same label; all of them, or --max_pairs drawn
                 uniformly without replacement (--seed) when there are more.
  --gnd          a Revisited Oxford-style gnd (.pkl read with the restricted
                 loader, or .mat): each query with its easy and hard images.
                 Use another dataset's gnd than the one you evaluate on.
  --pairs_csv    `query_id,positive_id` rows.
Ids without a descriptor are skipped and counted.

Methods (dolg_tf/retrieval/whitening.py): `learned` is Radenovic et al.'s
learned whitening from matching pairs (DELF's whiten.py), `pca_whitening`
and `pca` need no pairs. Writes to --output_dir: mean / projection
(/ variances) as .npy or DELF DatumProto files, `global_config.pbtxt` (the
DolgConfig section to paste), `delf_global_config.pbtxt` (DELF's) and
`whitening_info.json`, each atomically; prints the DolgConfig section.

A rank-deficient pair covariance (fewer independent pair differences than the
descriptor dimension) is refused unless --regularize (DELF's behaviour: a
growing value on its diagonal, which blows up the directions no pair spans).
"""

import csv
import dataclasses
import itertools
import json
import os
import time

import numpy as np
from absl import flags

from dolg_tf.data import gldv2_files, ground_truth
from dolg_tf.io import descriptor_files, descriptor_reading
from dolg_tf.retrieval import whitening
from dolg_tf.utils import cli, untrusted
from dolg_tf.utils import files as file_utils

FLAGS = flags.FLAGS
SOURCES = ("labels_csv", "gnd", "pairs_csv")


@dataclasses.dataclass(frozen=True)
class LearnWhiteningConfig:
  """Settings of one run (module doc).

  Attributes:
    method: "learned", "pca_whitening" or "pca".
    dim: output dimension (pca_dim of the config); 0 = the descriptors' D.
    max_pairs: at most this many matching pairs (labels CSV: sampled).
    seed: of the pair sampling.
    file_format: "npy" or "datum".
    suffix: per-image descriptor file suffix.
    regularize: accept a rank-deficient pair covariance (DELF's regularisation).
  """

  method: str = "learned"
  dim: int = 0
  max_pairs: int = 100_000
  seed: int = 0
  file_format: str = "npy"
  suffix: str = descriptor_files.DEFAULT_SUFFIX
  regularize: bool = False

  def __post_init__(self):
    if self.method not in whitening.METHODS:
      raise ValueError(f"method: must be one of {', '.join(whitening.METHODS)}, got {self.method}")
    if self.dim < 0:
      raise ValueError(f"dim: must be >= 0, got {self.dim}")
    if self.max_pairs < 1:
      raise ValueError(f"max_pairs: must be positive, got {self.max_pairs}")
    if self.file_format not in whitening.FORMATS:
      raise ValueError(f"file_format: must be one of {whitening.FORMATS}, got {self.file_format}")


def _read_csv(path: str, columns: tuple[str, str]) -> list[tuple[str, str]]:
  """The two named columns of a CSV with a header (ValueError naming the file)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: file not found")
  with open(path, "rb") as f:
    reader = csv.DictReader(untrusted.utf8_lines(f, path))
    missing = [c for c in columns if c not in (reader.fieldnames or ())]
    if missing:
      raise ValueError(f"{path}: no column {missing[0]} (header must name {', '.join(columns)})")
    return [(row[columns[0]], row[columns[1]]) for row in untrusted.csv_rows(reader, path)]


def _triangle_pairs(indices: np.ndarray) -> np.ndarray:
  """All (i, j), i < j, of `indices` as [n(n-1)/2, 2]."""
  first, second = np.triu_indices(indices.size, k=1)
  return np.stack([indices[first], indices[second]], axis=1)


def _decode_triangle(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Pair number r of (i, j), 0 <= i < j, numbered j(j-1)/2 + i."""
  j = np.floor((1 + np.sqrt(1 + 8 * r.astype(np.float64))) / 2).astype(np.int64)
  j -= (j * (j - 1) // 2) > r  # float rounding
  j += ((j + 1) * j // 2) <= r
  return r - j * (j - 1) // 2, j


def label_pairs(labels: np.ndarray, max_pairs: int, seed: int = 0) -> tuple[np.ndarray, int]:
  """Same-label pairs of rows: all, or max_pairs of them drawn uniformly without replacement.

  Args:
    labels: [N] label of each row (any comparable values).
    max_pairs: bound.
    seed: sampling seed.

  Returns:
    (int64 [M, 2] row pairs (i, j), i < j in each group, total same-label pairs).
  """
  _, inverse = np.unique(np.asarray(labels), return_inverse=True)
  groups = [
    g
    for g in np.split(np.argsort(inverse, kind="stable"), np.cumsum(np.bincount(inverse))[:-1])
    if g.size > 1
  ]
  sizes = np.array([g.size * (g.size - 1) // 2 for g in groups], np.int64)
  total = int(sizes.sum())
  if total <= max_pairs:
    pairs = [_triangle_pairs(g) for g in groups]
    return (np.concatenate(pairs) if pairs else np.zeros([0, 2], np.int64)), total
  chosen = np.sort(np.random.default_rng(seed).choice(total, size=max_pairs, replace=False))
  starts = np.concatenate([[0], np.cumsum(sizes)])
  group = np.searchsorted(starts, chosen, side="right") - 1
  i, j = _decode_triangle(chosen - starts[group])
  members = [groups[g] for g in group]
  rows = np.array([[m[a], m[b]] for m, a, b in zip(members, i, j)], np.int64)
  return rows, total


def read_labels(path: str) -> dict[str, int]:
  """{image id: landmark id} of GLDv2's train.csv (id,...,landmark_id) or train_clean.csv layout.

  train_clean.csv (landmark_id,images: space-separated ids) is recognised by
  its header; duplicate ids keep their first label.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: file not found")
  with open(path, "rb") as f:
    header = next(csv.reader(untrusted.utf8_lines(itertools.islice(f, 1), path)), [])
  clean = "images" in header and "id" not in header
  read = gldv2_files.read_train_clean_csv if clean else gldv2_files.read_train_csv
  return {entry.image_id: entry.landmark_id for entry in read(path)}


def pairs_from_labels(path: str, ids: list[str], max_pairs: int, seed: int):
  """(pairs [M, 2], message) from an `id,landmark_id` CSV."""
  label_of = read_labels(path)
  rows = [r for r, image_id in enumerate(ids) if image_id in label_of]
  labels = np.array([label_of[ids[r]] for r in rows], dtype=np.int64)
  local, total = label_pairs(labels, max_pairs, seed)
  pairs = np.asarray(rows, np.int64)[local] if local.size else np.zeros([0, 2], np.int64)
  unknown = len(label_of) - len(rows)
  kept = "all" if total <= max_pairs else f"{len(pairs)} drawn"
  message = (
    f"{path}: {len(rows)} labelled images with descriptors ({unknown} labelled ids without "
    f"one, {len(ids) - len(rows)} descriptors without a label), {total} same-label pairs, "
    f"{kept} used"
  )
  return pairs, message


def _pairs_by_id(named: list[tuple[str, str]], ids: list[str], path: str, max_pairs: int):
  row_of = {image_id: r for r, image_id in enumerate(ids)}
  known = [(row_of[a], row_of[b]) for a, b in named if a in row_of and b in row_of and a != b]
  pairs = np.array(known[:max_pairs], np.int64).reshape([-1, 2])
  message = (
    f"{path}: {len(named)} pairs, {len(named) - len(known)} skipped (an id without a descriptor "
    f"or a pair of one image), {len(pairs)} used"
  )
  return pairs, message


def pairs_from_gnd(path: str, ids: list[str], max_pairs: int):
  """(pairs, message): every query of a gnd with each of its easy and hard images."""
  gnd = ground_truth.load_ground_truth(path)
  named = [
    (query, gnd.imlist[int(j)])
    for query, entry in zip(gnd.qimlist, gnd.gnd)
    for kind in ("easy", "hard")
    for j in entry[kind]
  ]
  return _pairs_by_id(named, ids, path, max_pairs)


def pairs_from_csv(path: str, ids: list[str], max_pairs: int):
  """(pairs, message) from a `query_id,positive_id` CSV."""
  return _pairs_by_id(_read_csv(path, ("query_id", "positive_id")), ids, path, max_pairs)


def count_groups(pairs: np.ndarray) -> int:
  """Connected groups of images the pairs link (landmarks, for same-label pairs)."""
  parent = {}

  def root(i):
    while parent.setdefault(i, i) != i:
      parent[i] = parent[parent[i]]
      i = parent[i]
    return i

  for a, b in pairs.tolist():
    parent[root(a)] = root(b)
  return len({root(i) for i in parent})


def check_pairs(pairs: np.ndarray, descriptors: np.ndarray, regularize: bool) -> None:
  """Refuses no pairs or a rank-deficient pair covariance (ValueError saying what to do)."""
  dim = descriptors.shape[1]
  if len(pairs) == 0:
    raise ValueError("no matching pairs: learned whitening needs pairs of images of one landmark")
  covariance = whitening.pair_covariance(descriptors, pairs[:, 0], pairs[:, 1])
  found = whitening.rank(covariance)
  if found < dim and not regularize:
    raise ValueError(
      f"too few matching pairs: the covariance of {len(pairs)} pair differences has rank "
      f"{found} < D = {dim}; add labelled images (at least D independent pairs), raise "
      "--max_pairs, use --method=pca_whitening, or pass --regularize (DELF's diagonal "
      "regularisation, which inflates the directions no pair spans)"
    )


def learn_from_files(config: LearnWhiteningConfig, descriptors_source: str, source: dict):
  """Reads, finds pairs and learns; returns (LearnedProjection, info dict)."""
  start = time.monotonic()
  print(f"reading descriptors from {descriptors_source} ...", flush=True)
  ids, matrix = descriptor_reading.read_descriptors(descriptors_source, suffix=config.suffix)
  if not ids:
    raise ValueError(f"{descriptors_source}: no descriptors")
  dim = matrix.shape[1]
  print(f"read {len(ids)} descriptors ({dim}-D) from {descriptors_source}", flush=True)
  if config.dim > dim:
    raise ValueError(f"--dim={config.dim} exceeds the descriptors' dimension {dim}")
  info = {"method": config.method, "input_dim": dim, "num_descriptors": len(ids), "pairs": 0}
  pairs = None
  if config.method == "learned":
    kind, path = next(iter(source.items()))
    if kind == "labels_csv":
      pairs, message = pairs_from_labels(path, ids, config.max_pairs, config.seed)
    elif kind == "gnd":
      pairs, message = pairs_from_gnd(path, ids, config.max_pairs)
    else:
      pairs, message = pairs_from_csv(path, ids, config.max_pairs)
    print(message, flush=True)
    check_pairs(pairs, matrix, config.regularize)
    info.update(pairs=len(pairs), landmarks=count_groups(pairs))
    if info["landmarks"] <= (config.dim or dim):
      print(
        f"note: the pairs link {info['landmarks']} groups of images (landmarks), not more than "
        f"the {config.dim or dim} output dimensions: learned whitening tuned on few landmarks "
        "may not carry over to others (docs/WHITENING.md)",
        flush=True,
      )
  elif len(ids) <= dim:
    raise ValueError(
      f"{descriptors_source}: {len(ids)} descriptors of dimension {dim}: PCA needs more "
      f"descriptors than dimensions ({dim + 1} at least, many more for a stable estimate)"
    )
  learned = whitening.learn(
    config.method, matrix, *((pairs[:, 0], pairs[:, 1]) if pairs is not None else ())
  )
  info.update(
    regularization=learned.regularization,
    top_eigenvalues=[float(v) for v in learned.eigenvalues[:8]],
    seconds=round(time.monotonic() - start, 3),
  )
  print(f"learned {config.method} in {info['seconds']:.1f} s", flush=True)
  cut = whitening.degenerate_cut(learned.eigenvalues, config.dim or dim)
  if cut:
    info["degenerate_eigenvalues"] = [cut[0] + 1, cut[1] + 1]
    print(
      f"note: eigenvalues {cut[0] + 1} to {cut[1] + 1} are equal, and --dim={config.dim} keeps "
      "an arbitrary part of their directions (another run may keep another); --dim="
      f"{cut[0]} keeps none of them, --dim={cut[1] + 1} all",
      flush=True,
    )
  return learned, info


def write_outputs(learned, info: dict, config: LearnWhiteningConfig, output_dir: str) -> str:
  """Writes the files, both config sections and whitening_info.json; returns the DolgConfig one."""
  os.makedirs(output_dir, exist_ok=True)
  files = whitening.write_parameter_files(learned, output_dir, config.file_format)
  pca_dim = config.dim or learned.dim
  snippet = whitening.config_snippet(files, pca_dim)
  file_utils.atomic_write_text(os.path.join(output_dir, "global_config.pbtxt"), snippet)
  file_utils.atomic_write_text(
    os.path.join(output_dir, "delf_global_config.pbtxt"),
    whitening.config_snippet(files, pca_dim, delf=True),
  )
  info = dict(info, output_dim=pca_dim, files=dataclasses.asdict(files))
  file_utils.atomic_write_text(
    os.path.join(output_dir, "whitening_info.json"), json.dumps(info, indent=2) + "\n"
  )
  return snippet


def define_flags(flag_values: flags.FlagValues = FLAGS) -> dict[str, str]:
  """Defines the command's flags (a second call is a no-op); returns the config's flags."""
  if "descriptors" not in flag_values:
    for name, help_text in (
      ("descriptors", "Descriptors: an extraction output folder or a glob (required)."),
      ("labels_csv", "Pairs source: GLDv2 train.csv / train_clean.csv layout (same-label pairs)."),
      ("gnd", "Pairs source: a gnd .pkl/.mat (each query with its easy and hard images)."),
      ("pairs_csv", "Pairs source: a query_id,positive_id CSV."),
      ("output_dir", "Where the files go (required)."),
    ):
      flags.DEFINE_string(name, None, help_text, flag_values=flag_values)
  return cli.define_config_flags(LearnWhiteningConfig(), flag_values=flag_values)


def main(argv):
  del argv  # unused
  mapping = define_flags(FLAGS)
  try:
    config = LearnWhiteningConfig(**cli.given_overrides(mapping, FLAGS))
  except ValueError as e:
    raise cli.UserError(f"--{e}") from None
  for name in ("descriptors", "output_dir"):
    if not FLAGS[name].value:
      raise cli.UserError(f"--{name} is required")
  source = {name: FLAGS[name].value for name in SOURCES if FLAGS[name].value}
  if len(source) > 1:
    raise cli.UserError(f"give one pairs source, not --{' and --'.join(source)}")
  if config.method == "learned" and not source:
    raise cli.UserError(
      "--method=learned needs matching pairs: --labels_csv, --gnd or --pairs_csv "
      "(or use --method=pca_whitening)"
    )
  try:
    learned, info = learn_from_files(config, FLAGS.descriptors, source)
    info["pairs_source"] = source
    snippet = write_outputs(learned, info, config, FLAGS.output_dir)
  except (OSError, ValueError) as e:
    raise cli.UserError(cli.error_message(e)) from None
  print(f"wrote {config.method} files to {os.path.abspath(FLAGS.output_dir)}")
  print("DolgConfig section (merge into the global_config of e.g. protos/dolg.pbtxt):")
  print(snippet, end="")


def run():
  """The `dolg-learn-whitening` command."""
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
