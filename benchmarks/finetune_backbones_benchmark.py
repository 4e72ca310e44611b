"""Fine-tunes DOLG from ImageNet-shaped weights per backbone family on the synthetic landmarks.

  python benchmarks/finetune_backbones_benchmark.py \\
      [--backbones=resnet50,efficientnet_b0,efficientnetv2_s,convnext_tiny,official] \\
      [--steps=20] [--image_size=96] [--batch_size=32] [--synthetic_classes=16] \\
      [--workdir=/tmp/finetune_backbones]

For each row the demo's path (dolg_tf/demo.py) on the demo's data:

1. Writes the backbone's ImageNet weights file in keras.applications' own
   `*_notop.h5` format with random values (keras' `save_weights` of the
   application, as tests/keras_app_backbones_test.py writes it; no download):
   `resnet50` is keras' ResNet50 file for the 'keras' layout with keras'
   caffe input (keras_h5.KERAS_IMAGENET_INPUT); `official` is an official
   DOLG checkpoint instead (the official state-dict keys of the demo's
   R26 x 0.25 DOLG with multi-atrous, random values, as an .npz) converted
   by `dolg-convert` (python -m dolg_tf.convert.convert_official_dolg).
2. Fine-tunes `dolg-train --experiment=dolg_synthetic` (python -m
   dolg_tf.train, a subprocess as the demo runs it) for --steps steps from it:
   train.imagenet_checkpoint = the .h5, or train.init_from = the converter's
   output folder; the demo's heads (local_dim 128, embedding 128, s = 11.31).
3. Exports the last checkpoint (versions.export_saved_model, timed: "export s").
4. Extracts the demo's held-out retrieval benchmark with protos/dolg.pbtxt and
   scores it with the revisited Easy/Medium/Hard protocol (demo.evaluate).

"train img/s" is steps x batch / wall time between the TensorBoard events of
step 2 and the last step (the first step, which traces the graph, left out).
Every row is kept in `<workdir>/<row>/result.json`: a re-run prints it again
without training (delete the folder to measure again). The table is printed
at the end; a row that fails prints its error and the others go on.
"""

import json
import os
import subprocess
import sys
import time
import traceback

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
DEFAULT_ROWS = "resnet50,efficientnet_b0,efficientnetv2_s,convnext_tiny,official"
flags.DEFINE_list(
  "backbones",
  DEFAULT_ROWS,
  "Rows: resnet50, any keras.applications model.backbone (efficientnet_b0, efficientnetv2_s, "
  "convnext_tiny, ...) and 'official' (a converted official DOLG checkpoint).",
)
flags.DEFINE_integer("steps", 20, "Fine-tuning steps per row (train img/s needs 3 or more).")
flags.DEFINE_integer("image_size", 96, "Training crop side (the demo's: 96).")
flags.DEFINE_integer("batch_size", 32, "Training batch (the demo's: 32).")
flags.DEFINE_integer("synthetic_classes", 16, "Synthetic landmark classes (the demo's: 16).")
flags.DEFINE_integer("seed", 0, "Seed of the data, the benchmark and the written weights.")
flags.DEFINE_string("workdir", "/tmp/finetune_backbones", "Where every row's run goes.")
# demo.evaluate extracts with the shipped protos/<model>.pbtxt.
flags.DEFINE_enum("model", "dolg", ["dolg"], "The network fine-tuned (DOLG).")


def model_fields(row: str) -> dict:
  """The model section overrides of a keras.applications or ResNet50 row over dolg_synthetic."""
  from dolg_tf.model import keras_h5

  if row == "resnet50":
    return dict(
      backbone="resnet",
      backbone_depth=50,
      backbone_layout="keras",
      backbone_width_multiplier=1.0,
      **keras_h5.KERAS_IMAGENET_INPUT,
    )
  return dict(backbone=row, backbone_width_multiplier=1.0)


def keras_application(row: str):
  """keras.applications' network of `row` as its ImageNet file is written (with preprocessing)."""
  import numpy as np

  from dolg_tf.keras_api import keras
  from dolg_tf.model import keras_app_backbones

  if row == "resnet50":
    return keras.applications.ResNet50(include_top=False, weights=None)
  builder_name = keras_app_backbones.BUILDERS[row][0]
  application = getattr(keras.applications, builder_name)(
    include_top=False, weights=None, input_shape=(None, None, 3)
  )
  if row.startswith("efficientnet_"):  # V1's input Normalization: the ImageNet statistics.
    norm = next(x for x in application.layers if isinstance(x, keras.layers.Normalization))
    norm.set_weights([np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225]) ** 2, 0])
  return application


