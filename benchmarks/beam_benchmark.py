r"""Scale-out figures: Beam (DirectRunner, 2 worker processes) vs one process; batching; resume.

On `--num_images` JPEGs of one size and one untrained DOLG export (`--depth`,
pycls layout, one scale), in one run:
  (a) the single-process pipeline (pipeline.run_extraction) with
      --batch_size 1 and --batch_size `--batch_size`: img/s, CPU s/img and
      the largest descriptor difference between the two;
  (b) the Beam pipeline (beam_pipeline.run_pipeline) on the DirectRunner
      with 2 worker processes (multi_processing), unbatched and batched:
      img/s of the whole run (worker start-up and one model load per worker
      included) and its ratio to (a); the same without the job's fixed cost
      (the time of a rerun that has nothing to do); the largest difference
      to (a)'s descriptors;
  (c) planning a resume over `--plan_outputs` already-extracted outputs:
      that many empty `<id>.dolg_global` files in a temp folder, then the
      time of beam_pipeline.plan_extraction (one listing, no model, no image).

Usage:
  .venv/bin/python benchmarks/beam_benchmark.py                       # R50, 256 px, 100 images
  .venv/bin/python benchmarks/beam_benchmark.py --depth=101 --image_size=512 --plan_outputs=0

The machine load (os.getloadavg) is printed; compare figures within one run.
"""

import os
import shutil
import tempfile
import time

import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from google.protobuf import text_format
from PIL import Image

from dolg_tf import config as config_lib
from dolg_tf.export import versions
from dolg_tf.extraction import beam_pipeline, pipeline, task_sources
from dolg_tf.extraction import extractor as extractor_lib
from dolg_tf.io import config_io, descriptor_reading
from dolg_tf.keras_api import keras
from dolg_tf.model import builder
from dolg_tf.utils import beam_cli

FLAGS = flags.FLAGS
flags.DEFINE_integer("depth", 50, "ResNet depth of the DOLG backbone (pycls layout).")
flags.DEFINE_integer("image_size", 256, "Side of the square benchmark images.")
flags.DEFINE_integer("num_images", 100, "Images of the extraction runs.")
flags.DEFINE_integer("batch_size", 8, "The batched single-process run's --batch_size.")
flags.DEFINE_integer("workers", 2, "DirectRunner worker processes.")
flags.DEFINE_integer("plan_outputs", 1_000_000, "Existing outputs of the resume plan (0: skip).")
flags.DEFINE_string("workdir", None, "Folder for the export, images and outputs (default: temp).")

SUFFIX = ".dolg_global"


def _load() -> str:
  return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def write_images(folder: str, count: int, size: int) -> list[str]:
  """`count` JPEGs: bicubic-upsampled random colour grids plus noise."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(0)
  paths = []
  for i in range(count):
    grid = Image.fromarray(rng.integers(0, 256, [6, 6, 3], dtype=np.uint8))
    smooth = np.asarray(grid.resize((size, size), Image.BICUBIC), np.int16)
    noisy = np.clip(smooth + rng.integers(-10, 11, smooth.shape), 0, 255).astype(np.uint8)
    paths.append(os.path.join(folder, f"bench{i:05d}.jpg"))
    Image.fromarray(noisy).save(paths[-1], quality=90)
  return paths


def export_dolg(workdir: str) -> str:
  """An untrained DOLG export (one scale, max side = --image_size); its config file's path."""
  model_config = config_lib.ModelConfig(backbone_depth=FLAGS.depth, backbone_layout="pycls")
  keras.utils.set_random_seed(0)
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.WARNING)
  model_dir = versions.export_saved_model(
    builder.build_model(model_config, image_size=64),
    model_config,
    os.path.join(workdir, "export"),
    export_config=config_lib.ExportConfig(image_scales=(1.0,), max_image_size=FLAGS.image_size),
  )
  logging.set_verbosity(verbosity)
  config = config_io.DolgConfig(model_path=model_dir, max_image_size=FLAGS.image_size)
  config.image_scales.append(1.0)
  path = os.path.join(workdir, "dolg.pbtxt")
  with open(path, "w") as f:
    f.write(text_format.MessageToString(config))
  return path


def single_process(config_path, tasks, output_dir, batch_size):
  """(img/s, CPU s/img) of pipeline.run_extraction (the model is loaded before timing)."""
  extractor = extractor_lib.Extractor.from_config_file(config_path)
  extractor.extract(np.zeros([FLAGS.image_size, FLAGS.image_size, 3], np.uint8))  # warm-up
  cpu = time.process_time()
  summary = pipeline.run_extraction(
    extractor, tasks, output_dir, batch_size=batch_size, log_interval=1e9
  )
  if summary.done != len(tasks):
    raise RuntimeError(f"wrote {summary.done} of {len(tasks)}")
  return len(tasks) / summary.seconds, (time.process_time() - cpu) / len(tasks)


