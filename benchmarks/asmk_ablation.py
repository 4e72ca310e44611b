"""ASMK* ablation on the DELG demo: global only, ASMK* alone, global + ASMK* re-ranking, + GV.

  python benchmarks/asmk_ablation.py [--workdir=runs/demo_delg] \
      [--output_dir=runs/asmk_ablation] [--codebook_size=1024] [--depth=100]

Needs the DELG demo run (`dolg-demo --model=delg`): its benchmark (gnd and
images) and the trained model's extracted global and local features
(features_trained/*.delg_global, *.delg_local). Steps, all in this run:

1. a codebook of --codebook_size visual words, faiss k-means
   (retrieval/codebook.py) on a sample of the DATABASE images' local
   descriptors (queries are not used, as DELF trains on the index);
2. ASMK* aggregation (retrieval/aggregation.py, DELF's AggregationConfig:
   alpha 3, tau 0, L2-normalised similarity) of every query and database
   image, written in DELF's files under --output_dir/aggregated;
3. dolg-retrieve's evaluation (evaluation.evaluate) with each pipeline:
   global only; ASMK* alone (inverted file); global + ASMK* re-ranking of the
   top --depth by ASMK* alone, and by ASMK* + --global_weight x global (not
   tuned: the weight is a flag); each of those + geometric verification (the demo's settings:
   top 100, affine RANSAC, residual 4 px).

Prints the table (mAP % Easy / Medium / Hard, revisited protocol, and ms per
query of every stage, from Evaluation.stage_ms) and the one-off costs
(codebook training, aggregation per image, inverted file size). Stage times
are wall times of one pass on this machine; small values (< 1 ms) are noisy.
Then (--scale_images) the inverted file's cost per query against DELF's
pairwise loop on random ASMK* databases of those sizes (scale_lines).
"""

import os
import sys
import time

import numpy as np
from absl import app, flags, logging
from google.protobuf import text_format

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dolg_tf import demo  # noqa: E402
from dolg_tf.data import ground_truth  # noqa: E402
from dolg_tf.io import aggregation_config_io  # noqa: E402
from dolg_tf.retrieval import (  # noqa: E402
  aggregation,
  asmk_rerank,
  asmk_similarity,
  codebook,
  inverted_file,
  retrieval_config,
)
from dolg_tf.retrieval import evaluation as evaluation_lib  # noqa: E402
from dolg_tf.utils import files as file_utils  # noqa: E402
from dolg_tf.utils import progress  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/demo_delg", "The DELG demo run.")
flags.DEFINE_string("output_dir", "runs/asmk_ablation", "Codebook, aggregated files, config.")
flags.DEFINE_integer("codebook_size", 1024, "Visual words.")
flags.DEFINE_integer("max_descriptors", 200000, "Database local descriptors sampled for k-means.")
flags.DEFINE_integer("iterations", 20, "k-means iterations.")
flags.DEFINE_integer("depth", 100, "Global top-N re-ranked by ASMK*.")
flags.DEFINE_float(
  "global_weight", 1.0, "Second re-ranking: score = ASMK* + global_weight x global."
)
flags.DEFINE_list(
  "scale_images",
  ["5000", "20000"],
  "Database sizes of the inverted file scaling check on random ASMK* data ([] to skip).",
)
flags.DEFINE_float("alpha", 3.0, "ASMK selectivity exponent (DELF's default).")
flags.DEFINE_float("tau", 0.0, "ASMK selectivity threshold (DELF's default).")

PROTOCOLS = ("easy", "medium", "hard")
STAGES = ("global search", "ASMK", "geometric verification")


def train_codebook(features_dir: str, names) -> tuple[np.ndarray, str]:
  """k-means centroids of the database's local descriptors and a line of its cost."""
  start = time.monotonic()
  paths = [os.path.join(features_dir, n + ".delg_local") for n in names]
  sample, stats = codebook.sample_descriptors(paths, FLAGS.max_descriptors)
  centroids, _ = codebook.train_kmeans(sample, FLAGS.codebook_size, FLAGS.iterations)
  np.save(os.path.join(FLAGS.output_dir, "codebook.npy"), centroids)
  return centroids, (
    f"codebook: {FLAGS.codebook_size} words x {centroids.shape[1]}-D from "
    f"{stats['descriptors_kept']} of {stats['descriptors_seen']} database descriptors, "
    f"{time.monotonic() - start:.1f} s"
  )