def write_imagenet_h5(row: str, folder: str, seed: int) -> str:
  """Writes `row`'s keras.applications `*_notop.h5` (random values); returns its path."""
  from dolg_tf.keras_api import keras

  keras.utils.set_random_seed(seed)
  application = keras_application(row)
  name = application.name if row != "resnet50" else "resnet50_weights_tf_dim_ordering_tf_kernels"
  path = os.path.join(folder, f"{name}_notop.h5")
  application.save_weights(path)
  keras.backend.clear_session()
  return path


def write_official_checkpoint(folder: str, seed: int, log) -> str:
  """An official-format DOLG state dict (.npz) converted by dolg-convert; its folder."""
  import numpy as np

  from dolg_tf import config as config_lib
  from dolg_tf import experiments
  from dolg_tf.convert import official_dolg, official_structure
  from dolg_tf.keras_api import keras
  from dolg_tf.model import builder

  keras.utils.set_random_seed(seed)
  demo = experiments.get("dolg_synthetic").model
  config = config_lib.ModelConfig(
    backbone_depth=demo.backbone_depth,
    backbone_width_multiplier=demo.backbone_width_multiplier,
    local_dim=demo.local_dim,
    embedding_dim=demo.embedding_dim,
    use_multi_atrous=True,
    **official_structure.OFFICIAL_INPUT,
  )
  state = official_dolg.official_state_dict(builder.build_model(config, image_size=64))
  keras.backend.clear_session()
  checkpoint = os.path.join(folder, "official_dolg_state.npz")
  np.savez(checkpoint, **state)
  converted = os.path.join(folder, "converted")
  if not os.path.isfile(os.path.join(converted, "config.json")):
    dilations = ",".join(str(d) for d in config.atrous_dilations)
    _run(
      [
        "-m",
        "dolg_tf.convert.convert_official_dolg",
        f"--checkpoint={checkpoint}",
        f"--output_dir={converted}",
        f"--atrous_dilations={dilations}",
      ],
      log,
      "dolg-convert",
    )
  return converted


def experiments_model():
  """The demo's (dolg_synthetic's) model section."""
  from dolg_tf import experiments

  return experiments.get("dolg_synthetic").model


