"""Whitening ablation on the DOLG demo: mAP before / after learned whitening and PCA-whitening.

  python benchmarks/whitening_ablation.py [--workdir=runs/demo] \
      [--output_dir=/tmp/whitening_ablation] [--views_per_class=48] [--dims=64,32]

Needs the DOLG demo (`dolg-demo`: runs/demo/export, runs/demo/benchmark,
runs/demo/features_trained and runs/demo/trained.pbtxt). Nothing under
--workdir is written.

1. A separate labelled learning set: --views_per_class new views of each of the
   demo's training landmarks (synthetic_scenes, a random stream no other set
   uses; view changes cycle through the training, easy and hard ranges), with
   an `id,landmark_id` labels.csv; no benchmark image, no distractor landmark.
   --unseen_landmarks (a control): as many landmarks that neither the training
   set nor the benchmark holds, so nothing is learned about the test landmarks.
2. Its global descriptors, extracted with the demo's trained export and its
   extraction config (the extraction library, as `dolg-extract` runs it).
3. `dolg-learn-whitening`'s library (learn_whitening.learn_from_files) learns
   `learned` (same-landmark pairs of the labels CSV), `pca_whitening` and
   `pca` on that set and writes their pca_parameters files.
4. The demo benchmark's descriptors (runs/demo/features_trained, extracted by
   the demo without PCA) go through extraction's PcaProjection reading those
   files, at the full dimension and each of --dims; exact search and the
   revisited protocol (mAP %, Easy / Medium / Hard) as the demo reports.

Prints one table, then re-extracts the benchmark images with the demo's
config plus the printed global_config section of `learned` at --check_dim
(the real extraction path: the SavedModel, scale pooling, PcaProjection) and
prints the largest difference to the table's descriptors. The learning set
and its features are cached in --output_dir (per --views_per_class).
"""

import json
import os
import shutil
import sys
import time

import numpy as np
from absl import app, flags
from google.protobuf import text_format

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dolg_tf.data import ground_truth, image_codec, synthetic_scenes  # noqa: E402
from dolg_tf.extraction import extractor as extractor_lib  # noqa: E402
from dolg_tf.extraction import pipeline, postprocess, task_sources  # noqa: E402
from dolg_tf.io import config_io, descriptor_reading  # noqa: E402
from dolg_tf.retrieval import learn_whitening, metrics, whitening  # noqa: E402
from dolg_tf.utils import files as file_utils  # noqa: E402

flags.DEFINE_string("workdir", "runs/demo", "The DOLG demo's folder (read only).")
flags.DEFINE_string("output_dir", "/tmp/whitening_ablation", "Learning set, features, files.")
flags.DEFINE_integer("views_per_class", 48, "Views per landmark in the learning set.")
flags.DEFINE_list("dims", ["96", "64", "32", "16", "8"], "Reduced output dimensions evaluated.")
flags.DEFINE_bool(
  "unseen_landmarks",
  False,
  "Learn on as many landmarks that neither training nor the benchmark has (a control).",
)
flags.DEFINE_integer(
  "check_dim", 32, "Re-extract the benchmark with the learned files at this dim (0: skip)."
)
FLAGS = flags.FLAGS

# A random stream of synthetic_scenes that no other set of the project uses.
WHITENING_STREAM = 11
LEARNING_VIEWS = (
  synthetic_scenes.TRAIN_VIEW,
  synthetic_scenes.EASY_VIEW,
  synthetic_scenes.HARD_VIEW,
)


def write_learning_set(out_dir: str, classes: range, views: int, seed: int, size: int) -> str:
  """Renders the labelled learning set (skipped if labels.csv exists); returns labels.csv."""
  labels_path = os.path.join(out_dir, "labels.csv")
  if os.path.exists(labels_path):
    return labels_path
  images_dir = os.path.join(out_dir, "jpg")
  os.makedirs(images_dir, exist_ok=True)
  rows = ["id,landmark_id"]
  for scene in synthetic_scenes.make_scenes(classes.stop, seed)[classes.start :]:
    for v in range(views):
      rng = synthetic_scenes.view_rng(seed, WHITENING_STREAM, scene.class_id, v)
      image = synthetic_scenes.render_view(scene, rng, size, LEARNING_VIEWS[v % 3])
      name = f"w_c{scene.class_id:03d}_v{v:03d}"
      file_utils.atomic_write_bytes(
        os.path.join(images_dir, name + ".jpg"), image_codec.encode_jpeg(image, 90)
      )
      rows.append(f"{name},{scene.class_id}")
  file_utils.atomic_write_text(labels_path, "\n".join(rows) + "\n")
  return labels_path


def extract(config_path: str, images_dir: str, features_dir: str) -> None:
  config = config_io.load_dolg_config(config_path)
  extractor = extractor_lib.Extractor(config, config_path)
  tasks = task_sources.tasks_from_paths(task_sources.list_images(images_dir))
  summary = pipeline.run_extraction(extractor, tasks, features_dir)
  if summary.failed:
    raise RuntimeError(f"{summary.failed} images failed; see {features_dir}/failures.tsv")


def benchmark_map(gnd, queries: np.ndarray, database: np.ndarray) -> list[float]:
  """mAP % Easy / Medium / Hard of exact inner-product search."""
  ranks = metrics.ranks_from_scores(queries @ database.T)
  results = metrics.evaluate_revisited(ranks, gnd)
  return [100 * results[p].mean_ap for p in ("easy", "medium", "hard")]


