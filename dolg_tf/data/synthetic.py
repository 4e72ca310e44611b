r"""Synthetic landmarks as data: a training set (GLDv2 TFRecords) and a retrieval benchmark.

The scenes and their views are synthetic_scenes.py's. Everything is
deterministic given the seed: view `v` of class `c` depends only on
(seed, stream, c, v), with one random stream per use, so that the sets never
share views.

  # Training TFRecords (GLDv2 layout) + a Revisited Oxford-style benchmark:
  python -m dolg_tf.data.synthetic --output_dir=/tmp/synth --num_classes=20

writes `<output_dir>/tfrecords/{train,validation}-NNNNN-of-MMMMM` and
`<output_dir>/benchmark/{jpg/*.jpg, gnd_synthetic.pkl, labels.csv}`.
"""

import dataclasses
import io
import json
import os
import pickle
import time

import numpy as np
from absl import app, flags, logging

from dolg_tf.data import gldv2, image_codec, synthetic_scenes
from dolg_tf.utils import cli
from dolg_tf.utils import files as file_utils

GND_FILENAME = "gnd_synthetic.pkl"
INFO_FILENAME = "synthetic_info.json"


@dataclasses.dataclass(frozen=True)
class TrainingSetInfo:
  """What `write_training_set` wrote."""

  train_pattern: str
  validation_pattern: str
  num_classes: int
  num_train: int
  num_validation: int
  train_files: tuple[str, ...]
  validation_files: tuple[str, ...]


def _training_records(
  num_classes: int,
  views_per_class: int,
  image_size: int,
  seed: int,
  num_val: int,
  jpeg_quality: int,
) -> dict[str, list[bytes]]:
  """{split: serialized Examples}: the last `num_val` views of every class are validation."""
  records = {"train": [], "validation": []}
  for scene in synthetic_scenes.make_scenes(num_classes, seed):
    c = scene.class_id
    for v in range(views_per_class):
      image = synthetic_scenes.render_view(
        scene,
        synthetic_scenes.view_rng(seed, synthetic_scenes.TRAIN_STREAM, c, v),
        image_size,
        synthetic_scenes.TRAIN_VIEW,
      )
      image_id = f"synth_c{c:05d}_v{v:05d}"
      example = gldv2.make_example(
        image_id, image_codec.encode_jpeg(image, jpeg_quality), c, image_size, image_size
      )
      split = "validation" if v >= views_per_class - num_val else "train"
      records[split].append(example.SerializeToString(deterministic=True))
  return records


def _write_shuffled_shards(
  out_dir: str, records: dict[str, list[bytes]], num_shards: int, seed: int
) -> dict[str, tuple[str, ...]]:
  """Writes each split's records in a seeded random order; returns {split: shard paths}."""
  os.makedirs(out_dir, exist_ok=True)
  order_rng = np.random.default_rng([seed, synthetic_scenes.ORDER_STREAM])
  files = {}
  for split, serialized in records.items():
    with gldv2.ShardedRecordWriter(os.path.join(out_dir, split), num_shards) as writer:
      for i in order_rng.permutation(len(serialized)):
        writer.write(serialized[i])
    files[split] = tuple(writer.paths)
  return files


def write_training_set(
  out_dir: str,
  num_classes: int = 20,
  views_per_class: int = 30,
  image_size: int = 128,
  num_shards: int = 2,
  seed: int = 0,
  validation_fraction: float = 0.2,
  jpeg_quality: int = 90,
) -> TrainingSetInfo:
  """Writes train/validation TFRecords of synthetic landmarks in the GLDv2 layout.

  Class c has label c. The last round(validation_fraction * views_per_class)
  views of every class (at least one training view kept) go to validation.
  Records are in a seeded random order. Also writes `synthetic_info.json`
  (parameters and counts) last.

  Args:
    out_dir: output folder (created if needed).
    num_classes: number of classes.
    views_per_class: views per class (train + validation).
    image_size: side of the square images.
    num_shards: shards per split.
    seed: random seed.
    validation_fraction: share of each class's views in validation.
    jpeg_quality: JPEG quality.

  Returns:
    A TrainingSetInfo.
  """
  if views_per_class < 1:
    raise ValueError(f"views_per_class must be >= 1, got {views_per_class}")
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
  start = time.monotonic()
  num_val = min(int(round(validation_fraction * views_per_class)), views_per_class - 1)
  records = _training_records(num_classes, views_per_class, image_size, seed, num_val, jpeg_quality)
  files = _write_shuffled_shards(out_dir, records, num_shards, seed)
  info = TrainingSetInfo(
    train_pattern=gldv2.shard_pattern(os.path.join(out_dir, "train")),
    validation_pattern=gldv2.shard_pattern(os.path.join(out_dir, "validation")),
    num_classes=num_classes,
    num_train=len(records["train"]),
    num_validation=len(records["validation"]),
    train_files=files["train"],
    validation_files=files["validation"],
  )
  params = {
    "num_classes": num_classes,
    "views_per_class": views_per_class,
    "image_size": image_size,
    "num_shards": num_shards,
    "seed": seed,
    "validation_fraction": validation_fraction,
    "jpeg_quality": jpeg_quality,
  }
  payload = {"params": params, "info": dataclasses.asdict(info)}
  file_utils.atomic_write_text(os.path.join(out_dir, INFO_FILENAME), json.dumps(payload, indent=2))
  logging.info(
    "synthetic training set: %d classes, %d train + %d validation images in %.1fs -> %s",
    num_classes,
    info.num_train,
    info.num_validation,
    time.monotonic() - start,
    out_dir,
  )
  return info