def _run(args: list[str], log: str, shown: str) -> None:
  """Runs `python <args>` with its output appended to `log`; raises naming the log."""
  print(f"  $ {shown} {' '.join(args[2:])}", flush=True)
  with open(log, "a") as out:
    returncode = subprocess.call([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT)
  if returncode:
    raise RuntimeError(f"{shown} exited with {returncode}; see {log}")


def fine_tune(row: str, run_dir: str, log: str) -> dict:
  """Writes the initial weights, runs dolg-train on them; returns the config file's overrides."""
  overrides = {
    "data": {"image_size": FLAGS.image_size, "synthetic_classes": FLAGS.synthetic_classes},
    "train": {
      "max_steps": FLAGS.steps,
      "batch_size": FLAGS.batch_size,
      "warmup_steps": max(1, FLAGS.steps // 10),
      "seed": FLAGS.seed,
      "log_every": 1,
      "checkpoint_every": FLAGS.steps,
      "export_at_end": False,
    },
  }
  config_files = []
  if row == "official":
    converted = write_official_checkpoint(run_dir, FLAGS.seed, log)
    config_files.append(os.path.join(converted, "config.json"))  # the converted model section
    overrides["train"]["init_from"] = converted
    # The demo's head scale for its 128-d embeddings (the margin head is re-initialised).
    overrides["model"] = {"head_scale": experiments_model().head_scale}
  else:
    overrides["model"] = model_fields(row)
    overrides["train"]["imagenet_checkpoint"] = write_imagenet_h5(row, run_dir, FLAGS.seed)
  config_path = os.path.join(run_dir, "finetune.json")
  with open(config_path, "w") as f:
    json.dump(overrides, f, indent=1)
  config_files.append(config_path)
  _run(
    ["-m", "dolg_tf.train", "--experiment=dolg_synthetic", f"--logdir={run_dir}/run"]
    + [f"--config_file={path}" for path in config_files],
    log,
    "dolg-train",
  )
  return overrides


def train_images_per_second(summaries: str, batch_size: int) -> float:
  """Images/s between the 'loss' events of step 2 and the last step (wall time)."""
  import tensorflow as tf

  times = {}
  for path in tf.io.gfile.glob(os.path.join(summaries, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      if any(value.tag == "loss" for value in event.summary.value):
        times[int(event.step)] = event.wall_time
  steps = sorted(s for s in times if s >= 2)
  if len(steps) < 2:
    return float("nan")
  return (steps[-1] - steps[0]) * batch_size / (times[steps[-1]] - times[steps[0]])


def measure_row(row: str, benchmark_dir: str) -> dict:
  """Fine-tunes, exports, extracts and evaluates one row; its result (also in result.json)."""
  from dolg_tf import demo, run_layout
  from dolg_tf.export import versions
  from dolg_tf.keras_api import keras
  from dolg_tf.model import checkpoint_restore
  from dolg_tf.utils import files

  run_dir = os.path.join(FLAGS.workdir, row)
  result_path = os.path.join(run_dir, "result.json")
  if os.path.isfile(result_path):
    with open(result_path) as f:
      return json.load(f)
  os.makedirs(run_dir, exist_ok=True)
  log = os.path.join(run_dir, "log.txt")
  print(f"{row}: fine-tuning (log {log})", flush=True)
  fine_tune(row, run_dir, log)
  layout = run_layout.RunLayout(os.path.join(run_dir, "run"))
  experiment, model, checkpoint = checkpoint_restore.restore_run(layout.root)
  start = time.perf_counter()
  export_dir = versions.export_saved_model(
    model, experiment.model, layout.export, export_config=experiment.export, source=checkpoint
  )
  export_seconds = time.perf_counter() - start
  params = int(model.count_params())
  keras.backend.clear_session()
  print(f"{row}: exported in {export_seconds:.0f} s; extracting the benchmark", flush=True)
  rows, *_ = demo.evaluate("finetuned", export_dir, benchmark_dir, run_dir)
  results = rows["finetuned"]
  result = dict(
    row=row,
    backbone=experiment.model.backbone,
    params=params,
    train_img_s=train_images_per_second(layout.train_summaries, FLAGS.batch_size),
    map_easy=100 * results["easy"].mean_ap,
    map_medium=100 * results["medium"].mean_ap,
    map_hard=100 * results["hard"].mean_ap,
    export_s=export_seconds,
    steps=FLAGS.steps,
    image_size=FLAGS.image_size,
    batch_size=FLAGS.batch_size,
  )
  files.atomic_write_text(result_path, json.dumps(result, indent=1))
  return result


def format_row(result: dict) -> str:
  """One line of the table."""
  return (
    f"{result['row']:18s} {result['params']:12,d} {result['train_img_s']:10.2f} "
    f"{result['map_easy']:7.2f} {result['map_medium']:7.2f} {result['map_hard']:7.2f} "
    f"{result['export_s']:9.0f}"
  )


def main(argv):
  del argv
  from dolg_tf.data import synthetic_benchmark

  os.makedirs(FLAGS.workdir, exist_ok=True)
  benchmark_dir = os.path.join(FLAGS.workdir, "benchmark")
  if not os.path.exists(os.path.join(benchmark_dir, "gnd_synthetic.pkl")):
    synthetic_benchmark.write_retrieval_benchmark(
      benchmark_dir, num_classes=FLAGS.synthetic_classes, seed=FLAGS.seed
    )
  lines = []
  for row in FLAGS.backbones:
    start = time.perf_counter()
    try:
      lines.append(format_row(measure_row(row, benchmark_dir)))
    except Exception as e:  # noqa: BLE001 (a failed row is reported; the others go on)
      error_path = os.path.join(FLAGS.workdir, row, "error.txt")
      os.makedirs(os.path.dirname(error_path), exist_ok=True)
      with open(error_path, "w") as f:
        traceback.print_exc(file=f)
      lines.append(f"{row:18s} failed: {' '.join(str(e).split())[:160]} (see {error_path})")
    print(f"{lines[-1]}   ({time.perf_counter() - start:.0f} s)", flush=True)
  print(
    f"\nDOLG fine-tuned {FLAGS.steps} steps, batch {FLAGS.batch_size}, {FLAGS.image_size} px "
    f"crops, {FLAGS.synthetic_classes} synthetic classes; mAP % on the demo's benchmark"
  )
  print(
    f"{'row':18s} {'params':>12s} {'train img/s':>10s} {'E':>7s} {'M':>7s} {'H':>7s} "
    f"{'export s':>9s}"
  )
  for line in lines:
    print(line)


if __name__ == "__main__":
  app.run(main)
