r"""GLDv2-style recognition on synthetic landmarks: GAP / accuracy with and without re-ranking.

  .venv/bin/python benchmarks/recognition_benchmark.py [--export=runs/demo_delg/export/1] \
      [--workdir=/tmp/recognition_benchmark]

1. A labelled set of synthetic landmarks (dolg_tf.data.synthetic_scenes, the
   scenes of the demo's training classes, seed 0): a database of views of
   every training class (labelled, written as an id,landmark_id CSV), test
   images of those landmarks (views never seen in training or in the
   database), and non-landmark test images: views of distractor scenes that
   are in neither the database nor training. A Kaggle solution CSV
   (id,landmarks,Usage) splits the test images into Public / Private (and a
   few Ignored).
2. Descriptors with `dolg-extract` and the DELG demo's SavedModel, with the
   demo's extraction settings (protos/delg.pbtxt, dolg_tf.demo's pyramid);
   with a DOLG export (--model=dolg --export=runs/demo/export/N) global
   descriptors only.
3. `dolg-recognize` (kNN voting, k = 5, sum) without and with geometric
   re-ranking of the top 100 (the DELG demo's verification settings,
   dolg_tf.demo.DEMO_GEOMETRIC_VERIFICATION); prints GAP, top-1 accuracy and
   mAP@100, Public and Private, from the command's own output.
"""

import argparse
import glob
import os
import subprocess
import sys
import time

import numpy as np
from google.protobuf import text_format

from dolg_tf import demo, protos
from dolg_tf.data import image_codec, synthetic_scenes
from dolg_tf.io import config_io
from dolg_tf.utils import files as file_utils

NUM_CLASSES = 16  # runs/demo*/config.json data.synthetic_classes
SEED = 0  # train.seed
DB_PER_CLASS = 8
TEST_PER_CLASS = 4
NUM_DISTRACTOR_SCENES = 16
TEST_PER_DISTRACTOR = 3
IMAGE_SIZE = 128
# View indices far from those of the demo's benchmark (0..7), so no image is shared.
VIEW_OFFSET = 1000
# The console scripts of the modules run (printed, so the lines can be pasted).
SCRIPTS = {
  "dolg_tf.extraction.extract_features": "dolg-extract",
  "dolg_tf.retrieval.recognize": "dolg-recognize",
}


def _write_image(path: str, image: np.ndarray) -> None:
  file_utils.atomic_write_bytes(path, image_codec.encode_jpeg(image, 90))


def write_dataset(root: str) -> dict:
  """Renders the database and test images; writes labels.csv and solution.csv. Returns counts."""
  scenes = synthetic_scenes.make_scenes(NUM_CLASSES + NUM_DISTRACTOR_SCENES, SEED)
  db_dir, test_dir = os.path.join(root, "db"), os.path.join(root, "test")
  os.makedirs(db_dir, exist_ok=True)
  os.makedirs(test_dir, exist_ok=True)
  views = (synthetic_scenes.EASY_VIEW, synthetic_scenes.HARD_VIEW)
  labels, solution = ["id,landmark_id"], ["id,landmarks,Usage"]
  rng = np.random.default_rng([SEED, 27])
  for c in range(NUM_CLASSES):
    for v in range(DB_PER_CLASS):
      name = f"db_{c:02d}_{v:02d}"
      view_rng = synthetic_scenes.view_rng(SEED, synthetic_scenes.DB_STREAM, c, VIEW_OFFSET + v)
      _write_image(
        os.path.join(db_dir, name + ".jpg"),
        synthetic_scenes.render_view(scenes[c], view_rng, IMAGE_SIZE, views[v % 2]),
      )
      labels.append(f"{name},{c}")
  tests = [(c, t, str(c)) for c in range(NUM_CLASSES) for t in range(TEST_PER_CLASS)]
  tests += [
    (c, t, "")
    for c in range(NUM_CLASSES, NUM_CLASSES + NUM_DISTRACTOR_SCENES)
    for t in range(TEST_PER_DISTRACTOR)
  ]
  order = rng.permutation(len(tests))
  for position, i in enumerate(order):
    c, t, landmarks = tests[i]
    name = f"test_{position:04d}"
    view_rng = synthetic_scenes.view_rng(SEED, synthetic_scenes.QUERY_STREAM, c, VIEW_OFFSET + t)
    params = views[t % 2]
    _write_image(
      os.path.join(test_dir, name + ".jpg"),
      synthetic_scenes.render_view(scenes[c], view_rng, IMAGE_SIZE, params),
    )
    usage = "Ignored" if position % 20 == 19 else ("Public" if position % 2 else "Private")
    solution.append(f"{name},{landmarks},{usage}")
  file_utils.atomic_write_text(os.path.join(root, "labels.csv"), "\n".join(labels) + "\n")
  file_utils.atomic_write_text(os.path.join(root, "solution.csv"), "\n".join(solution) + "\n")
  return {
    "db": len(labels) - 1,
    "test": len(tests),
    "non_landmark": sum(1 for t in tests if not t[2]),
  }