def largest_difference(folder_a: str, folder_b: str) -> float:
  a = dict(zip(*descriptor_reading.read_descriptors(folder_a, suffix=SUFFIX)))
  b = dict(zip(*descriptor_reading.read_descriptors(folder_b, suffix=SUFFIX)))
  if sorted(a) != sorted(b):
    raise RuntimeError(f"{folder_a} and {folder_b} hold different images")
  return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def time_plan(workdir: str, count: int) -> None:
  folder = os.path.join(workdir, "plan_outputs")
  os.makedirs(folder, exist_ok=True)
  start = time.perf_counter()
  for i in range(count):
    open(os.path.join(folder, f"{i:08x}{SUFFIX}"), "wb").close()
  made = time.perf_counter() - start
  tasks = [task_sources.ImageTask(f"{i:08x}", f"/images/{i:08x}.jpg") for i in range(count)]
  config = config_io.DolgConfig(model_path="unused")
  start = time.perf_counter()
  todo, skipped, hidden = beam_pipeline.plan_extraction(config, tasks, folder)
  seconds = time.perf_counter() - start
  if todo or hidden or skipped != count:
    raise RuntimeError(f"plan: {len(todo)} to do, {skipped} skipped")
  print(
    f"(c) resume plan over {count} existing outputs: {seconds:.2f} s "
    f"({count / seconds / 1e6:.2f} M outputs/s; creating the files took {made:.0f} s)"
  )
  shutil.rmtree(folder)


def main(argv):
  del argv
  workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="beam_benchmark_")
  print(f"TF {tf.__version__}, {os.cpu_count()} CPUs, {_load()}, workdir {workdir}")
  start = time.perf_counter()
  config_path = export_dolg(workdir)
  paths = write_images(os.path.join(workdir, "images"), FLAGS.num_images, FLAGS.image_size)
  tasks = task_sources.tasks_from_paths(paths)
  print(
    f"DOLG-R{FLAGS.depth} {FLAGS.image_size}x{FLAGS.image_size}, one scale, "
    f"{len(paths)} images (export + images {time.perf_counter() - start:.0f} s)"
  )

  outputs = {}
  for batch_size in (1, FLAGS.batch_size):
    outputs[batch_size] = os.path.join(workdir, f"single_b{batch_size}")
    speed, cpu = single_process(config_path, tasks, outputs[batch_size], batch_size)
    outputs[batch_size, "speed"] = speed
    print(
      f"(a) one process, --batch_size={batch_size}: {speed:.2f} img/s, "
      f"{cpu:.3f} CPU s/img ({_load()})"
    )
  print(
    f"(a) batched/unbatched: {outputs[FLAGS.batch_size, 'speed'] / outputs[1, 'speed']:.3f}; "
    f"largest descriptor difference {largest_difference(outputs[1], outputs[FLAGS.batch_size]):.2e}"
  )

  options = beam_cli.pipeline_options(
    ["beam", f"--direct_num_workers={FLAGS.workers}", "--direct_running_mode=multi_processing"]
  )
  fixed = None
  for batch_size in (1, FLAGS.batch_size):
    beam_out = os.path.join(workdir, f"beam_b{batch_size}")
    counts = beam_pipeline.run_pipeline(config_path, tasks, beam_out, options, batch_size)
    if counts["done"] != len(tasks):
      raise RuntimeError(f"Beam wrote {counts['done']} of {len(tasks)}")
    if fixed is None:
      # A rerun has nothing to do: its time is the job's fixed cost (start-up, workers).
      again = beam_pipeline.run_pipeline(config_path, tasks, beam_out, options)
      fixed = again["seconds"]
      print(
        f"(b) rerun with nothing to do: skipped {again['skipped']}, done {again['done']}, "
        f"{fixed:.1f} s (the fixed cost of a DirectRunner job)"
      )
    speed = len(tasks) / counts["seconds"]
    net = len(tasks) / max(counts["seconds"] - fixed, 1e-9)
    single = outputs[batch_size, "speed"]
    print(
      f"(b) Beam DirectRunner, {FLAGS.workers} worker processes, --batch_size={batch_size}: "
      f"whole run {speed:.2f} img/s ({counts['seconds']:.1f} s), ratio to one process "
      f"{speed / single:.3f}; without the fixed cost {net:.2f} img/s, ratio {net / single:.3f}; "
      f"largest difference to one process {largest_difference(outputs[1], beam_out):.2e} "
      f"({_load()})"
    )
  if FLAGS.plan_outputs:
    time_plan(workdir, FLAGS.plan_outputs)
  if not FLAGS.workdir:
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
