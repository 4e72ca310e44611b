"""A Revisited Oxford-style retrieval benchmark of synthetic landmarks (synthetic_scenes).

    info = synthetic_benchmark.write_retrieval_benchmark("/tmp/bench", num_classes=20)

Queries and database images are new views of the training classes (other
random streams and view parameters than synthetic.write_training_set's), plus
database-only distractor classes; the ground truth is a Revisited Oxford-style
`gnd_synthetic.pkl` (easy / hard / junk lists).
"""

import dataclasses
import io
import os
import pickle
import time

import numpy as np
from absl import logging

from dolg_tf.data import image_codec, synthetic_scenes
from dolg_tf.utils import files as file_utils

GND_FILENAME = "gnd_synthetic.pkl"


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

  @classmethod
  def shuffled(
    cls, scenes: list, num_classes: int, queries_per_class: int, db_per_class: int, seed: int
  ) -> "_BenchmarkLayout":
    """db_per_class views of every scene, queries_per_class of the first num_classes."""
    order_rng = np.random.default_rng([seed, synthetic_scenes.ORDER_STREAM, 1])
    kinds = _db_kinds(db_per_class)
    db = [(s.class_id, kind, v) for s in scenes for v, kind in enumerate(kinds)]
    db_position = np.argsort(order_rng.permutation(len(db)))
    queries = [(c, q) for c in range(num_classes) for q in range(queries_per_class)]
    return cls(db, db_position, queries, np.argsort(order_rng.permutation(len(queries))))

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


def _write_ground_truth(path: str, imlist: list[str], qimlist: list[str], gnd: list[dict]) -> None:
  """The Revisited Oxford-style pickle {'imlist', 'qimlist', 'gnd'}, atomically."""
  buffer = io.BytesIO()
  pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, buffer, protocol=4)
  file_utils.atomic_write_bytes(path, buffer.getvalue())


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

  Per training class 0..num_classes-1, the database holds 'easy' (mild view
  change), 'hard' (strong change) and 'junk' (tiny crops / extreme views)
  images; distractor classes num_classes..num_classes+D-1 (in no training set
  of the same seed and num_classes) add db_per_class views each, in no list.
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
  layout = _BenchmarkLayout.shuffled(scenes, num_classes, queries_per_class, db_per_class, seed)

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
  _write_ground_truth(gnd_path, imlist, qimlist, _ground_truth(layout, db_by_position, image_size))
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
