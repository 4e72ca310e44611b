r"""Where the extraction time goes: the serving signature taken apart, step by step, in one run.

One untrained DOLG (`--depth`, pycls layout) at `--image_size`^2, one scale,
`--precision`; each row runs `--num_images` images a round, the rows in turn
for `--rounds` timed rounds after an untimed one, and gives its median:
  static      tf.function of the Keras model (as trained: batch norms not
              folded; at --precision), input [1, S, S, 3] fixed
  dynamic     the same with input [1, None, None, 3] (the export's shapes)
  resize      dynamic + the uint8 -> float cast and the bilinear resize
  map_fn      resize inside tf.map_fn over the scale tensor (the export's loop)
  signature   the exported SavedModel's serving_default (+ pooling, L2;
              export.fold_batch_norms on, the default)
  unfolded    the same, exported with export.fold_batch_norms=false
  frozen      the same, exported with export.freeze_weights (constant weights)
  baseline    with --baseline_export: the serving_default of an export made by
              an earlier version of this code (the "before" of a change)
  extractor   Extractor.extract on a decoded array (+ Python, numpy pooling)
  pipeline    pipeline.run_extraction over JPEG files (+ decode, write)
and the ratio of each to `static`; then the same for each `--pyramid`
against the sum of its single-scale signature calls, and the fp32 GEMM
rate of this CPU (tf.matmul 4096^3) with the img/s it implies for the
network's FLOPs (counted by TF's profiler on the static graph; the bfloat16 GEMM too
with --precision=bfloat16). With
--trace (default), a TF profiler trace of `static` and of `signature`, parsed:
the op time summed per category (convolutions, matmuls, element-wise and
normalisation, pooling, resize, padding and layout, loop and control, other)
next to the wall time, so the signature's extra cost is located by op.

Usage:
  .venv/bin/python benchmarks/serving_breakdown_benchmark.py [--precision=bfloat16]
"""

import collections
import dataclasses
import functools
import glob
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from PIL import Image  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

from benchmarks import interleaved  # noqa: E402
from dolg_tf import config as config_lib  # noqa: E402
from dolg_tf.export import serving_graph, versions  # noqa: E402
from dolg_tf.extraction import extractor as extractor_lib  # noqa: E402
from dolg_tf.extraction import pipeline, task_sources  # noqa: E402
from dolg_tf.io import config_io, savedmodel_contract  # noqa: E402
from dolg_tf.keras_api import keras  # noqa: E402
from dolg_tf.model import builder  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("depth", 101, "ResNet depth (pycls layout).")
flags.DEFINE_integer("image_size", 512, "Side of the square images.")
flags.DEFINE_integer("num_images", 4, "Images per row and round.")
flags.DEFINE_integer("rounds", 3, "Timed rounds (each row once a round, in turn; medians).")
flags.DEFINE_enum(
  "precision", "float32", savedmodel_contract.EXPORT_PRECISIONS, "export.precision."
)
flags.DEFINE_multi_string(
  "pyramid",
  [
    ",".join(map(str, savedmodel_contract.PYRAMID_PRESETS["delf_3"])),
    ",".join(map(str, savedmodel_contract.PYRAMID_PRESETS["official_5"])),
  ],
  "Multi-scale pyramid rows (comma-separated scales; repeat the flag for more): default the "
  "shipped 3 scales and the official evaluation's 5.",
)
flags.DEFINE_bool("gemm", True, "Measure the fp32 GEMM rate and count the network's FLOPs.")
flags.DEFINE_bool("trace", True, "Profile static and signature and break their op time down.")
flags.DEFINE_integer("top_ops", 8, "Op types listed under the trace table for each function.")
flags.DEFINE_string(
  "baseline_export",
  None,
  "A SavedModel of the same network exported by an earlier version of this code (one scale, "
  "max_image_size >= image_size): its serving_default is timed and traced as 'baseline'.",
)