def projection_of(parameters_files, dim: int) -> postprocess.PcaProjection:
  """Extraction's PcaProjection over the written files (as a DolgConfig names them)."""
  global_config = whitening.dolg_global_config(parameters_files, dim)
  return postprocess.PcaProjection(global_config.pca_parameters)


def check_extraction(workdir: str, files, dim: int, expected: dict, suffix: str) -> str:
  """Extracts the benchmark with the trained config plus the written global_config section.

  Returns:
    A line: the largest difference to `expected` ({id: descriptor}, PcaProjection
    applied to the demo's features) over every benchmark image.
  """
  config = config_io.load_dolg_config(os.path.join(workdir, "trained.pbtxt"))
  section = text_format.Parse(whitening.config_snippet(files, dim), config_io.DolgConfig())
  config.global_config.MergeFrom(section.global_config)
  config_path = os.path.join(FLAGS.output_dir, f"learned_{dim}.pbtxt")
  file_utils.atomic_write_text(config_path, text_format.MessageToString(config))
  features_dir = os.path.join(FLAGS.output_dir, f"benchmark_learned_{dim}")
  shutil.rmtree(features_dir, ignore_errors=True)  # extraction resumes: start afresh
  extract(config_path, os.path.join(workdir, "benchmark", "jpg"), features_dir)
  ids, extracted = descriptor_reading.read_descriptors(features_dir, list(expected), suffix=suffix)
  difference = np.abs(extracted - np.stack([expected[i] for i in ids])).max()
  return (
    f"dolg-extract with {config_path} (learned, dim {dim}) on the {len(ids)} benchmark "
    f"images: max |difference| to the table's descriptors {difference:.2e}"
  )


def main(argv):
  del argv
  start = time.monotonic()
  workdir = FLAGS.workdir
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  info = config_io.load_dolg_config(os.path.join(workdir, "trained.pbtxt"))
  suffix = info.global_descriptor_suffix
  with open(os.path.join(workdir, "data", "synthetic_info.json")) as f:
    params = json.load(f)["params"]
  set_dir = os.path.join(FLAGS.output_dir, f"learning_set_{FLAGS.views_per_class}")
  classes = range(params["num_classes"])
  if FLAGS.unseen_landmarks:  # after the benchmark's training and distractor landmarks
    with open(os.path.join(workdir, "benchmark", "labels.csv")) as f:
      first = 1 + max(int(line.split(",")[2]) for line in list(f)[1:])
    classes = range(first, first + params["num_classes"])
  set_dir += "_unseen" if FLAGS.unseen_landmarks else ""
  labels_path = write_learning_set(
    set_dir, classes, FLAGS.views_per_class, params["seed"], params["image_size"]
  )
  features_dir = os.path.join(FLAGS.output_dir, "features_" + os.path.basename(set_dir))
  extract(os.path.join(workdir, "trained.pbtxt"), os.path.join(set_dir, "jpg"), features_dir)
  print(f"learning set ready in {time.monotonic() - start:.0f} s", flush=True)

  gnd = ground_truth.load_ground_truth(os.path.join(workdir, "benchmark", "gnd_synthetic.pkl"))
  bench = os.path.join(workdir, "features_trained")
  _, queries = descriptor_reading.read_descriptors(bench, list(gnd.qimlist), suffix=suffix)
  _, database = descriptor_reading.read_descriptors(bench, list(gnd.imlist), suffix=suffix)
  full = queries.shape[1]
  dims = [full] + [int(d) for d in FLAGS.dims if 0 < int(d) < full]
  rows = [("none (demo)", full, benchmark_map(gnd, queries, database), "")]
  check = None
  for method in ("pca", "pca_whitening", "learned"):
    config = learn_whitening.LearnWhiteningConfig(method=method, suffix=suffix)
    source = {"labels_csv": labels_path} if method == "learned" else {}
    learned, learn_info = learn_whitening.learn_from_files(config, features_dir, source)
    out = os.path.join(FLAGS.output_dir, method)
    os.makedirs(out, exist_ok=True)
    files = whitening.write_parameter_files(learned, out)
    note = f"{learn_info['num_descriptors']} images"
    if learn_info["pairs"]:
      note += f", {learn_info['pairs']} pairs"
    for dim in dims:
      pca = projection_of(files, dim)
      scores = benchmark_map(gnd, pca(queries), pca(database))
      cut = whitening.degenerate_cut(learned.eigenvalues, dim)
      rows.append((method, dim, scores, note + (" *" if cut else "")))
      if method == "learned" and dim == FLAGS.check_dim:
        ids = list(gnd.qimlist) + list(gnd.imlist)
        expected = dict(zip(ids, np.concatenate([pca(queries), pca(database)])))
        check = check_extraction(workdir, files, dim, expected, suffix)
  print(f"\n=== whitening ablation: DOLG demo benchmark ({workdir}), mAP % ===")
  print(f"{'post-processing':<16} {'dim':>4} {'Easy':>7} {'Medium':>7} {'Hard':>7}  learned on")
  for method, dim, scores, note in rows:
    print(f"{method:<16} {dim:>4} " + " ".join(f"{v:7.2f}" for v in scores) + f"  {note}")
  if any(note.endswith("*") for *_, note in rows):
    print("* the cut splits a set of equal eigenvalues: which of their directions are kept is")
    print("  arbitrary (whitening.degenerate_cut), so this row may change from run to run")
  if check:
    print(check)
  elif FLAGS.check_dim:
    print(f"(no extraction check: --check_dim={FLAGS.check_dim} is not an evaluated dimension)")
  print(f"\ntotal time {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
  app.run(main)
