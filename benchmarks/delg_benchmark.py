r"""DELG speed: local + global extraction throughput and re-ranking time per query.

(a) An untrained DELG R50 (DELG paper settings, config.delg_config) is exported
    to a temp folder; a DELG extractor.Extractor runs `--num_images` random
    `--image_size` x `--image_size` images through the local+global signature
    at `--scales` (default 1.0: DELG's 7-scale pyramid costs about 5.5x more
    pixels), keeping `--max_features` keypoints; img/s and CPU s/img are
    printed (the first image, which traces the graph, is not timed).
(b) Re-ranking: `--num_queries` queries, each re-ranking `--top_k` database
    images with `--num_features` synthetic 128-D local features per image
    (nearest-neighbour matching + affine RANSAC, rerank.rerank), float and
    binarised; one database image per query is a true affine match. Seconds
    per query and ms per (query, image) pair. Binarised re-ranking is timed
    with the faiss popcount matcher (binarize.match_binary) and with the former
    unpackbits + float matmul one (binarize.match_binary_reference); their
    inlier counts must be identical.
(c) Matchers alone (Na = Nb = `--num_features` random 128-bit rows, two
    nearest for the ratio test): the reference, match_binary (faiss, 1 and 2
    threads) and OpenCV's brute-force Hamming matchers; plus the bytes per
    descriptor of float and binarised storage.

Usage:
  .venv/bin/python benchmarks/delg_benchmark.py [--num_images=5] [--scales=1.0]
      [--extraction=false]

Other processes on the machine slow every figure; compare within one run.
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2
import numpy as np
import tensorflow as tf
from absl import app, flags

from dolg_tf import config as config_lib
from dolg_tf.export import versions
from dolg_tf.extraction import extractor as extractor_lib
from dolg_tf.io import binarize, config_io, datum_io, feature_io
from dolg_tf.model import builder
from dolg_tf.retrieval import geometric_verification, rerank
from dolg_tf.utils import arrays

flags.DEFINE_integer("num_images", 5, "Images timed for extraction.")
flags.DEFINE_integer("image_size", 512, "Square image side.")
flags.DEFINE_list("scales", ["1.0"], "Image pyramid scales.")
flags.DEFINE_integer("max_features", 1000, "Keypoints kept per image.")
flags.DEFINE_integer("num_queries", 3, "Queries re-ranked.")
flags.DEFINE_integer("top_k", 100, "Database images verified per query.")
flags.DEFINE_integer("num_features", 1000, "Local features per image for re-ranking.")
flags.DEFINE_bool("extraction", True, "Also time (a), DELG extraction (slow: builds the model).")
flags.DEFINE_integer("matcher_repeats", 20, "Timed calls per matcher in (c).")
FLAGS = flags.FLAGS


def _unit(x):
  return arrays.l2_normalize(x)


def bench_extraction() -> None:
  model_config = config_lib.delg_config()
  model = builder.build_model(model_config, image_size=FLAGS.image_size)
  with tempfile.TemporaryDirectory() as tmp:
    export_dir = versions.export_saved_model(model, model_config, os.path.join(tmp, "delg"))
    scales = "\n".join(f"image_scales: {float(s)}" for s in FLAGS.scales)
    config = config_io.parse_dolg_config(
      f"{scales}\nuse_local_features: true\n"
      f"local_config {{ max_feature_num: {FLAGS.max_features} }}\n"
    )
    extractor = extractor_lib.Extractor(config, model_path=export_dir)
    rng = np.random.default_rng(0)
    size = FLAGS.image_size
    images = [
      rng.integers(0, 256, [size, size, 3], dtype=np.uint8) for _ in range(FLAGS.num_images)
    ]
    result = extractor.extract(images[0])  # traces
    wall, cpu = time.perf_counter(), time.process_time()
    for image in images:
      result = extractor.extract(image)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  print(
    f"DELG R50 local+global extraction, {size}x{size}, scales {FLAGS.scales}: "
    f"{FLAGS.num_images / wall:.2f} img/s ({wall / FLAGS.num_images:.2f} s/img, "
    f"{cpu / FLAGS.num_images:.2f} CPU s/img), {len(result['scores'])} keypoints, "
    f"local dim {result['descriptors'].shape[1]}, global dim {result['global'].shape[0]}"
  )


def _features(rng, locations, descriptors):
  n = len(locations)
  return feature_io.LocalFeatures(
    locations.astype(np.float32),
    np.ones(n, np.float32),
    descriptors,
    np.ones(n, np.float32),
    np.zeros(n, np.float32),
  )


def bench_rerank() -> None:
  rng = np.random.default_rng(1)
  n, dim = FLAGS.num_features, 128
  affine = np.array([[0.9, -0.1, 20.0], [0.1, 0.95, -10.0]])
  queries, databases = [], []
  for _ in range(FLAGS.num_queries):
    yx = rng.uniform(0, 1024, [n, 2])
    desc = _unit(rng.normal(size=[n, dim]))
    queries.append(_features(rng, yx, desc))
    database = [
      _features(rng, rng.uniform(0, 1024, [n, 2]), _unit(rng.normal(size=[n, dim])))
      for _ in range(FLAGS.top_k)
    ]
    mapped = (yx[:, ::-1] @ affine[:, :2].T + affine[:, 2])[:, ::-1]
    noisy = _unit(desc + rng.normal(scale=0.03, size=desc.shape))
    database[FLAGS.top_k // 2] = _features(rng, mapped, noisy)
    databases.append(database)
  ranks = np.tile(np.arange(FLAGS.top_k), [1, 1])

  def run(qs, dbs):
    """(seconds per query, queries whose true match ranks first, inlier counts)."""
    start = time.perf_counter()
    moved, counts = 0, []
    for q in range(FLAGS.num_queries):
      new_ranks, inliers = rerank.rerank(ranks, [qs[q]], dbs[q].__getitem__, top_k=FLAGS.top_k)
      moved += int(new_ranks[0, 0] == FLAGS.top_k // 2)
      counts.append(inliers[0])
    return (time.perf_counter() - start) / FLAGS.num_queries, moved, counts

  def report(name, seconds, moved):
    print(
      f"re-ranking top-{FLAGS.top_k}, {n} features/image, {name}: {seconds:.2f} s/query "
      f"({1000 * seconds / FLAGS.top_k:.1f} ms/pair); "
      f"true match ranked first for {moved}/{FLAGS.num_queries} queries"
    )
    return seconds

  def convert(f):
    return f._replace(descriptors=binarize.binarize(f.descriptors))

  float_seconds = report("float descriptors", *run(queries, databases)[:2])
  qs = [convert(q) for q in queries]
  dbs = [[convert(d) for d in db] for db in databases]
  fast_seconds, fast_moved, fast_counts = run(qs, dbs)
  fast_seconds = report("binarised descriptors (faiss popcount)", fast_seconds, fast_moved)
  fast_matcher = binarize.match_binary
  binarize.match_binary = binarize.match_binary_reference  # what rerank called before
  try:
    old_seconds, old_moved, old_counts = run(qs, dbs)
  finally:
    binarize.match_binary = fast_matcher
  old_seconds = report("binarised descriptors (reference matmul)", old_seconds, old_moved)
  if old_counts != fast_counts:
    raise AssertionError("faiss and reference binary matchers gave different inlier counts")
  print(
    f"binarised re-ranking: {old_seconds / fast_seconds:.2f}x faster than with the reference "
    f"matcher (identical inlier counts); float / binarised time {float_seconds / fast_seconds:.2f}"
  )


def _time_ms(function, repeats):
  function()
  start = time.perf_counter()
  for _ in range(repeats):
    function()
  return 1000 * (time.perf_counter() - start) / repeats


def bench_matchers() -> None:
  rng = np.random.default_rng(2)
  n, num_bytes = FLAGS.num_features, 16
  a = rng.integers(0, 256, [n, num_bytes], dtype=np.uint8)
  b = rng.integers(0, 256, [n, num_bytes], dtype=np.uint8)
  threshold, ratio = (
    binarize.hamming_threshold_for_l2(geometric_verification.DEFAULT_DISTANCE_THRESHOLD, 128),
    0.9,
  )
  expected = binarize.match_binary_reference(a, b, threshold, ratio)
  if not np.array_equal(binarize.match_binary(a, b, threshold, ratio), expected):
    raise AssertionError("match_binary differs from match_binary_reference")
  brute_force = cv2.BFMatcher(cv2.NORM_HAMMING)
  candidates = {
    "match_binary_reference (unpackbits + float matmul)": lambda: binarize.match_binary_reference(
      a, b, threshold, ratio
    ),
    "match_binary (faiss knn_hamming, 1 thread)": lambda: binarize.match_binary(
      a, b, threshold, ratio, num_threads=1
    ),
    "match_binary (faiss knn_hamming, 2 threads)": lambda: binarize.match_binary(
      a, b, threshold, ratio, num_threads=2
    ),
    "cv2.BFMatcher(NORM_HAMMING).knnMatch k=2 (distances only)": lambda: brute_force.knnMatch(
      a, b, k=2
    ),
    "cv2.batchDistance NORM_HAMMING K=2 (distances only)": lambda: cv2.batchDistance(
      a, b, cv2.CV_32S, normType=cv2.NORM_HAMMING, K=2
    ),
  }
  reference_ms = None
  for name, function in candidates.items():
    ms = _time_ms(function, FLAGS.matcher_repeats)
    reference_ms = reference_ms or ms
    print(
      f"matcher {n} x {n} x 128 bits, 2 nearest: {name}: {ms:.2f} ms ({reference_ms / ms:.1f}x)"
    )
  float_descriptor = rng.normal(size=[128]).astype(np.float32)
  packed = binarize.binarize(float_descriptor)
  print(
    "bytes per 128-D descriptor: float32 array "
    f"{float_descriptor.nbytes}, packed uint8 array {packed.nbytes} "
    f"(1/{float_descriptor.nbytes // packed.nbytes}), as read by feature_io (uint32) "
    f"{binarize.to_stored(packed).nbytes}; serialized DatumProto: float_list "
    f"{len(datum_io.serialize_array(float_descriptor))}, uint32_list of the packed bytes "
    f"{len(datum_io.serialize_array(binarize.to_stored(packed)))}"
  )


def main(argv):
  del argv
  print(f"load average {os.getloadavg()[0]:.2f}, TF {tf.__version__}")
  bench_rerank()
  bench_matchers()
  if FLAGS.extraction:
    bench_extraction()


if __name__ == "__main__":
  app.run(main)