# Op types of a TF CPU trace by category (the rest is "other").
OP_CATEGORIES = {
  "convolution": (
    "Conv2D",
    "_FusedConv2D",
    "DepthwiseConv2dNative",
    "_MklConv2D",
    "_MklFusedConv2D",
  ),
  "matmul": ("MatMul", "_FusedMatMul", "BatchMatMulV2", "_MklMatMul", "_MklFusedMatMul"),
  "elementwise, norm": (
    "FusedBatchNormV3",
    "Relu",
    "AddV2",
    "Add",
    "Mul",
    "Sub",
    "Maximum",
    "Minimum",
    "Rsqrt",
    "RealDiv",
    "Softplus",
    "Square",
    "Sqrt",
    "Cast",
    "Neg",
    "Select",
    "SelectV2",
    "Pow",
  ),
  "pooling, reductions": ("MaxPool", "AvgPool", "Mean", "Sum", "Max", "Min", "Prod", "L2Loss"),
  "resize": ("ResizeBilinear",),
  "padding, layout": (
    "Pad",
    "PadV2",
    "MirrorPad",
    "Transpose",
    "Reshape",
    "ConcatV2",
    "GatherV2",
    "Slice",
    "StridedSlice",
    "Squeeze",
    "ExpandDims",
    "Pack",
    "Unpack",
    "_MklToTf",
  ),
  "loop, control": (
    "While",
    "StatelessWhile",
    "If",
    "StatelessIf",
    "Enter",
    "Exit",
    "NextIteration",
    "Switch",
    "Merge",
    "LoopCond",
    "Less",
    "LogicalAnd",
    "TensorListReserve",
    "TensorListSetItem",
    "TensorListStack",
    "TensorListFromTensor",
    "TensorListGetItem",
    "TensorListElementShape",
    "PartitionedCall",
    "StatefulPartitionedCall",
    "Identity",
    "Const",
    "NoOp",
    "Range",
    "Shape",
  ),
}
CATEGORY_OF = {op: category for category, ops in OP_CATEGORIES.items() for op in ops}
# oneDNN's graph rewrites rename ops (_MklNativePadWithFusedConv2D is a Pad fused into a Conv2D).
ONEDNN_PREFIXES = ("_MklNativePadWith", "_MklNative", "_MklPadWith", "_Mkl", "_")


def op_category(op_type: str) -> str:
  """The category of a traced op type, oneDNN's renamed ops included."""
  for prefix in ("",) + ONEDNN_PREFIXES:
    if op_type.startswith(prefix):
      base = op_type[len(prefix) :]
      for candidate in (base, f"_{base}"):
        if candidate in CATEGORY_OF:
          return CATEGORY_OF[candidate]
  return "other"


def _flops(forward, size) -> float:
  concrete = forward.get_concrete_function(tf.TensorSpec([1, size, size, 3], tf.float32))
  options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  options["output"] = "none"
  graph = concrete.graph
  info = tf.compat.v1.profiler.profile(graph, options=options)
  return float(info.total_float_ops)


def _gemm_rate(dtype=tf.float32, n=4096, repeats=5) -> float:
  a = tf.cast(tf.random.normal([n, n]), dtype)
  b = tf.cast(tf.random.normal([n, n]), dtype)
  matmul = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32)))
  matmul().numpy()
  start = time.perf_counter()
  for _ in range(repeats):
    matmul().numpy()
  return 2.0 * n**3 * repeats / (time.perf_counter() - start)


def trace_breakdown(fn, inputs, logdir):
  """(wall s per call, {category: op s per call}, {op type: s per call}) of a profiled run."""
  tf.profiler.experimental.start(logdir)
  start = time.perf_counter()
  for x in inputs:
    fn(x)
  wall = time.perf_counter() - start
  tf.profiler.experimental.stop()
  path = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1]
  with open(path, "rb") as f:
    space = xplane_pb2.XSpace.FromString(f.read())
  by_op = collections.Counter()
  for plane in space.planes:
    if not plane.name.startswith("/host:"):
      continue
    for line in plane.lines:
      if not line.name.startswith("tf_"):  # executor threads; "python" holds eager wrappers
        continue
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        if ":" in name and "::" not in name:
          by_op[name.rsplit(":", 1)[1]] += event.duration_ps * 1e-12
  by_category = collections.Counter()
  for op, seconds in by_op.items():
    by_category[op_category(op)] += seconds
  n = len(inputs)
  return (
    wall / n,
    {k: v / n for k, v in by_category.items()},
    {k: v / n for k, v in by_op.most_common(FLAGS.top_ops)},
  )


