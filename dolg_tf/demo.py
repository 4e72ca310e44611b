"""The README's main job: train -> export -> extract -> retrieve on synthetic landmarks.

  python -m dolg_tf.demo [--workdir=runs/demo] [--max_steps=600]

1. `python -m dolg_tf.train --logdir=<workdir>` (the same run as
   `bazel run //dolg_tf:train`): generates the synthetic training set, trains a
   small DOLG on this CPU and exports `<workdir>/export/<version>`.
2. Writes a held-out synthetic retrieval benchmark (new views of the training
   landmarks plus distractor landmarks, Revisited-Oxford-style gnd pkl).
3. Exports the same network with random weights, as the baseline.
4. For both models: extraction of every benchmark image with the shipped
   protos/dolg.pbtxt settings (DELF-format `.dolg_global` files), then exact
   search and the revisited Easy/Medium/Hard protocol.

With `--model=delg` (workdir runs/demo_delg) the same steps train and extract
a small DELG (protos/delg.pbtxt with a 0.7071 .. 2.8284 pyramid for the 128 px
views: local features plus the global descriptor); retrieval is scored with
global descriptors only and again after geometric verification (local feature
matching + RANSAC) of each query's top `--gv_top_k`.

Every step is resumable: re-running skips training, data and descriptors
that are already there.
"""

import os
import subprocess
import sys
import time

import tensorflow as tf
from absl import app, flags, logging
from google.protobuf import text_format

from dolg_tf import config as config_lib
from dolg_tf import protos
from dolg_tf.data import synthetic
from dolg_tf.extraction import extractor as extractor_lib
from dolg_tf.extraction import local_extractor, pipeline
from dolg_tf.io import config_io
from dolg_tf.model import builder
from dolg_tf.retrieval import perform_retrieval

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "dolg", ["dolg", "delg"], "Network trained and evaluated.")
flags.DEFINE_string(
  "workdir", None, "Where every artifact of the demo goes (default runs/demo, runs/demo_delg)."
)
flags.DEFINE_integer("max_steps", 600, "Training steps (the train binary's synthetic default).")
flags.DEFINE_integer("num_classes", 16, "Synthetic landmark classes (training and benchmark).")
flags.DEFINE_integer("seed", 0, "Seed of data, weights and the baseline.")
# Geometric verification of the DELG demo. DELF's settings are meant for
# ~1024 px photos; the benchmark views are 128 px, where keypoints sit on a
# 16 px / scale grid: the RANSAC threshold is scaled down, and degenerate
# affine fits (which collect grid "inliers" between unrelated images) are
# rejected. Measured effect: README, "DELG on the synthetic benchmark".
flags.DEFINE_integer("gv_top_k", 100, "DELG: database images verified per query.")
flags.DEFINE_float("gv_residual_threshold", 4.0, "DELG: RANSAC residual threshold (pixels).")
flags.DEFINE_integer("gv_min_inliers", 0, "DELG: inlier counts below this count as 0.")
flags.DEFINE_float("gv_max_scale_change", 3.0, "DELG: reject fits scaling more than this (0: off).")
flags.DEFINE_float("gv_max_anisotropy", 2.0, "DELG: reject fits more anisotropic (0: off).")

# protos/delg.pbtxt's 7-scale pyramid (0.25 .. 2) is DELG's for ~1024 px
# photos; its smallest scales turn a 128 px view into 2x2 .. 4x4 feature maps
# whose keypoints cannot be located. The demo keeps scales from 0.7071 up to
# 2.8284 for local features and 0.7071 .. 1.4142 for the global descriptor
# (as the shipped config does).
DELG_DEMO_SCALES = (0.70710677, 1.0, 1.4142135, 2.0, 2.828427)
DELG_DEMO_GLOBAL_SCALES_IND = (0, 1, 2)
DELG_DEMO_MAX_FEATURES = 500

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _latest_export(export_base: str) -> str | None:
  if not os.path.isdir(export_base):
    return None
  versions = [int(d) for d in os.listdir(export_base) if d.isdigit()]
  return os.path.join(export_base, str(max(versions))) if versions else None


def train(workdir: str) -> str:
  """Runs the training binary (resumes; skipped when an export exists). Returns the export."""
  export_dir = _latest_export(os.path.join(workdir, "export"))
  if export_dir:
    logging.info("reusing the trained model %s", export_dir)
    return export_dir
  command = [
    sys.executable,
    "-m",
    "dolg_tf.train",
    f"--logdir={workdir}",
    f"--max_steps={FLAGS.max_steps}",
    f"--synthetic_classes={FLAGS.num_classes}",
    f"--seed={FLAGS.seed}",
    f"--model={FLAGS.model}",
  ]
  print("$ " + " ".join(command[1:]), flush=True)
  subprocess.run(command, check=True, cwd=REPO_ROOT)
  return _latest_export(os.path.join(workdir, "export"))


def export_untrained(workdir: str) -> str:
  """Exports the trained run's network with random weights (the baseline)."""
  from dolg_tf.export import export_model  # noqa: PLC0415

  base = os.path.join(workdir, "untrained_export")
  existing = _latest_export(base)
  if existing:
    return existing
  tf.keras.utils.set_random_seed(FLAGS.seed)
  model_config = config_lib.load_model_config(workdir)
  model = builder.build_model(model_config, image_size=64)
  return export_model.export_saved_model(model, model_config, base)


