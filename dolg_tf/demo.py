"""The README's main job: train -> export -> extract -> retrieve on synthetic landmarks.

  dolg-demo [--model=dolg|delg] [--workdir=runs/demo] [--max_steps=600]

1. `dolg-train --experiment=<model>_synthetic --logdir=<workdir>` (the same
   run as `bazel run //dolg_tf:train`): generates the synthetic training set, trains a
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
matching + RANSAC) of each query's top 100 (DEMO_GEOMETRIC_VERIFICATION).

Every step is resumable: re-running skips training, data and descriptors
that are already there. Ctrl-C or SIGTERM during training stops the training
process too (SIGTERM: it saves a checkpoint first) before the demo exits with
130 / 143 (cli.py).
"""

import dataclasses
import os
import signal
import subprocess
import sys
import time

from absl import flags, logging
from google.protobuf import text_format

from dolg_tf import config as config_lib
from dolg_tf import experiments, protos, run_layout
from dolg_tf.data import synthetic_benchmark
from dolg_tf.export import versions
from dolg_tf.extraction import extractor as extractor_lib
from dolg_tf.extraction import pipeline, task_sources
from dolg_tf.io import config_io
from dolg_tf.keras_api import keras
from dolg_tf.model import builder
from dolg_tf.retrieval import evaluation as evaluation_lib
from dolg_tf.retrieval import geometric_verification, retrieval_config
from dolg_tf.utils import cli

FLAGS = flags.FLAGS

# The training fields the demo has a flag for (it passes them on to dolg-train).
DEMO_FIELDS = ("train.max_steps", "train.seed", "data.synthetic_classes")


def _define_field_flags(flag_values: flags.FlagValues) -> dict[str, str]:
  """--max_steps, --seed, --synthetic_classes (default: the experiment's); flag -> field path."""
  defaults = experiments.get("dolg_synthetic")
  sections = ("train", "data")
  skip = [
    f"{section}.{field.name}"
    for section in sections
    for field in dataclasses.fields(getattr(defaults, section))
    if f"{section}.{field.name}" not in DEMO_FIELDS
  ]
  return cli.define_config_flags(
    defaults,
    sections=sections,
    skip=skip,
    flag_values=flag_values,
    default_help="from the --model's synthetic experiment",
  )


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the command's flags (a second call is a no-op)."""
  if "workdir" not in flag_values:
    flags.DEFINE_enum(
      "model", "dolg", ["dolg", "delg"], "Network trained and evaluated.", flag_values=flag_values
    )
    flags.DEFINE_string(
      "workdir",
      None,
      "Where every artifact of the demo goes (default runs/demo, runs/demo_delg).",
      flag_values=flag_values,
    )
  _define_field_flags(flag_values)


# Geometric verification of the DELG demo. DELF's settings are meant for
# ~1024 px photos; the benchmark views are 128 px, where keypoints sit on a
# 16 px / scale grid: the RANSAC threshold is scaled down, and degenerate
# affine fits (which collect grid "inliers" between unrelated images) are
# rejected. Measured effect: docs/BENCHMARKS.md, "DELG demo".
DEMO_GEOMETRIC_VERIFICATION = geometric_verification.GeometricVerificationConfig(
  top_k=100, residual_threshold=4.0, max_scale_change=3.0, max_anisotropy=2.0
)

# protos/delg.pbtxt's 7-scale pyramid (0.25 .. 2) is DELG's for ~1024 px
# photos; its smallest scales turn a 128 px view into 2x2 .. 4x4 feature maps
# whose keypoints cannot be located. The demo keeps scales from 0.7071 up to
# 2.8284 for local features and 0.7071 .. 1.4142 for the global descriptor
# (as the shipped config does).
DELG_DEMO_SCALES = (0.70710677, 1.0, 1.4142135, 2.0, 2.828427)
DELG_DEMO_GLOBAL_SCALES_IND = (0, 1, 2)
DELG_DEMO_MAX_FEATURES = 500


def experiment(flag_values: flags.FlagValues = FLAGS) -> config_lib.ExperimentConfig:
  """The demo's training experiment with the demo's flags applied."""
  overrides = cli.given_overrides(_define_field_flags(flag_values), flag_values)
  try:
    return config_lib.override(experiments.get(f"{flag_values.model}_synthetic"), overrides)
  except config_lib.ConfigError as e:
    raise cli.UserError(str(e)) from None


def train(layout: run_layout.RunLayout) -> str:
  """Runs the training binary (resumes; skipped when an export exists). Returns the export."""
  export_dir = layout.latest_export()
  if export_dir:
    logging.info("reusing the trained model %s", export_dir)
    return export_dir
  config = experiment()
  command = [
    sys.executable,
    "-m",
    "dolg_tf.train",
    f"--experiment={FLAGS.model}_synthetic",
    f"--logdir={layout.root}",
    f"--max_steps={config.train.max_steps}",
    f"--synthetic_classes={config.data.synthetic_classes}",
    f"--seed={config.train.seed}",
  ]
  print("$ dolg-train " + " ".join(command[3:]), flush=True)
  returncode = _run_training(command)
  if returncode == 143:
    print("training stopped by SIGTERM; run the demo again to resume", file=sys.stderr)
    sys.exit(returncode)
  if returncode:
    # dolg-train printed its own error; exit with its status, without a traceback.
    sys.exit(returncode)
  return layout.latest_export()