def aggregate_all(config, centroids, features_dir: str, names, out_dir: str) -> str:
  """Writes every image's ASMK* file; returns a line of the cost per image."""
  os.makedirs(out_dir, exist_ok=True)
  aggregator = aggregation.Aggregator(config, centroids)
  extension = aggregation.output_extension(config)
  reporter = progress.Progress(len(names), verb="aggregated", unit="img")
  start, words = time.monotonic(), 0
  for i, name in enumerate(names):
    descriptors = codebook.read_local_descriptors(os.path.join(features_dir, name + ".delg_local"))
    aggregated, visual_words = aggregator.aggregate(descriptors)
    words += len(visual_words)
    aggregation.write_aggregated(os.path.join(out_dir, name + extension), aggregated, visual_words)
    reporter.update(i + 1, force=i + 1 == len(names))
  ms = 1000.0 * (time.monotonic() - start) / len(names)
  return (
    f"aggregation: {len(names)} images, {ms:.1f} ms/image, "
    f"{words / len(names):.0f} visual words per image on average"
  )


def pipelines(config_path: str, aggregated_dir: str):
  """[(label, RetrievalConfig)] of the table's rows."""
  asmk = {
    "aggregation_config": config_path,
    "query_dir": aggregated_dir,
    "index_dir": aggregated_dir,
  }
  base = retrieval_config.RetrievalConfig(
    suffix=".delg_global",
    local_suffix=".delg_local",
    geometric_verification=demo.DEMO_GEOMETRIC_VERIFICATION,
  )
  alone = base.overridden({"asmk": dict(asmk, mode="alone")})
  rerank = base.overridden({"asmk": dict(asmk, mode="rerank", depth=FLAGS.depth)})
  weighted = rerank.overridden({"asmk": {"global_weight": FLAGS.global_weight}})
  top = f"top {FLAGS.depth}"
  mixed = f"global + ASMK* re-rank ({top}, ASMK* + {FLAGS.global_weight:g} x global)"
  return [
    ("global only", base),
    ("ASMK* alone", alone),
    (f"global + ASMK* re-rank ({top}, ASMK* only)", rerank),
    (mixed, weighted),
    ("global + GV", base.overridden({"use_geometric_verification": True})),
    ("ASMK* alone + GV", alone.overridden({"use_geometric_verification": True})),
    (
      f"global + ASMK* re-rank ({top}, ASMK* only) + GV",
      rerank.overridden({"use_geometric_verification": True}),
    ),
    (mixed + " + GV", weighted.overridden({"use_geometric_verification": True})),
  ]


def row_text(label: str, evaluation) -> str:
  maps = [100 * evaluation.results[p].mean_ap for p in PROTOCOLS]
  stage_ms = evaluation.stage_ms
  cells = [f"{stage_ms[s]:.2f}" if s in stage_ms else "-" for s in STAGES]
  total = sum(stage_ms.get(s, 0.0) for s in STAGES)
  return (
    f"| {label} | "
    + " | ".join(f"{m:.2f}" for m in maps)
    + " | "
    + " | ".join(cells)
    + f" | {total:.2f} |"
  )


def scale_lines(sizes, words_per_image: int = 300, num_queries: int = 20) -> list[str]:
  """ms/query of the inverted file against pairwise scoring on random ASMK* data.

  DELF's setting: 128-D descriptors (16 bytes per word), 65,536 words, 300
  words per image drawn uniformly (real word frequencies are skewed, which
  lengthens the common posting lists). Pairwise: DELF's loop over every
  image (AggregatedSimilarity.compare): its cost per image does not depend on
  the database size, so it is timed once (the best of 3 rounds over 500
  random images) and multiplied by each size; the inverted file's ms/query
  is the best of 3 rounds of the queries.
  """
  config = aggregation_config_io.AggregationConfig(
    aggregation_type=aggregation_config_io.ASMK_STAR,
    feature_dimensionality=128,
    codebook_size=65536,
  )
  similarity = asmk_similarity.AggregatedSimilarity(config)
  rng = np.random.default_rng(0)

  def image():
    words = np.sort(rng.choice(config.codebook_size, words_per_image, replace=False))
    return rng.integers(0, 256, size=16 * words_per_image, dtype=np.uint8), words

  def best_of_3(run, count: int) -> float:
    """The fastest of 3 rounds of run(), in ms per item."""
    rounds = []
    for _ in range(3):
      start = time.monotonic()
      run()
      rounds.append(1000.0 * (time.monotonic() - start) / count)
    return min(rounds)

  query = image()
  sample = [image() for _ in range(500)]
  per_image_ms = best_of_3(
    lambda: [similarity.compare(query[0], d, query[1], w) for d, w in sample], len(sample)
  )
  lines = []
  for size in sizes:
    database = [image() for _ in range(size)]
    start = time.monotonic()
    index = inverted_file.InvertedFile.build(similarity, database)
    build = time.monotonic() - start
    queries = [image() for _ in range(num_queries)]
    ivf_ms = best_of_3(
      lambda index=index, queries=queries: [index.search(d, w, 100) for d, w in queries],
      num_queries,
    )
    pairwise_ms = per_image_ms * size
    lines.append(
      f"| {size} | {len(index.images)} | {index.nbytes()['total'] / 1e6:.0f} | {build:.1f} | "
      f"{ivf_ms:.1f} | {pairwise_ms:.0f} | {pairwise_ms / ivf_ms:.0f}x |"
    )
  return lines


