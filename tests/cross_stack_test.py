"""Artefacts cross the two supported stacks: SavedModels both ways, checkpoints card -> current.

Needs both stacks' interpreters: DOLG_CARD_PYTHON (Python 3.11, TF 2.15.1) and
DOLG_CURRENT_PYTHON (Python 3.12/3.13, TF 2.20); `make cross-stack` sets both
up and runs this file. Without them the tests skip, saying so.

On each stack a tiny DOLG and a tiny DELG are trained for two steps with the
real `dolg_tf.train` command and exported at the end. Every export is then
extracted with the real extraction command on both stacks: the descriptors of
one export must agree to 1e-6 whichever stack extracted them (DELG: its local
features too). The card stack's training run is resumed on the current stack
and must continue from its checkpoint, not start again.
"""

import atexit
import functools
import glob
import os
import shutil
import subprocess
import tempfile

import numpy as np
import tensorflow as tf
from PIL import Image

from dolg_tf import config as config_lib
from dolg_tf.data import synthetic
from dolg_tf.io import datum_io, feature_io

STACKS = {"card": "DOLG_CARD_PYTHON", "current": "DOLG_CURRENT_PYTHON"}
TINY = {
  "dolg": config_lib.ModelConfig(
    backbone_depth=26, backbone_width_multiplier=0.125, local_dim=16, embedding_dim=16
  ),
  "delg": config_lib.delg_config(
    backbone_depth=26,
    backbone_width_multiplier=0.125,
    embedding_dim=16,
    delg_reduced_dim=8,
    delg_attention_hidden=16,
  ),
}
EXPERIMENTS = {"dolg": "dolg_gldv2", "delg": "delg_gldv2"}
EXTRACTION_CONFIG = """
model_path: "{model}"
image_scales: 0.5
image_scales: 1.0
max_image_size: 96
min_image_size: -1
use_global_features: true
use_local_features: {local}
global_config {{ scale_pooling: AVERAGE }}
global_descriptor_suffix: ".global"
local_config {{
  use_pca: false
  max_feature_num: 50
  score_threshold: 0.0
}}
"""


def _python(stack: str) -> str:
  return os.environ.get(STACKS[stack], "")


def _run(stack: str, module: str, *args: str) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
  result = subprocess.run(
    [_python(stack), "-m", module, *args], capture_output=True, text=True, env=env, timeout=900
  )
  if result.returncode != 0:
    raise AssertionError(f"{stack}: {module} {' '.join(args)} failed:\n{result.stderr[-4000:]}")
  return result


@functools.cache
def _work() -> str:
  path = tempfile.mkdtemp(prefix="dolg_cross_stack_")
  atexit.register(shutil.rmtree, path, ignore_errors=True)
  return path


@functools.cache
def _data() -> tuple[str, int, str]:
  """(training file pattern, number of classes, folder of test images)."""
  pattern, _, num_classes = synthetic.ensure_demo_data(
    os.path.join(_work(), "data"), num_classes=4, views_per_class=6, image_size=48, num_shards=1
  )
  images = os.path.join(_work(), "images")
  os.makedirs(images, exist_ok=True)
  rng = np.random.default_rng(0)
  for i, (h, w) in enumerate([(96, 72), (60, 90), (80, 80)]):
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
      os.path.join(images, f"image{i}.png")
    )
  return pattern, num_classes, images


def _train_args(name: str, logdir: str, max_steps: int) -> list[str]:
  pattern, num_classes, _ = _data()
  model_file = config_lib.save_model_config(TINY[name], os.path.join(_work(), f"{name}_model"))
  return [
    f"--experiment={EXPERIMENTS[name]}",
    f"--config_file={model_file}",
    f"--train_file_pattern={pattern}",
    "--dataset_version=synthetic",
    f"--num_classes={num_classes}",
    f"--logdir={logdir}",
    "--batch_size=4",
    # DELG's DELF layout at 32 px: after 2 steps its eval-mode activations overflow GeM's cube
    # (NaN descriptors, refused by extraction on either stack); at 64 px they stay finite.
    f"--image_size={64 if name == 'delg' else 32}",
    f"--max_steps={max_steps}",
    "--validate_every=0",
  ]