def ensure_demo_data(
  data_dir: str,
  num_classes: int = 16,
  views_per_class: int = 48,
  seed: int = 0,
  image_size: int = 128,
  num_shards: int = 2,
) -> tuple[str, str, int]:
  """Writes a synthetic training set into `data_dir` unless the same one is there.

  Returns:
    (train file pattern, validation file pattern, number of classes).
  """
  info_path = os.path.join(data_dir, INFO_FILENAME)
  wanted = {
    "num_classes": num_classes,
    "views_per_class": views_per_class,
    "image_size": image_size,
    "num_shards": num_shards,
    "seed": seed,
  }
  if os.path.isfile(info_path):
    try:
      with open(info_path, encoding="utf-8") as f:
        payload = json.load(f)
      params, info = payload["params"], payload["info"]
      files = list(info["train_files"]) + list(info["validation_files"])
      if all(params.get(k) == v for k, v in wanted.items()) and all(map(os.path.isfile, files)):
        logging.info("reusing synthetic data in %s", data_dir)
        return info["train_pattern"], info["validation_pattern"], int(info["num_classes"])
    except (OSError, ValueError, KeyError, TypeError) as e:
      logging.warning("%s: unusable (%s); writing the data again", info_path, e)
  info = write_training_set(data_dir, **wanted)
  return info.train_pattern, info.validation_pattern, info.num_classes


@dataclasses.dataclass(frozen=True)
class BenchmarkInfo:
  """What `write_retrieval_benchmark` wrote."""

  gnd_path: str
  images_dir: str
  labels_path: str
  num_queries: int
  num_db: int
  num_distractor_classes: int