# Seconds the training process gets to stop after the demo is interrupted: to
# end on its own Ctrl-C (a terminal signals both), then to save after SIGTERM.
TRAINING_SIGINT_SECONDS = 2.0
TRAINING_SIGTERM_SECONDS = 120.0


def _run_training(command: list[str]) -> int:
  """Runs the training process; if the demo is interrupted, stops it first (see module doc)."""
  process = subprocess.Popen(command)
  try:
    return process.wait()
  except BaseException:  # Ctrl-C, cli.Terminated: the child must not outlive the demo
    for sig, seconds in (
      (None, TRAINING_SIGINT_SECONDS),
      (signal.SIGTERM, TRAINING_SIGTERM_SECONDS),
      (signal.SIGKILL, None),
    ):
      if sig is not None and process.poll() is None:
        process.send_signal(sig)
      try:
        process.wait(timeout=seconds)
        break
      except subprocess.TimeoutExpired:
        continue
    raise


def export_untrained(layout: run_layout.RunLayout) -> str:
  """Exports the trained run's network with random weights (the baseline)."""
  base = os.path.join(layout.root, "untrained_export")
  existing = run_layout.latest_version(base)
  if existing:
    return existing
  config = config_lib.load_config(layout.config)
  keras.utils.set_random_seed(config.train.seed)
  model = builder.build_model(config.model, image_size=64)
  return versions.export_saved_model(model, config.model, base, export_config=config.export)


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
  extractor = extractor_lib.Extractor(config, config_path)
  tasks = task_sources.tasks_from_paths(
    task_sources.list_images(os.path.join(benchmark_dir, "jpg"))
  )
  summary = pipeline.run_extraction(extractor, tasks, features_dir)
  if summary.failed:
    raise RuntimeError(f"{summary.failed} images failed; see {features_dir}/failures.tsv")
  gnd_path = os.path.join(benchmark_dir, "gnd_synthetic.pkl")
  metrics_dir = os.path.join(workdir, f"metrics_{name}")
  evaluation = evaluation_lib.evaluate(
    gnd_path,
    features_dir,
    features_dir,
    config=retrieval_config.RetrievalConfig(
      suffix=config.global_descriptor_suffix,
      local_suffix=config.local_descriptor_suffix,
      use_geometric_verification=config.use_local_features,
      geometric_verification=DEMO_GEOMETRIC_VERIFICATION,
    ),
  )
  metrics_path = evaluation_lib.write_metrics(evaluation.results, evaluation.summary, metrics_dir)
  rows = {name: evaluation.global_results}
  if config.use_local_features:
    rows[f"{name} + GV"] = evaluation.results
  return rows, config_path, features_dir, metrics_path


def main(argv):
  del argv  # unused
  start = time.time()
  default_workdir = "runs/demo" if FLAGS.model == "dolg" else f"runs/demo_{FLAGS.model}"
  layout = run_layout.RunLayout(cli.resolve_path(FLAGS.workdir or default_workdir))
  workdir = layout.root
  experiment()  # Bad flag values are reported before any work starts.
  trained_export = train(layout)
  config = config_lib.load_config(layout.config)
  benchmark_dir = os.path.join(workdir, "benchmark")
  if not os.path.exists(os.path.join(benchmark_dir, "gnd_synthetic.pkl")):
    synthetic_benchmark.write_retrieval_benchmark(
      benchmark_dir, num_classes=config.data.synthetic_classes, seed=config.train.seed
    )
  untrained_export = export_untrained(layout)
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
    gv = DEMO_GEOMETRIC_VERIFICATION
    print(
      f"(GV: top {gv.top_k} re-ranked by affine RANSAC inliers, residual threshold "
      f"{gv.residual_threshold:g} px, fits scaling > {gv.max_scale_change:g}x or "
      f"anisotropic > {gv.max_anisotropy:g} rejected)"
    )
  print("\nartifacts:")
  print(f"  training run (checkpoints, TensorBoard, config): {workdir}")
  print(f"  SavedModel for TF Serving / extraction:          {trained_export}")
  print(f"  untrained baseline SavedModel:                   {untrained_export}")
  print(f"  benchmark images and gnd:                        {benchmark_dir}")
  for name, (_, config_path, features_dir, metrics_path) in outputs.items():
    print(f"  {name}: config {config_path}")
    print(f"    features {features_dir}")
    print(f"    metrics {metrics_path}")
  print(f"\ntotal time {time.time() - start:.0f} s")


def run():
  """The `dolg-demo` command (the README's main job)."""
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