@functools.cache
def _trained(stack: str, name: str) -> str:
  """The logdir of a 2-step run of `name` trained on `stack` (export at the end)."""
  logdir = os.path.join(_work(), f"{stack}_{name}")
  _run(stack, "dolg_tf.train", *_train_args(name, logdir, 2))
  return logdir


@functools.cache
def _extracted(export_stack: str, name: str, extract_stack: str) -> dict[str, tuple]:
  """{image: (global descriptor, local features or None)} of one export, extracted on one stack."""
  export = os.path.join(_trained(export_stack, name), "export", "1")
  _, _, images = _data()
  out = os.path.join(_work(), f"extract_{export_stack}_{name}_on_{extract_stack}")
  config = out + ".pbtxt"
  with open(config, "w") as f:
    f.write(EXTRACTION_CONFIG.format(model=export, local=str(name == "delg").lower()))
  _run(
    extract_stack,
    "dolg_tf.extraction.extract_features",
    f"--config={config}",
    f"--images_dir={images}",
    f"--output_dir={out}",
  )
  results = {}
  for path in sorted(glob.glob(os.path.join(out, "*.global"))):
    image = os.path.basename(path)[: -len(".global")]
    local = None
    if name == "delg":
      local = feature_io.read_from_file(os.path.join(out, image + ".delg_local"))
    results[image] = (datum_io.read_from_file(path), local)
  return results


class CrossStackTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    missing = [v for s, v in STACKS.items() if not _python(s) or not os.path.exists(_python(s))]
    if missing:
      names = " and ".join(missing)
      self.skipTest(f"needs both stacks' interpreters in {names} (make cross-stack)")

  def _assert_same(self, name: str, export_stack: str):
    on_card = _extracted(export_stack, name, "card")
    on_current = _extracted(export_stack, name, "current")
    self.assertLen(on_card, 3)
    self.assertEqual(sorted(on_card), sorted(on_current))
    differences = []
    for image, (global_card, local_card) in on_card.items():
      global_current, local_current = on_current[image]
      self.assertAllClose(global_card, global_current, atol=1e-6, rtol=0)
      differences.append(np.max(np.abs(global_card - global_current)))
      if name == "delg":
        locations_card, _, descriptors_card, attention_card, _ = local_card
        locations_current, _, descriptors_current, attention_current, _ = local_current
        self.assertGreater(len(locations_card), 0)
        self.assertAllClose(locations_card, locations_current, atol=1e-6, rtol=0)
        self.assertAllClose(descriptors_card, descriptors_current, atol=1e-6, rtol=0)
        self.assertAllClose(attention_card, attention_current, atol=1e-6, rtol=0)
        differences.append(np.max(np.abs(descriptors_card - descriptors_current)))
    # The figure behind the check (`make cross-stack` shows it with pytest -s).
    print(
      f"\n{name} exported on the {export_stack} stack, extracted on both: max |difference| "
      f"{max(differences):.2e} over {len(on_card)} images"
    )

  def test_dolg_export_of_the_card_stack_extracts_the_same_on_the_current_one(self):
    self._assert_same("dolg", "card")

  def test_dolg_export_of_the_current_stack_extracts_the_same_on_the_card_one(self):
    self._assert_same("dolg", "current")

  def test_delg_export_of_the_card_stack_extracts_the_same_on_the_current_one(self):
    self._assert_same("delg", "card")

  def test_delg_export_of_the_current_stack_extracts_the_same_on_the_card_one(self):
    self._assert_same("delg", "current")

  def test_a_card_stack_checkpoint_resumes_on_the_current_stack(self):
    for name in ("dolg", "delg"):
      logdir = os.path.join(self.create_tempdir().full_path, name)
      shutil.copytree(_trained("card", name), logdir)
      before = tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints"))
      self.assertEqual(before.rsplit("-", 1)[1], "2")
      result = _run(
        "current", "dolg_tf.train", *_train_args(name, logdir, 4), "--allow_config_change"
      )
      self.assertIn(f"Resumed from {before} at step 2", result.stderr)
      # The optimizer's iterations (the global step) went on to 4.
      reader = tf.train.load_checkpoint(os.path.join(logdir, "checkpoints"))
      (step_key,) = [k for k in reader.get_variable_to_shape_map() if "_iterations" in k]
      self.assertEqual(int(reader.get_tensor(step_key)), 4)


if __name__ == "__main__":
  tf.test.main()
