"""Parameters, feature maps and forward speed of each backbone in DOLG (or DELG), one run.

  python benchmarks/backbones_benchmark.py \\
      [--backbones=resnet50,efficientnet_b0,efficientnetv2_s,convnext_tiny] \\
      [--model=dolg] [--image_size=224] [--batch_size=1] [--iterations=10] [--threads=0]

--backbones=all: every backbone of ModelConfig (ResNet50/101/152 as resnet50, ...;
the large ones take minutes to build and GBs of memory). For each backbone it
builds the model (random weights: speed does not depend on them), prints the
backbone's parameters, the whole model's, the f3 / f4 channels, the stride-16
receptive field, the build time, and the forward speed (img/s of
model(images, training=False) in one tf.function, float32, after two warm-up
calls; the median of --iterations timed calls). Numbers are for this
machine: compare them within one run.

--check_export: for each backbone, the tiny-head DOLG or DELG model is
exported by versions.export_saved_model in float32 and bfloat16
(export.precision), loaded, and one 64 x 72 image is extracted through the
Extractor (DELG: global and local); prints seconds and the cosine of the
bfloat16 and float32 global descriptors.
"""

import os
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
SMALL = "resnet50,efficientnet_b0,efficientnetv2_s,convnext_tiny"
flags.DEFINE_string("backbones", SMALL, "Comma-separated backbones (resnet50/101/152 or 'all').")
flags.DEFINE_enum("model", "dolg", ["dolg", "delg"], "Which network the backbone serves in.")
flags.DEFINE_integer("image_size", 224, "Square input side.")
flags.DEFINE_integer("batch_size", 1, "Images per forward call.")
flags.DEFINE_integer("iterations", 10, "Timed forward calls (0: parameters only, no forward).")
flags.DEFINE_integer("threads", 0, "TF intra-op threads (0 = TF's default).")
flags.DEFINE_bool(
  "check_export",
  False,
  "Also export each model (float32 and bfloat16 SavedModels), load it and extract one image "
  "through dolg_tf.extraction (minutes per backbone on a CPU).",
)


def _config(backbone: str, model: str):
  from dolg_tf import config as config_lib

  fields = {"backbone": backbone}
  if backbone.startswith("resnet"):
    fields = {"backbone": "resnet", "backbone_depth": int(backbone[len("resnet") :])}
  if model == "delg":
    return config_lib.delg_config(**fields)
  return config_lib.ModelConfig(**fields)


def _names(value: str) -> list[str]:
  from dolg_tf import config_sections

  if value == "all":
    return ["resnet50", "resnet101", "resnet152"] + list(config_sections.KERAS_APP_BACKBONES)
  return [v.strip() for v in value.split(",") if v.strip()]


def measure(backbone: str, model_name: str, image_size: int, batch_size: int, iterations: int):
  """{'params', 'backbone_params', 'channels', 'field', 'build_s', 'img_s'} of one backbone."""
  import tensorflow as tf

  from dolg_tf.model import backbones, builder

  start = time.perf_counter()
  config = _config(backbone, model_name)
  model = builder.build_model(config, image_size=64)
  build_s = time.perf_counter() - start
  images = tf.random.uniform([batch_size, image_size, image_size, 3], 0.0, 255.0, seed=1)
  forward = tf.function(lambda x: model(x, training=False))
  for _ in range(2 if iterations else 0):
    forward(images).numpy()
  times = []
  for _ in range(iterations):
    start = time.perf_counter()
    forward(images).numpy()
    times.append(time.perf_counter() - start)
  if config.backbone == "resnet":
    field = backbones.stage3_receptive_field(
      config.backbone_depth, config.backbone_layout, config.block3_strides
    )
  else:
    field = model.backbone.receptive_field()
  return dict(
    params=model.count_params(),
    backbone_params=model.backbone.count_params(),
    channels=model.backbone.output_channels,
    field=field[:2],
    build_s=build_s,
    img_s=batch_size / statistics.median(times) if times else float("nan"),
  )


def check_export(backbone: str, model_name: str) -> str:
  """Exports, loads and extracts one image in float32 and bfloat16; one summary line."""
  import dataclasses
  import tempfile

  import numpy as np

  from dolg_tf import config as config_lib
  from dolg_tf.export import versions
  from dolg_tf.extraction import extractor as extractor_lib
  from dolg_tf.model import builder

  config = _config(backbone, model_name)
  config = dataclasses.replace(config, embedding_dim=16, local_dim=16, delg_reduced_dim=8)
  model = builder.build_model(config, image_size=64)
  image = np.random.default_rng(3).integers(0, 256, [72, 64, 3], dtype=np.uint8)
  descriptors, seconds = {}, {}
  for precision in ("float32", "bfloat16"):
    start = time.perf_counter()
    folder = tempfile.mkdtemp(prefix="backbones_benchmark_")
    export_config = config_lib.ExportConfig(
      max_image_size=80, image_scales=(0.5, 1.0), precision=precision
    )
    export_dir = versions.export_saved_model(model, config, folder, export_config=export_config)
    config_path = os.path.join(folder, "extract.pbtxt")
    with open(config_path, "w") as f:
      f.write(f'model_path: "{export_dir}"\nmax_image_size: 80\n')
      if model_name == "delg":
        f.write("use_local_features: true\nlocal_config { max_feature_num: 20 }\n")
    out = extractor_lib.Extractor.from_config_file(config_path).extract(image)
    descriptors[precision] = out["global"] if model_name == "delg" else out
    seconds[precision] = time.perf_counter() - start
  cosine = float(np.dot(descriptors["float32"], descriptors["bfloat16"]))
  return (
    f"{backbone} {model_name}: export+load+extract float32 {seconds['float32']:.0f} s, "
    f"bfloat16 {seconds['bfloat16']:.0f} s, descriptor cosine bf16/fp32 {cosine:.4f}"
  )


def main(argv):
  del argv
  import tensorflow as tf

  from dolg_tf.keras_api import keras

  if FLAGS.threads:
    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
  print(
    f"{FLAGS.model}, {FLAGS.image_size} px, batch {FLAGS.batch_size}, float32, "
    f"median of {FLAGS.iterations} calls"
  )
  header = (
    f"{'backbone':18s} {'backbone params':>15s} {'model params':>13s} {'f3 ch':>6s} "
    f"{'f4 ch':>6s} {'f3 field':>10s} {'build s':>8s} {'img/s':>8s}"
  )
  print(header)
  for name in _names(FLAGS.backbones):
    r = measure(name, FLAGS.model, FLAGS.image_size, FLAGS.batch_size, FLAGS.iterations)
    print(
      f"{name:18s} {r['backbone_params']:15,d} {r['params']:13,d} {r['channels'][0]:6d} "
      f"{r['channels'][1]:6d} {r['field'][0]:>5d}/{r['field'][1]:<4d} {r['build_s']:8.1f} "
      f"{r['img_s']:8.2f}",
      flush=True,
    )
    if FLAGS.check_export:
      print("  " + check_export(name, FLAGS.model), flush=True)
    keras.backend.clear_session()


if __name__ == "__main__":
  app.run(main)
