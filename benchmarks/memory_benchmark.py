r"""Peak memory of extraction over worst-case image files vs ordinary photos (issue 25).

Builds one untrained DOLG export (`--depth`, pycls layout, the pyramid and
size limit of protos/dolg.pbtxt: scales 1/sqrt(2), 1, sqrt(2), max side
`--max_image_size`) and two folders of `--count` images each:
  worst:    16-bit grey PNGs, a float32 TIFF and an 8-bit RGB PNG of
            `--side` x `--side` pixels (just under the 100 Mpixel limit;
            zeros, so each file is a few hundred KB), the files that cost
            up to 2.65 GB each to decode before issue 25;
  ordinary: `--photo_side`-wide 4:3 JPEGs (12 Mpixel by default).
Then runs the extraction command (`python -m dolg_tf.extraction.extract_features`,
default settings, and `--num_threads=4`) on each folder in a fresh process and
prints its peak RSS (getrusage of the child), and the worst/ordinary ratio.

Usage:
  .venv/bin/python benchmarks/memory_benchmark.py                 # R50, 1024 px, 5 files each
  .venv/bin/python benchmarks/memory_benchmark.py --depth=101

The model's own forward (depth, max_image_size x largest scale) adds to the
decoding budget (images.MAX_IMAGE_BYTES, image_loading.MAX_BYTES_IN_FLIGHT);
compare figures within one run.
"""

import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags, logging
from google.protobuf import text_format
from PIL import Image

from dolg_tf import config as config_lib
from dolg_tf.export import versions
from dolg_tf.io import config_io
from dolg_tf.keras_api import keras
from dolg_tf.model import builder

FLAGS = flags.FLAGS
flags.DEFINE_integer("depth", 50, "ResNet depth of the untrained DOLG export.")
flags.DEFINE_integer("max_image_size", 1024, "max_image_size of the extraction config.")
flags.DEFINE_integer("count", 5, "Images per folder.")
flags.DEFINE_integer("side", 9990, "Side of the worst-case images (99.8 Mpixels).")
flags.DEFINE_integer("photo_side", 4000, "Width of the ordinary 4:3 JPEGs.")

SCALES = (0.7071, 1.0, 1.4142)
# Run in a fresh interpreter so that only the extraction process is a child.
RSS_WRAPPER = (
  "import resource, subprocess, sys\n"
  "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
  "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)\n"
)


def write_worst(folder: str, count: int, side: int) -> None:
  """`count` files: 16-bit grey PNGs, then a float32 TIFF and an 8-bit RGB PNG."""
  os.makedirs(folder)
  kinds = (["grey16"] * max(count - 2, 1) + ["float", "rgb8"])[:count]
  for i, kind in enumerate(kinds):
    path = os.path.join(folder, f"{kind}_{i}")
    if kind == "grey16":
      Image.new("I;16", (side, side)).save(path + ".png")
    elif kind == "float":
      Image.new("F", (side, side)).save(path + ".tif", compression="tiff_deflate")
    else:
      Image.new("RGB", (side, side)).save(path + ".png")


def write_ordinary(folder: str, count: int, width: int) -> None:
  os.makedirs(folder)
  rng = np.random.default_rng(0)
  for i in range(count):
    grid = Image.fromarray(rng.integers(0, 256, [6, 8, 3], dtype=np.uint8))
    grid.resize((width, width * 3 // 4), Image.BICUBIC).save(
      os.path.join(folder, f"photo_{i}.jpg"), quality=90
    )


def export_config_file(workdir: str) -> str:
  model_config = config_lib.ModelConfig(backbone_depth=FLAGS.depth, backbone_layout="pycls")
  keras.utils.set_random_seed(0)
  model_dir = versions.export_saved_model(
    builder.build_model(model_config, image_size=64),
    model_config,
    os.path.join(workdir, "export"),
    export_config=config_lib.ExportConfig(image_scales=SCALES, max_image_size=FLAGS.max_image_size),
  )
  config = config_io.DolgConfig(model_path=model_dir, max_image_size=FLAGS.max_image_size)
  config.image_scales.extend(SCALES)
  path = os.path.join(workdir, "dolg.pbtxt")
  with open(path, "w") as f:
    f.write(text_format.MessageToString(config))
  return path


def peak_rss(config: str, images: str, output_dir: str, *flags_: str) -> tuple[float, int, float]:
  """(peak RSS in GB, exit status, seconds) of one extraction command."""
  command = [sys.executable, "-m", "dolg_tf.extraction.extract_features", f"--config={config}"]
  command += [f"--images_dir={images}", f"--output_dir={output_dir}", *flags_]
  start = time.monotonic()
  result = subprocess.run(
    [sys.executable, "-c", RSS_WRAPPER, *command], capture_output=True, text=True, check=True
  )
  kb, code = result.stdout.split()
  return int(kb) * 1024 / 1e9, int(code), time.monotonic() - start


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  with tempfile.TemporaryDirectory(prefix="memory_benchmark_") as work:
    config = export_config_file(work)
    folders = {"worst": os.path.join(work, "worst"), "ordinary": os.path.join(work, "ordinary")}
    write_worst(folders["worst"], FLAGS.count, FLAGS.side)
    write_ordinary(folders["ordinary"], FLAGS.count, FLAGS.photo_side)
    print(
      f"DOLG R{FLAGS.depth} (untrained), scales {SCALES}, max_image_size {FLAGS.max_image_size}; "
      f"{FLAGS.count} images per folder; load {os.getloadavg()[0]:.2f}"
    )
    for name, flags_ in (("default settings", ()), ("--num_threads=4", ("--num_threads=4",))):
      peaks = {}
      for kind, folder in folders.items():
        out = os.path.join(work, f"out_{kind}_{len(flags_)}")
        peaks[kind], code, seconds = peak_rss(config, folder, out, *flags_)
        print(f"  {name:17s} {kind:9s} peak RSS {peaks[kind]:.2f} GB  exit {code}  {seconds:.0f} s")
      print(f"  {name:17s} worst / ordinary = {peaks['worst'] / peaks['ordinary']:.2f}")


if __name__ == "__main__":
  app.run(main)
