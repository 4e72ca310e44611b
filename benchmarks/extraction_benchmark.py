r"""Extraction speed and memory: bare SavedModel forward vs the whole pipeline.

For each precision in `--precisions` an untrained DOLG (`--depth`, pycls
layout; the bf16 model gets the fp32 model's weights) is exported to a temp
folder, then:
  (a) bare forward: img/s of the SavedModel signature (via
      Extractor.per_scale_descriptors) on pre-decoded uint8 arrays,
      measured before and after (b) to expose drift from other load;
  (b) whole pipeline: img/s of pipeline.run_extraction over `--num_images`
      procedurally generated JPEGs (decode, resize, forward, pooling, atomic
      DatumProto writes); the ratio to the mean bare forward;
  (c) peak RSS (resource.getrusage) of a separate process that loads the
      export and runs the pipeline at max side `--memory_max_size` with
      `--memory_scales` on `--memory_images` larger JPEGs.
bf16 descriptors are compared with fp32 ones (cosine) on the same images.
CPU seconds per image (time.process_time, all threads) are printed too: they
depend much less than img/s on other processes sharing the cores.
`--xla` adds the Keras model's forward as a tf.function with and without
jit_compile (XLA), for comparison with the SavedModel signature.
`--compare_official` (default on, needs the optional torch) times the official
DOLG structure in PyTorch (tests/torch_dolg_reference.py, fp32, eval mode,
torch threads = cores) on the same images at one scale, right after the
pipeline rows, and prints the fp32 and bf16 pipelines' ratios to it.

Usage:
  .venv/bin/python benchmarks/extraction_benchmark.py                   # R101, 512, fp32+bf16
  .venv/bin/python benchmarks/extraction_benchmark.py --depth=50 --precisions=fp32 --xla

The machine load (os.getloadavg) is printed: other processes on the 2 cores
slow every figure down, so compare figures only within one run.
"""

import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags, logging

FLAGS = flags.FLAGS
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}  # --precisions -> export.precision
flags.DEFINE_integer("depth", 101, "ResNet depth of the DOLG backbone (pycls layout).")
flags.DEFINE_integer("image_size", 512, "Side of the square benchmark images.")
flags.DEFINE_integer("num_images", 20, "Images per measurement.")
flags.DEFINE_integer("warmup", 2, "Untimed forward passes before measuring.")
flags.DEFINE_list("scales", ["1.0"], "Image pyramid of the speed measurements.")
flags.DEFINE_list("precisions", ["fp32", "bf16"], "fp32 and/or bf16 (mixed_bfloat16 export).")
flags.DEFINE_integer("num_threads", 2, "Pipeline decoding threads.")
flags.DEFINE_integer("prefetch", 8, "Pipeline prefetch depth.")
flags.DEFINE_integer("intra_op_threads", 0, "TF intra-op threads (0 = TF default).")
flags.DEFINE_integer("inter_op_threads", 0, "TF inter-op threads (0 = TF default).")
flags.DEFINE_bool("freeze_weights", False, "Export with export.freeze_weights.")
flags.DEFINE_bool("xla", False, "Also time the Keras model with and without jit_compile.")
flags.DEFINE_bool("memory_run", True, "Measure peak RSS in a separate process.")
flags.DEFINE_integer("memory_max_size", 1024, "max_image_size of the memory run.")
flags.DEFINE_list("memory_scales", ["0.7071", "1.0", "1.4142"], "Scales of the memory run.")
flags.DEFINE_integer("memory_images", 3, "Images of the memory run.")
flags.DEFINE_list(
  "memory_image_shape", None, "Height,width of the memory run's JPEGs (default 1.5x max side)."
)
flags.DEFINE_bool("huge_image", True, "Also a memory run on one 7000x3500 JPEG.")
flags.DEFINE_string("memory_model", None, "Internal: run only the memory measurement on it.")
flags.DEFINE_bool(
  "compare_official", True, "Also time the official DOLG structure in PyTorch (needs torch)."
)
flags.DEFINE_string("workdir", None, "Folder for exports and images (default: a temp folder).")


def _configure_threads():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  if FLAGS.intra_op_threads:
    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.intra_op_threads)
  if FLAGS.inter_op_threads:
    tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op_threads)