def write_extraction_config(export: str, model: str, path: str) -> tuple[bool, str]:
  """The demo's extraction config for this export: (has local features, descriptor suffix)."""
  config = config_io.load_dolg_config(protos.shipped_config_path(model))
  config.model_path = os.path.abspath(export)
  if config.use_local_features:
    del config.image_scales[:]
    config.image_scales.extend(demo.DELG_DEMO_SCALES)
    del config.global_config.image_scales_ind[:]
    config.global_config.image_scales_ind.extend(demo.DELG_DEMO_GLOBAL_SCALES_IND)
    config.local_config.max_feature_num = demo.DELG_DEMO_MAX_FEATURES
  file_utils.atomic_write_text(path, text_format.MessageToString(config))
  return config.use_local_features, config.global_descriptor_suffix


def _command(module: str, *args: str) -> str:
  """Runs a dolg_tf command; returns its stdout (exits on failure)."""
  command = [sys.executable, "-m", module, *args]
  print("$ " + " ".join([SCRIPTS[module], *args]), flush=True)
  done = subprocess.run(command, capture_output=True, text=True, check=False)
  if done.returncode:
    sys.exit(f"{module} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
  return done.stdout


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  latest = sorted(glob.glob("runs/demo_delg/export/*"), key=lambda p: int(os.path.basename(p)))
  parser.add_argument("--export", default=latest[-1] if latest else "")
  parser.add_argument("--model", default="delg", choices=("delg", "dolg"))
  parser.add_argument("--workdir", default="/tmp/recognition_benchmark")
  args = parser.parse_args()
  if not args.export or not os.path.isdir(args.export):
    sys.exit(f"no SavedModel at {args.export!r} (train the DELG demo: dolg-demo --model=delg)")
  start = time.time()
  root = args.workdir
  counts = write_dataset(root)
  print(
    f"synthetic labelled set: {counts['db']} database images of {NUM_CLASSES} landmarks, "
    f"{counts['test']} test images ({counts['non_landmark']} non-landmark), seed {SEED}"
  )
  config_path = os.path.join(root, "extraction.pbtxt")
  has_local, suffix = write_extraction_config(args.export, args.model, config_path)
  for part in ("db", "test"):
    _command(
      "dolg_tf.extraction.extract_features",
      f"--config={config_path}",
      f"--images_dir={os.path.join(root, part)}",
      f"--output_dir={os.path.join(root, 'features_' + part)}",
    )
  common = [
    f"--database_descriptors={os.path.join(root, 'features_db')}",
    f"--database_labels={os.path.join(root, 'labels.csv')}",
    f"--query_descriptors={os.path.join(root, 'features_test')}",
    f"--solution_path={os.path.join(root, 'solution.csv')}",
    f"--suffix={suffix}",
    "--k=5",
    "--voting=sum",
  ]
  runs = {"global only": common + [f"--output_path={os.path.join(root, 'global.csv')}"]}
  if has_local:
    gv = demo.DEMO_GEOMETRIC_VERIFICATION
    runs["global + GV"] = common + [
      f"--output_path={os.path.join(root, 'gv.csv')}",
      "--use_geometric_verification",
      f"--query_local_dir={os.path.join(root, 'features_test')}",
      f"--database_local_dir={os.path.join(root, 'features_db')}",
      f"--gv_top_k={gv.top_k}",
      f"--gv_residual_threshold={gv.residual_threshold}",
      f"--gv_max_scale_change={gv.max_scale_change}",
      f"--gv_max_anisotropy={gv.max_anisotropy}",
    ]
  outputs = {}
  for name, flags in runs.items():
    t0 = time.time()
    outputs[name] = (_command("dolg_tf.retrieval.recognize", *flags), time.time() - t0)
  print(f"\n=== recognition on synthetic landmarks ({args.export}) ===")
  for name, (text, seconds) in outputs.items():
    print(f"--- {name} ({seconds:.1f} s)")
    print(text.strip())
  print(f"total time {time.time() - start:.0f} s")


if __name__ == "__main__":
  main()