def print_traces(traces):
  """One column per traced function: wall time and op time per category, ms per image."""
  names = list(traces)
  print("profiler trace, ms per image (op time summed over TF's executor threads):")
  print(f"  {'':22s}" + "".join(f"{n:>12s}" for n in names))
  print(f"  {'wall':22s}" + "".join(f"{traces[n][0] * 1e3:12.1f}" for n in names))
  totals = [sum(traces[n][1].values()) * 1e3 for n in names]
  print(f"  {'all ops':22s}" + "".join(f"{t:12.1f}" for t in totals))
  categories = list(OP_CATEGORIES) + ["other"]
  for category in categories:
    values = [traces[n][1].get(category, 0.0) * 1e3 for n in names]
    print(f"  {category:22s}" + "".join(f"{v:12.1f}" for v in values))
  for n in names:
    top = ", ".join(f"{op} {s * 1e3:.1f}" for op, s in traces[n][2].items())
    print(f"  top ops of {n}: {top}")


def main(argv):
  del argv
  workdir = tempfile.mkdtemp(prefix="serving_breakdown_")
  size = FLAGS.image_size
  print(f"TF {tf.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
  model_config = config_lib.ModelConfig(backbone_depth=FLAGS.depth, backbone_layout="pycls")
  keras.utils.set_random_seed(0)
  logging.set_verbosity(logging.WARNING)
  fp32 = builder.build_model(model_config, image_size=64)
  export_config = config_lib.ExportConfig(
    image_scales=(1.0,), max_image_size=2 * size, precision=FLAGS.precision
  )
  # The Keras model as trained (batch norms not folded), at the export's precision.
  unfolded_config = dataclasses.replace(export_config, fold_batch_norms=False)
  model = serving_graph.serving_model(fp32, model_config, unfolded_config)
  export_dir = versions.export_saved_model(
    fp32, model_config, os.path.join(workdir, "export"), export_config=export_config
  )
  unfolded_dir = versions.export_saved_model(
    fp32, model_config, os.path.join(workdir, "export_unfolded"), export_config=unfolded_config
  )
  frozen_dir = versions.export_saved_model(
    fp32,
    model_config,
    os.path.join(workdir, "export_frozen"),
    export_config=dataclasses.replace(export_config, freeze_weights=True),
  )
  rng = np.random.default_rng(0)
  arrays = [rng.integers(0, 256, [size, size, 3], dtype=np.uint8) for _ in range(FLAGS.num_images)]
  floats = [tf.constant(a[None].astype(np.float32)) for a in arrays]
  uint8 = [tf.constant(a) for a in arrays]

  static = tf.function(lambda x: model(x, training=False))
  dynamic = tf.function(
    lambda x: model(x, training=False),
    input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)],
  )

  @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
  def resize(image):
    x = tf.cast(image, tf.float32)[None]
    x = tf.image.resize(x, tf.shape(image)[:2], method="bilinear")
    return model(x, training=False)

  @tf.function(
    input_signature=[
      tf.TensorSpec([None, None, 3], tf.uint8),
      tf.TensorSpec([None], tf.float32),
    ]
  )
  def map_fn(image, scales):
    x = tf.cast(image, tf.float32)[None]

    def one(scale):
      new = tf.cast(tf.round(tf.cast(tf.shape(image)[:2], tf.float32) * scale), tf.int32)
      return model(tf.image.resize(x, new, method="bilinear"), training=False)

    return tf.map_fn(one, scales, fn_output_signature=tf.TensorSpec([None, None], tf.float32))

  loaded = tf.saved_model.load(export_dir)
  serve = loaded.signatures[savedmodel_contract.SERVING_DEFAULT]
  one_scale = tf.constant([1.0])

  serve_frozen = tf.saved_model.load(frozen_dir).signatures[savedmodel_contract.SERVING_DEFAULT]
  serve_unfolded = tf.saved_model.load(unfolded_dir).signatures[savedmodel_contract.SERVING_DEFAULT]
  serve_baseline = None
  if FLAGS.baseline_export:
    serve_baseline = tf.saved_model.load(FLAGS.baseline_export).signatures[
      savedmodel_contract.SERVING_DEFAULT
    ]

  def signature(image, scales=one_scale, serve=serve):
    return serve(
      input_image=image,
      input_scales=scales,
      input_global_scales_ind=tf.range(tf.size(scales), dtype=tf.int32),
    )[savedmodel_contract.GLOBAL_DESCRIPTOR].numpy()

  config = config_io.DolgConfig(model_path=export_dir, max_image_size=2 * size)
  config.image_scales.append(1.0)
  extractor = extractor_lib.Extractor(config, saved_model=loaded)

  folder = os.path.join(workdir, "images")
  os.makedirs(folder)
  paths = []
  for i, a in enumerate(arrays):
    paths.append(os.path.join(folder, f"{i:03d}.jpg"))
    Image.fromarray(a).save(paths[-1], quality=95)

  def each(fn, inputs):
    return lambda: [fn(x) for x in inputs]

  def run_pipeline():
    out = tempfile.mkdtemp(dir=workdir)
    pipeline.run_extraction(extractor, task_sources.tasks_from_paths(paths), out, log_interval=1e9)

  rows = {
    "static": each(lambda x: static(x).numpy(), floats),
    "dynamic": each(lambda x: dynamic(x).numpy(), floats),
    "resize": each(lambda x: resize(x).numpy(), uint8),
    "map_fn": each(lambda x: map_fn(x, one_scale).numpy(), uint8),
    "signature": each(signature, uint8),
    "unfolded": each(lambda x: signature(x, serve=serve_unfolded), uint8),
    "frozen": each(lambda x: signature(x, serve=serve_frozen), uint8),
    "extractor": each(extractor.extract, arrays),
    "pipeline": run_pipeline,
  }
  if serve_baseline is not None:
    rows["baseline"] = each(lambda x: signature(x, serve=serve_baseline), uint8)
  rates, samples = interleaved.interleaved_rates(
    rows, FLAGS.num_images, FLAGS.rounds, untimed_rounds=1
  )
  spread = ", ".join(f"{r:.3f}" for r in samples["static"])
  print(
    f"DOLG-R{FLAGS.depth} {size}x{size} {FLAGS.precision}, one scale, median of {FLAGS.rounds} "
    f"interleaved rounds of {FLAGS.num_images} images (static's rounds: {spread} img/s)"
  )
  for name, rate in rates.items():
    print(f"  {name:10s} {rate:7.3f} img/s  {rate / rates['static']:.3f} x static")

  for pyramid_flag in FLAGS.pyramid:
    scales = [float(s) for s in pyramid_flag.split(",")]
    pyramid_rows = {
      "pyramid": each(functools.partial(signature, scales=tf.constant(scales)), uint8)
    }
    for scale in scales:
      pyramid_rows[scale] = each(functools.partial(signature, scales=tf.constant([scale])), uint8)
    pyramid_rates, _ = interleaved.interleaved_rates(
      pyramid_rows, FLAGS.num_images, FLAGS.rounds, untimed_rounds=1
    )
    total = sum(1 / pyramid_rates[scale] for scale in scales)
    cost = 1 / pyramid_rates["pyramid"]
    print(
      f"pyramid {pyramid_flag}: {cost:.3f} s/img vs the sum of its single-scale calls "
      f"{total:.3f} s: {cost / total:.3f}x"
    )
  if FLAGS.trace:
    traces = {
      "static": trace_breakdown(
        lambda x: static(x).numpy(), floats, os.path.join(workdir, "trace_static")
      ),
      "signature": trace_breakdown(signature, uint8, os.path.join(workdir, "trace_signature")),
    }
    if serve_baseline is not None:
      traces["baseline"] = trace_breakdown(
        lambda x: signature(x, serve=serve_baseline), uint8, os.path.join(workdir, "trace_baseline")
      )
    print_traces(traces)
  if FLAGS.gemm:
    flops = _flops(static, size)
    dtypes = [tf.float32] + ([tf.bfloat16] if FLAGS.precision == "bfloat16" else [])
    for dtype in dtypes:
      gemm = _gemm_rate(dtype)
      floor = gemm / flops
      print(
        f"network {flops / 1e9:.1f} GFLOP/img (TF profiler); {dtype.name} GEMM "
        f"{gemm / 1e9:.0f} GFLOP/s -> {floor:.3f} img/s; pipeline at "
        f"{rates['pipeline'] / floor:.1%} of it"
      )


if __name__ == "__main__":
  app.run(main)
