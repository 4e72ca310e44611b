r"""Synthetic landmarks as a training set (GLDv2 TFRecords), and the `dolg-synthetic` command.

The scenes and their views are synthetic_scenes.py's; the command also writes
a retrieval benchmark (synthetic_benchmark.py). Everything is
deterministic given the seed: view `v` of class `c` depends only on
(seed, stream, c, v), with one random stream per use, so that the sets never
share views.

  # Training TFRecords (GLDv2 layout) + a Revisited Oxford-style benchmark:
  python -m dolg_tf.data.synthetic --output_dir=/tmp/synth --num_classes=20

writes `<output_dir>/tfrecords/{train,validation}-NNNNN-of-MMMMM` and
`<output_dir>/benchmark/{jpg/*.jpg, gnd_synthetic.pkl, labels.csv}`.
"""

import dataclasses
import json
import os
import time

import numpy as np
from absl import app, flags, logging

from dolg_tf.data import image_codec, synthetic_benchmark, synthetic_scenes
from dolg_tf.utils import cli
from dolg_tf.utils import files as file_utils

INFO_FILENAME = "synthetic_info.json"


def _gldv2():
  """dolg_tf.data.gldv2, imported on first use (it loads TensorFlow)."""
  # Here, so that `--help` and flag errors answer before TensorFlow loads.
  from dolg_tf.data import gldv2  # noqa: PLC0415

  return gldv2


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
      example = _gldv2().make_example(
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
    with _gldv2().ShardedRecordWriter(os.path.join(out_dir, split), num_shards) as writer:
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
    train_pattern=_gldv2().shard_pattern(os.path.join(out_dir, "train")),
    validation_pattern=_gldv2().shard_pattern(os.path.join(out_dir, "validation")),
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
    bench = synthetic_benchmark.write_retrieval_benchmark(
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