def extraction_config(model_path: str, path: str):
  """The shipped protos/<model>.pbtxt with model_path (and DELG's pyramid) replaced."""
  config = config_io.load_dolg_config(protos.shipped_config_path(FLAGS.model))
  config.model_path = os.path.abspath(model_path)
  if config.use_local_features:
    del config.image_scales[:]
    config.image_scales.extend(DELG_DEMO_SCALES)
    del config.global_config.image_scales_ind[:]
    config.global_config.image_scales_ind.extend(DELG_DEMO_GLOBAL_SCALES_IND)
    config.local_config.max_feature_num = DELG_DEMO_MAX_FEATURES
  with open(path, "w") as f:
    f.write(text_format.MessageToString(config))
  return config


def evaluate(name: str, model_path: str, benchmark_dir: str, workdir: str):
  """Extracts the benchmark with one model and scores it.

  Returns:
    (rows {label: {protocol: MapResult}}, config path, features dir, metrics path).
  """
  config_path = os.path.join(workdir, f"{name}.pbtxt")
  config = extraction_config(model_path, config_path)
  features_dir = os.path.join(workdir, f"features_{name}")
  if config.use_local_features:
    extractor = local_extractor.LocalGlobalExtractor(config, config_path)
  else:
    extractor = extractor_lib.GlobalExtractor(config, config_path)
  tasks = pipeline.tasks_from_paths(pipeline.list_images(os.path.join(benchmark_dir, "jpg")))
  summary = pipeline.run_extraction(extractor, tasks, features_dir)
  if summary.failed:
    raise RuntimeError(f"{summary.failed} images failed; see {features_dir}/failures")
  gnd_path = os.path.join(benchmark_dir, "gnd_synthetic.pkl")
  metrics_dir = os.path.join(workdir, f"metrics_{name}")
  if not config.use_local_features:
    results, text = perform_retrieval.evaluate(gnd_path, features_dir, features_dir)
    metrics_path = perform_retrieval.write_metrics(results, text, metrics_dir)
    return {name: results}, config_path, features_dir, metrics_path
  from dolg_tf.retrieval import rerank  # noqa: PLC0415

  before, after, text = rerank.evaluate_with_geometric_verification(
    gnd_path,
    features_dir,
    features_dir,
    global_suffix=config.global_descriptor_suffix,
    local_suffix=config.local_descriptor_suffix,
    top_k=FLAGS.gv_top_k,
    min_inliers=FLAGS.gv_min_inliers,
    residual_threshold=FLAGS.gv_residual_threshold,
    max_scale_change=FLAGS.gv_max_scale_change or None,
    max_anisotropy=FLAGS.gv_max_anisotropy or None,
  )
  metrics_path = perform_retrieval.write_metrics(after, text, metrics_dir)
  return {name: before, f"{name} + GV": after}, config_path, features_dir, metrics_path


def main(argv):
  del argv  # unused
  start = time.time()
  default_workdir = "runs/demo" if FLAGS.model == "dolg" else f"runs/demo_{FLAGS.model}"
  workdir = os.path.abspath(
    os.path.join(
      os.environ.get("BUILD_WORKING_DIRECTORY", os.getcwd()), FLAGS.workdir or default_workdir
    )
  )
  trained_export = train(workdir)
  benchmark_dir = os.path.join(workdir, "benchmark")
  if not os.path.exists(os.path.join(benchmark_dir, "gnd_synthetic.pkl")):
    synthetic.write_retrieval_benchmark(
      benchmark_dir, num_classes=FLAGS.num_classes, seed=FLAGS.seed
    )
  untrained_export = export_untrained(workdir)
  outputs = {}
  for name, model_path in (("trained", trained_export), ("untrained", untrained_export)):
    outputs[name] = evaluate(name, model_path, benchmark_dir, workdir)
  print(
    f"\n=== dolg_tf demo ({FLAGS.model.upper()}): synthetic landmarks retrieval "
    "(revisited protocol, mAP %) ==="
  )
  print(f"{'model':<16} {'Easy':>7} {'Medium':>7} {'Hard':>7}")
  for rows, *_rest in outputs.values():
    for label, results in rows.items():
      values = [100 * results[p].mean_ap for p in ("easy", "medium", "hard")]
      print(f"{label:<16} " + " ".join(f"{v:7.2f}" for v in values))
  if FLAGS.model == "delg":
    checks = []
    if FLAGS.gv_max_scale_change:
      checks.append(f"scaling > {FLAGS.gv_max_scale_change:g}x")
    if FLAGS.gv_max_anisotropy:
      checks.append(f"anisotropic > {FLAGS.gv_max_anisotropy:g}")
    rejected = f", fits {' or '.join(checks)} rejected" if checks else ""
    print(
      f"(GV: top {FLAGS.gv_top_k} re-ranked by affine RANSAC inliers, residual threshold "
      f"{FLAGS.gv_residual_threshold:g} px{rejected})"
    )
  print("\nartifacts:")
  print(f"  training run (checkpoints, TensorBoard, configs): {workdir}")
  print(f"  SavedModel for TF Serving / extraction:           {trained_export}")
  print(f"  untrained baseline SavedModel:                    {untrained_export}")
  print(f"  benchmark images and gnd:                         {benchmark_dir}")
  for name, (_, config_path, features_dir, metrics_path) in outputs.items():
    print(f"  {name}: config {config_path}, features {features_dir}, metrics {metrics_path}")
  print(f"\ntotal time {time.time() - start:.0f} s")


if __name__ == "__main__":
  app.run(main)