def _load():
  return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def make_images(folder: str, count: int, height: int, width: int, seed: int = 0) -> list[str]:
  """Writes `count` photo-like JPEGs (smooth colour fields, edges, noise); returns the paths."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top

  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  paths = []
  for i in range(count):
    coarse = rng.uniform(0, 255, size=[8, 8, 3]).astype(np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(12):
      x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
      w, h = int(rng.integers(10, width // 3)), int(rng.integers(10, height // 3))
      colour = tuple(int(c) for c in rng.integers(0, 256, 3))
      if rng.random() < 0.5:
        draw.rectangle([x, y, x + w, y + h], fill=colour)
      else:
        draw.ellipse([x, y, x + w, y + h], outline=colour, width=4)
    array = np.asarray(image).astype(np.int16) + rng.integers(-12, 13, [height, width, 3])
    path = os.path.join(folder, f"bench_{i:05d}.jpg")
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(path, quality=90)
    paths.append(path)
  return paths


def _config(model_dir, scales, max_image_size):
  from dolg_tf.io import config_io  # pylint: disable=g-import-not-at-top

  config = config_io.DolgConfig(model_path=model_dir, max_image_size=max_image_size)
  config.image_scales.extend(float(s) for s in scales)
  config_io.validate_dolg_config(config)
  return config


def export_models(workdir: str):
  """Exports the requested precisions of one untrained DOLG.

  Exports already in `workdir` (from an earlier run with the same --workdir)
  are reused unless --xla needs the Keras models.

  Returns:
    ({precision: export dir}, {precision: Keras model or None}).
  """
  from dolg_tf import config as config_lib  # pylint: disable=g-import-not-at-top
  from dolg_tf.export import serving_graph, versions  # pylint: disable=g-import-not-at-top
  from dolg_tf.keras_api import keras  # pylint: disable=g-import-not-at-top
  from dolg_tf.model import builder  # pylint: disable=g-import-not-at-top

  existing = {p: os.path.join(workdir, f"export_{p}", "1") for p in FLAGS.precisions}
  if not FLAGS.xla and all(os.path.isdir(d) for d in existing.values()):
    print(f"reusing the exports in {workdir}")
    return existing, {p: None for p in existing}
  model_config = config_lib.ModelConfig(backbone_depth=FLAGS.depth, backbone_layout="pycls")
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.WARNING)  # the export's INFO lines are long and many
  keras.utils.set_random_seed(0)
  exports, models = {}, {}
  start = time.time()
  fp32 = builder.build_model(model_config, image_size=64)
  for precision in FLAGS.precisions:
    if precision not in PRECISIONS:
      raise app.UsageError(f"unknown precision {precision!r}")
    # The bf16 export gets the fp32 model's weights (export.precision=bfloat16).
    export_config = config_lib.ExportConfig(
      image_scales=(1.0,), precision=PRECISIONS[precision], freeze_weights=FLAGS.freeze_weights
    )
    exports[precision] = versions.export_saved_model(
      fp32,
      model_config,
      os.path.join(workdir, f"export_{precision}"),
      export_config=export_config,
    )
    models[precision] = (
      serving_graph.serving_model(fp32, model_config, export_config) if FLAGS.xla else None
    )
  logging.set_verbosity(verbosity)
  print(f"built and exported {'+'.join(exports)} DOLG-R{FLAGS.depth} in {time.time() - start:.0f}s")
  return exports, models


def time_keras_forward(model, arrays, jit_compile):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  forward = tf.function(lambda x: model(x, training=False), jit_compile=jit_compile)
  batch = [tf.cast(a, tf.float32)[None] for a in arrays]
  for x in batch[: FLAGS.warmup]:
    forward(x).numpy()
  start = time.perf_counter()
  for x in batch:
    forward(x).numpy()
  return len(batch) / (time.perf_counter() - start)


def time_bare(extractor, arrays) -> tuple[float, float, np.ndarray]:
  """(img/s, CPU seconds per image, descriptors) of the signature on decoded arrays."""
  for a in arrays[: FLAGS.warmup]:
    extractor.per_scale_descriptors(a)
  start, cpu = time.perf_counter(), time.process_time()
  outputs = [extractor.extract(a) for a in arrays]
  seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
  return len(arrays) / seconds, cpu / len(arrays), np.stack(outputs)


def time_official_forward(arrays) -> tuple[float, str] | None:
  """(img/s, torch version) of the official DOLG structure's forward in PyTorch on `arrays`;
  None without torch.

  Same depth, one scale, fp32, ImageNet normalisation on the decoded uint8 image as the
  official test code does it; the descriptor is read back to numpy like ours.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests import torch_dolg_reference  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  from dolg_tf.model import backbones  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(os.cpu_count() or 1)
  model = torch_dolg_reference.torch_dolg(backbones.STAGE_BLOCKS[FLAGS.depth]).eval()
  mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
  std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

  def forward(array):
    with torch.no_grad():
      x = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255.0
      return model((x - mean) / std)["descriptor"].numpy()

  for a in arrays[: FLAGS.warmup]:
    forward(a)
  start = time.perf_counter()
  for a in arrays:
    forward(a)
  return len(arrays) / (time.perf_counter() - start), torch.__version__