def _db_kinds(db_per_class: int) -> list[str]:
  num_junk = max(1, int(round(0.2 * db_per_class)))
  num_hard = max(1, (db_per_class - num_junk) // 2)
  num_easy = db_per_class - num_junk - num_hard
  return ["easy"] * num_easy + ["hard"] * num_hard + ["junk"] * num_junk


@dataclasses.dataclass
class _BenchmarkLayout:
  """Which view goes where: database (class, kind, view) and query (class, view) entries.

  Entry i is named by position[i] in a shuffled order, so that database
  indices say nothing about the class.
  """

  db: list[tuple[int, str, int]]
  db_position: np.ndarray
  queries: list[tuple[int, int]]
  query_position: np.ndarray

  @property
  def imlist(self) -> list[str]:
    return [f"db_{i:05d}" for i in range(len(self.db))]

  @property
  def qimlist(self) -> list[str]:
    return [f"q_{i:05d}" for i in range(len(self.queries))]


def _render_benchmark(
  layout: _BenchmarkLayout,
  scenes: list,
  num_classes: int,
  queries_per_class: int,
  image_size: int,
  seed: int,
  write,
) -> tuple[list[tuple[int, str]], list[str]]:
  """Renders and writes every view, class by class (the canonical scene is cached).

  Returns:
    (database (class, kind) by position, labels.csv rows in name order).
  """
  kind_params = {
    "easy": synthetic_scenes.EASY_VIEW,
    "hard": synthetic_scenes.HARD_VIEW,
    "junk": synthetic_scenes.JUNK_VIEW,
  }
  imlist, qimlist = layout.imlist, layout.qimlist
  views_per_class = len(layout.db) // len(scenes)
  db_by_position = [None] * len(layout.db)
  rows = []
  for (c, kind, v), pos in zip(layout.db, layout.db_position):
    rng = synthetic_scenes.view_rng(seed, synthetic_scenes.DB_STREAM, c, v)
    write(imlist[pos], synthetic_scenes.render_view(scenes[c], rng, image_size, kind_params[kind]))
    db_by_position[pos] = (c, kind)
    rows.append((int(pos), f"{imlist[pos]},db,{c},{kind if c < num_classes else 'distractor'}"))
    if v == views_per_class - 1 and c < num_classes:  # the class's queries, while it is cached
      for q in range(queries_per_class):
        qpos = int(layout.query_position[c * queries_per_class + q])
        rng = synthetic_scenes.view_rng(seed, synthetic_scenes.QUERY_STREAM, c, q)
        write(
          qimlist[qpos],
          synthetic_scenes.render_view(scenes[c], rng, image_size, synthetic_scenes.QUERY_VIEW),
        )
        rows.append((len(layout.db) + qpos, f"{qimlist[qpos]},query,{c},query"))
  return db_by_position, [row for _, row in sorted(rows)]


def _ground_truth(
  layout: _BenchmarkLayout, db_by_position: list[tuple[int, str]], image_size: int
) -> list[dict]:
  """gnd[i] of query i: the whole image as 'bbx', its class's 'easy'/'hard'/'junk' indices."""
  gnd = [None] * len(layout.queries)
  for (c, _), pos in zip(layout.queries, layout.query_position):
    entry = {"bbx": [0.0, 0.0, float(image_size), float(image_size)]}
    for kind in ("easy", "hard", "junk"):
      entry[kind] = [j for j, (dc, dk) in enumerate(db_by_position) if dc == c and dk == kind]
    gnd[pos] = entry
  return gnd


def write_retrieval_benchmark(
  out_dir: str,
  num_classes: int = 20,
  queries_per_class: int = 2,
  db_per_class: int = 8,
  image_size: int = 128,
  seed: int = 0,
  num_distractor_classes: int | None = None,
  jpeg_quality: int = 90,
) -> BenchmarkInfo:
  """Writes a Revisited Oxford-style retrieval benchmark of synthetic landmarks.

  Queries and database views of the training classes 0..num_classes-1 are new
  views (other random streams and view parameters than training). Per class,
  the database holds 'easy' (mild view change), 'hard' (strong change) and
  'junk' (tiny crops / extreme views) images; distractor classes
  num_classes..num_classes+D-1 (not in a training set made with the same
  seed and num_classes) add db_per_class views each and are in no list.
  Database and query orders are shuffled. Files:

    <out_dir>/jpg/<name>.jpg       queries (q_NNNNN) and database (db_NNNNN)
    <out_dir>/gnd_synthetic.pkl    {'imlist', 'qimlist', 'gnd'} (written last)
    <out_dir>/labels.csv           name,set,class,kind (for debugging)

  `gnd[i]` has 'bbx' [0, 0, W, H] (the whole query) and 0-based int lists
  'easy', 'hard', 'junk' into imlist.

  Args:
    out_dir: output folder.
    num_classes: classes with queries (the training classes).
    queries_per_class: queries per class.
    db_per_class: database views per class, >= 3.
    image_size: side of the square images.
    seed: the seed of the training set (same scenes).
    num_distractor_classes: None: max(2, num_classes // 2).
    jpeg_quality: JPEG quality.

  Returns:
    A BenchmarkInfo.
  """
  if db_per_class < 3:
    raise ValueError(f"db_per_class must be >= 3 (easy, hard, junk), got {db_per_class}")
  if queries_per_class < 1:
    raise ValueError(f"queries_per_class must be >= 1, got {queries_per_class}")
  if num_distractor_classes is None:
    num_distractor_classes = max(2, num_classes // 2)
  start = time.monotonic()
  scenes = synthetic_scenes.make_scenes(num_classes + num_distractor_classes, seed)
  images_dir = os.path.join(out_dir, "jpg")
  os.makedirs(images_dir, exist_ok=True)
  order_rng = np.random.default_rng([seed, synthetic_scenes.ORDER_STREAM, 1])
  db = [(s.class_id, kind, v) for s in scenes for v, kind in enumerate(_db_kinds(db_per_class))]
  db_position = np.argsort(order_rng.permutation(len(db)))
  queries = [(c, q) for c in range(num_classes) for q in range(queries_per_class)]
  layout = _BenchmarkLayout(
    db, db_position, queries, np.argsort(order_rng.permutation(len(queries)))
  )

  def write(name: str, image: np.ndarray) -> None:
    file_utils.atomic_write_bytes(
      os.path.join(images_dir, name + ".jpg"), image_codec.encode_jpeg(image, jpeg_quality)
    )

  db_by_position, rows = _render_benchmark(
    layout, scenes, num_classes, queries_per_class, image_size, seed, write
  )
  labels_path = os.path.join(out_dir, "labels.csv")
  file_utils.atomic_write_text(labels_path, "name,set,class,kind\n" + "\n".join(rows) + "\n")
  gnd_path = os.path.join(out_dir, GND_FILENAME)
  imlist, qimlist = layout.imlist, layout.qimlist
  buffer = io.BytesIO()
  gnd = _ground_truth(layout, db_by_position, image_size)
  pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, buffer, protocol=4)
  file_utils.atomic_write_bytes(gnd_path, buffer.getvalue())
  logging.info(
    "synthetic benchmark: %d queries, %d database images (%d distractor classes) in %.1fs -> %s",
    len(qimlist),
    len(imlist),
    num_distractor_classes,
    time.monotonic() - start,
    out_dir,
  )
  return BenchmarkInfo(
    gnd_path=gnd_path,
    images_dir=images_dir,
    labels_path=labels_path,
    num_queries=len(qimlist),
    num_db=len(imlist),
    num_distractor_classes=num_distractor_classes,
  )


FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the command's flags (a second call is a no-op)."""
  if "db_per_class" in flag_values:
    return
  fv = {"flag_values": flag_values}
  flags.DEFINE_string("output_dir", None, "Output folder (tfrecords/ and benchmark/).", **fv)
  flags.DEFINE_integer("num_classes", 20, "Training classes.", **fv)
  flags.DEFINE_integer("views_per_class", 30, "Training + validation views per class.", **fv)
  flags.DEFINE_integer("image_size", 128, "Side of the square images.", **fv)
  flags.DEFINE_integer("num_shards", 2, "TFRecord shards per split.", **fv)
  flags.DEFINE_float("validation_fraction", 0.2, "Share of views for validation.", **fv)
  flags.DEFINE_integer("queries_per_class", 2, "Benchmark queries per class.", **fv)
  flags.DEFINE_integer("db_per_class", 8, "Benchmark database views per class (>= 3).", **fv)
  flags.DEFINE_integer(
    "num_distractor_classes", -1, "Database-only classes (-1: max(2, num_classes // 2)).", **fv
  )
  flags.DEFINE_integer("seed", 0, "Random seed.", **fv)


def run_with_flags(flag_values: flags.FlagValues) -> int:
  """Writes the training set and the benchmark; returns 0.

  Raises:
    cli.UserError: a missing flag, a bad value or an unwritable output folder
      (`cli.run` prints it as one line and exits with status 2).
  """
  fv = flag_values
  if not fv.output_dir:
    raise cli.UserError("--output_dir is required")
  try:
    train = write_training_set(
      os.path.join(fv.output_dir, "tfrecords"),
      num_classes=fv.num_classes,
      views_per_class=fv.views_per_class,
      image_size=fv.image_size,
      num_shards=fv.num_shards,
      seed=fv.seed,
      validation_fraction=fv.validation_fraction,
    )
    bench = write_retrieval_benchmark(
      os.path.join(fv.output_dir, "benchmark"),
      num_classes=fv.num_classes,
      queries_per_class=fv.queries_per_class,
      db_per_class=fv.db_per_class,
      image_size=fv.image_size,
      seed=fv.seed,
      num_distractor_classes=None if fv.num_distractor_classes < 0 else fv.num_distractor_classes,
    )
  except (OSError, ValueError) as e:
    raise cli.UserError(str(e)) from None
  print(f"train: {train.train_pattern} ({train.num_train} images, {train.num_classes} classes)")
  print(f"validation: {train.validation_pattern} ({train.num_validation} images)")
  print(f"benchmark: {bench.gnd_path} ({bench.num_queries} queries, {bench.num_db} database)")
  return 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  return run_with_flags(FLAGS)


def run():
  """The `dolg-synthetic` command."""
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