def main(argv):
  del argv
  start = time.monotonic()
  workdir = FLAGS.workdir
  features_dir = os.path.join(workdir, "features_trained")
  gnd_path = os.path.join(workdir, "benchmark", "gnd_synthetic.pkl")
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  gt = ground_truth.load_ground_truth(gnd_path)
  centroids, codebook_line = train_codebook(features_dir, gt.imlist)
  config = aggregation_config_io.AggregationConfig(
    codebook_size=FLAGS.codebook_size,
    feature_dimensionality=centroids.shape[1],
    aggregation_type=aggregation_config_io.ASMK_STAR,
    use_l2_normalization=True,
    codebook_path="codebook.npy",
    alpha=FLAGS.alpha,
    tau=FLAGS.tau,
  )
  config_path = os.path.join(FLAGS.output_dir, "asmk_star.pbtxt")
  file_utils.atomic_write_text(config_path, text_format.MessageToString(config))
  aggregated_dir = os.path.join(FLAGS.output_dir, "aggregated")
  names = list(gt.qimlist) + list(gt.imlist)
  aggregation_line = aggregate_all(config, centroids, features_dir, names, aggregated_dir)
  lines = []
  memory = ""
  for label, retrieval in pipelines(config_path, aggregated_dir):
    logging.info("evaluating %s", label)
    evaluation = evaluation_lib.evaluate(gnd_path, features_dir, features_dir, config=retrieval)
    lines.append(row_text(label, evaluation))
    if retrieval.asmk.mode == "alone" and not memory:
      stage = asmk_rerank.AsmkStage(
        retrieval.asmk, gt.qimlist, gt.imlist, features_dir, features_dir
      )
      stage.load()
      memory = (
        f"inverted file: {stage.index.num_images} images, {len(stage.index.images)} "
        f"postings, {stage.index.nbytes()['total'] / 1e6:.2f} MB"
      )
  print(
    f"\n=== ASMK* ablation, DELG demo ({workdir}): {gt.num_queries} queries, "
    f"{len(gt.imlist)} database images (revisited protocol, mAP %; ms per query) ==="
  )
  print("| pipeline | Easy | Medium | Hard | global search ms | ASMK* ms | GV ms | total ms |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|")
  print("\n".join(lines))
  print(
    f"\n{codebook_line}\n{aggregation_line}\n{memory}\n"
    f"ASMK*: alpha {FLAGS.alpha:g}, tau {FLAGS.tau:g}, L2-normalised; "
    f"GV: top {demo.DEMO_GEOMETRIC_VERIFICATION.top_k}, affine RANSAC, "
    f"residual {demo.DEMO_GEOMETRIC_VERIFICATION.residual_threshold:g} px\n"
    f"total time {time.monotonic() - start:.0f} s"
  )
  if FLAGS.scale_images:
    print(
      "\n=== inverted file vs pairwise scoring, random ASMK* data (128-D, 65,536 words, "
      "300 words per image, top 100) ===\n"
      "| database images | postings | MB | build s | inverted file ms/query | "
      "pairwise ms/query | pairwise / inverted file |\n|---:|---:|---:|---:|---:|---:|---:|"
    )
    print("\n".join(scale_lines([int(n) for n in FLAGS.scale_images])))


if __name__ == "__main__":
  app.run(main)