def time_pipeline(extractor, paths, output_dir) -> tuple[float, float]:
  """(img/s, CPU seconds per image) of the whole pipeline (wall time of the run)."""
  from dolg_tf.extraction import pipeline, task_sources  # pylint: disable=g-import-not-at-top

  cpu = time.process_time()
  summary = pipeline.run_extraction(
    extractor,
    task_sources.tasks_from_paths(paths),
    output_dir,
    num_threads=FLAGS.num_threads,
    prefetch=FLAGS.prefetch,
    log_interval=1e9,
  )
  cpu = time.process_time() - cpu
  if summary.done != len(paths):
    raise RuntimeError(f"pipeline wrote {summary.done} of {len(paths)} descriptors")
  return len(paths) / summary.seconds, cpu / len(paths)


def memory_run(model_dir: str, workdir: str) -> None:
  """Loads `model_dir` and extracts large images at several scales; prints peak RSS."""
  _configure_threads()
  from dolg_tf.extraction import extractor as extractor_lib  # pylint: disable=g-import-not-at-top
  from dolg_tf.extraction import pipeline, task_sources  # pylint: disable=g-import-not-at-top

  side = FLAGS.memory_max_size
  height, width = (
    [int(v) for v in FLAGS.memory_image_shape]
    if FLAGS.memory_image_shape
    else [side * 3 // 4 * 3 // 2, side * 3 // 2]
  )
  paths = make_images(
    tempfile.mkdtemp(dir=workdir, prefix="memory_images_"), FLAGS.memory_images, height, width
  )
  config = _config(model_dir, FLAGS.memory_scales, side)
  extractor = extractor_lib.Extractor(config)
  output_dir = tempfile.mkdtemp(dir=workdir, prefix="memory_out_")
  summary = pipeline.run_extraction(extractor, task_sources.tasks_from_paths(paths), output_dir)
  print(
    f"MEMORY peak_rss_mb={_peak_rss_mb():.0f} images={summary.done} "
    f"img_per_s={summary.done / summary.seconds:.3f}"
  )


def _spawn_memory_run(model_dir: str, workdir: str, *extra: str) -> str:
  argv = [
    sys.executable,
    os.path.abspath(__file__),
    f"--memory_model={model_dir}",
    f"--workdir={workdir}",
    f"--memory_max_size={FLAGS.memory_max_size}",
    f"--memory_scales={','.join(FLAGS.memory_scales)}",
    f"--memory_images={FLAGS.memory_images}",
    f"--intra_op_threads={FLAGS.intra_op_threads}",
    f"--inter_op_threads={FLAGS.inter_op_threads}",
    *extra,
  ]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = repo_root + os.pathsep + env.get("PYTHONPATH", "")
  result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
  lines = [line for line in result.stdout.splitlines() if line.startswith("MEMORY")]
  if result.returncode != 0 or not lines:
    return f"memory run failed: {result.stderr.strip().splitlines()[-1:]}"
  return lines[-1][len("MEMORY ") :]


def main(argv):
  del argv
  workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="extraction_benchmark_")
  if FLAGS.memory_model:
    memory_run(FLAGS.memory_model, workdir)
    return
  _configure_threads()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from dolg_tf.extraction import extractor as extractor_lib  # pylint: disable=g-import-not-at-top

  print(f"TF {tf.__version__}, {os.cpu_count()} CPUs, {_load()}, workdir {workdir}")
  print(
    f"threads: intra_op={tf.config.threading.get_intra_op_parallelism_threads()} "
    f"inter_op={tf.config.threading.get_inter_op_parallelism_threads()} (0 = TF default), "
    f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset (on)')}"
  )
  size = FLAGS.image_size
  paths = make_images(os.path.join(workdir, "images"), FLAGS.num_images, size, size)
  from dolg_tf.io import image_loading  # pylint: disable=g-import-not-at-top

  arrays = [image_loading.load_image(p) for p in paths]
  exports, models = export_models(workdir)
  results, pipeline_rates = {}, {}
  for precision, model_dir in exports.items():
    extractor = extractor_lib.Extractor(_config(model_dir, FLAGS.scales, size))
    before, cpu_before, descriptors = time_bare(extractor, arrays)
    whole, cpu_whole = time_pipeline(extractor, paths, tempfile.mkdtemp(dir=workdir, prefix="out_"))
    after, cpu_after, _ = time_bare(extractor, arrays)
    bare, cpu_bare = (before + after) / 2, (cpu_before + cpu_after) / 2
    results[precision] = descriptors
    pipeline_rates[precision] = whole
    print(
      f"[{precision}] DOLG-R{FLAGS.depth} {size}x{size} scales {FLAGS.scales}: "
      f"bare forward {before:.3f} / {after:.3f} img/s (before/after), "
      f"whole pipeline {whole:.3f} img/s, ratio {whole / bare:.3f} ({_load()})"
    )
    print(
      f"[{precision}] CPU seconds per image (load-independent): bare {cpu_before:.3f} / "
      f"{cpu_after:.3f}, whole pipeline {cpu_whole:.3f} (ratio {cpu_whole / cpu_bare:.3f}); "
      f"if all {os.cpu_count()} cores were free: ~{os.cpu_count() / cpu_bare:.2f} img/s bare"
    )
    if FLAGS.xla:
      plain = time_keras_forward(models[precision], arrays, jit_compile=False)
      xla = time_keras_forward(models[precision], arrays, jit_compile=True)
      print(
        f"[{precision}] Keras tf.function forward {plain:.3f} img/s, "
        f"jit_compile=True (XLA) {xla:.3f} img/s ({_load()})"
      )
    if FLAGS.memory_run:
      print(
        f"[{precision}] separate process, max side {FLAGS.memory_max_size}, scales "
        f"{FLAGS.memory_scales}: {_spawn_memory_run(model_dir, workdir)}"
      )
    if FLAGS.memory_run and FLAGS.huge_image:
      huge = _spawn_memory_run(
        model_dir, workdir, "--memory_image_shape=3500,7000", "--memory_images=1"
      )
      print(f"[{precision}] separate process, one 7000x3500 JPEG, same settings: {huge}")
  if FLAGS.compare_official:
    timed = time_official_forward(arrays)
    if timed is None:
      print("[official] torch not installed (requirements-torch.txt): no PyTorch row")
    else:
      official, torch_version = timed
      ratios = ", ".join(
        f"{p} pipeline / official = {r / official:.2f}x" for p, r in pipeline_rates.items()
      )
      print(
        f"[official] DOLG-R{FLAGS.depth} structure in PyTorch {torch_version} fp32 "
        f"{size}x{size}: {official:.3f} img/s; {ratios} ({_load()})"
      )
  if "fp32" in results and "bf16" in results:
    cosines = np.sum(results["fp32"] * results["bf16"], axis=1)
    print(
      f"bf16 vs fp32 descriptor cosine over {len(cosines)} images: "
      f"min {cosines.min():.5f}, mean {cosines.mean():.5f}"
    )
  print(f"peak RSS of this process (model building included): {_peak_rss_mb():.0f} MB")


if __name__ == "__main__":
  app.run(main)
