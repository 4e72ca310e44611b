"""Tests for dolg_tf.visualize and visualization.attention: tiny models, a run, the command."""

import html.parser
import os
import pickle

import numpy as np
import tensorflow as tf
from absl.testing import parameterized
from PIL import Image

from dolg_tf import config as config_lib
from dolg_tf.io import datum_io, feature_io
from dolg_tf.model import checkpoint_restore
from dolg_tf.utils import images
from dolg_tf.visualization import attention as attention_lib
from dolg_tf.visualization import drawing, match_images
from tests import testutil

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _image(height, width, seed=0):
  """A smooth random RGB image (blocks of 8 px), uint8."""
  blocks = np.random.default_rng(seed).uniform(0, 255, size=[-(-height // 8), -(-width // 8), 3])
  return np.kron(blocks, np.ones([8, 8, 1]))[:height, :width].astype(np.uint8)


def _write_run(root, name="dolg"):
  """A run folder (config.json + checkpoints/) holding the shared tiny model's weights."""
  model_config = testutil.TINY_DOLG if name == "dolg" else testutil.TINY_DELG
  config_lib.save_config(config_lib.ExperimentConfig(model=model_config), root)
  tf.train.Checkpoint(model=testutil.tiny_model(name)).save(
    os.path.join(root, "checkpoints", "ckpt")
  )
  return root


class _Links(html.parser.HTMLParser):
  def __init__(self):
    super().__init__()
    self.links = []

  def handle_starttag(self, tag, attrs):
    self.links.extend(value for key, value in attrs if key in ("src", "href"))


class AttentionTest(tf.test.TestCase, parameterized.TestCase):
  @parameterized.parameters("dolg", "delg")
  def test_overlay_has_the_image_size_and_marks_high_attention(self, name):
    model = testutil.tiny_model(name)
    image = _image(72, 100)
    attention = attention_lib.attention_map(model, image)
    self.assertEqual(attention.ndim, 2)
    self.assertGreater(attention.size, 1)
    self.assertGreater(float(attention.max()), float(attention.min()))
    shown, overlay = attention_lib.attention_picture(model, image, max_image_size=0)
    self.assertAllEqual(shown, image)
    self.assertEqual(overlay.shape, image.shape)
    # Where the resized attention peaks the heat map replaces part of the image; where it
    # is lowest (weight 0) the image is unchanged.
    resized = np.asarray(Image.fromarray(attention).resize((100, 72), Image.Resampling.BILINEAR))
    hot = np.unravel_index(np.argmax(resized), resized.shape)
    cold = np.unravel_index(np.argmin(resized), resized.shape)
    self.assertGreater(np.abs(overlay[hot].astype(int) - image[hot]).max(), 20)
    self.assertAllEqual(overlay[cold], image[cold])

  def test_max_image_size_shrinks_the_input(self):
    shown, overlay = attention_lib.attention_picture(
      testutil.tiny_model("dolg"), _image(64, 128), 64
    )
    self.assertEqual(shown.shape, (32, 64, 3))
    self.assertEqual(overlay.shape, (32, 64, 3))


class RestoredRunTest(tf.test.TestCase):
  def test_restore_model_gives_the_checkpointed_attention(self):
    logdir = _write_run(self.create_tempdir().full_path)
    experiment, model = checkpoint_restore.restore_model(logdir)
    self.assertEqual(experiment.model.name, "dolg")
    image = _image(64, 64, seed=3)
    self.assertAllClose(
      attention_lib.attention_map(model, image),
      attention_lib.attention_map(testutil.tiny_model("dolg"), image),
      atol=1e-5,
    )


class CommandTest(tf.test.TestCase):
  def _benchmark(self, root):
    """A tiny gnd, its images, global descriptors and local features (a shifted grid)."""
    images_dir = os.path.join(root, "jpg")
    features = os.path.join(root, "features")
    os.makedirs(images_dir)
    os.makedirs(features)
    imlist, qimlist = ["db0", "db1", "db2"], ["q0"]
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.arange(8, 56, 8), np.arange(8, 56, 8)), -1).reshape(-1, 2)
    local = rng.normal(size=[len(grid), 8]).astype(np.float32)
    local /= np.linalg.norm(local, axis=1, keepdims=True)
    for k, name in enumerate(imlist + qimlist):
      Image.fromarray(_image(64, 64, seed=k)).save(os.path.join(images_dir, name + ".jpg"))
      datum_io.write_to_file(os.path.join(features, name + ".dolg_global"), rng.normal(size=4))
      ones = np.ones(len(grid), np.float32)
      feature_io.write_to_file(
        os.path.join(features, name + ".delg_local"), grid + k, ones, local, ones
      )
    gnd = {
      "imlist": imlist,
      "qimlist": qimlist,
      "gnd": [{"easy": [0], "hard": [1], "junk": [], "bbx": [4, 4, 60, 60]}],
    }
    gnd_path = os.path.join(root, "gnd_tiny.pkl")
    with open(gnd_path, "wb") as f:
      pickle.dump(gnd, f)
    return gnd_path, images_dir, features

  def test_report_with_attention_matches_and_ranked_lists(self):
    root = self.create_tempdir().full_path
    logdir = _write_run(os.path.join(root, "run"))
    gnd_path, images_dir, features = self._benchmark(root)
    report_dir = os.path.join(root, "report")
    done = testutil.run_module(
      "dolg_tf.visualize",
      f"--report_dir={report_dir}",
      f"--logdir={logdir}",
      f"--images_dir={images_dir}",
      "--attention_images=q0,db1",
      f"--dataset_file_path={gnd_path}",
      f"--query_features_dir={features}",
      f"--index_features_dir={features}",
      "--num_match_pairs=1",
      "--match_pairs=db1:db2",
      "--gv_residual_threshold=2",
    )
    self.assertEqual(done.returncode, 0, done.stderr)
    self.assertIn(f"report: {report_dir}/index.html", done.stdout)
    with open(os.path.join(report_dir, "index.html"), encoding="utf-8") as f:
      page = f.read()
    parser = _Links()
    parser.feed(page)
    targets = {link for link in parser.links if not link.startswith("#")}
    self.assertEqual(targets, set(os.listdir(report_dir)) - {"index.html"})
    for expected in (
      "attention_q0.png",
      "attention_db1.png",
      "matches_db1_db2.png",
      "ranked_q0.png",
      "ap_per_query.png",
      "precision_recall.png",
    ):
      self.assertIn(expected, targets)
    # Every keypoint grid is the same grid shifted by k: all 36 matches are inliers.
    self.assertIn("db1 - db2: 36 inliers", page)
    attention = images.decode_image(os.path.join(report_dir, "attention_q0.png"))
    # Labels over image | gap | overlay | gap | colour bar (issue 26: labelled, with a bar).
    top, gap = attention_lib.PANEL_LABEL_HEIGHT, attention_lib.PANEL_GAP
    self.assertEqual(attention.shape[0], top + 64)
    self.assertGreater(attention.shape[1], 2 * 64 + 2 * gap + attention_lib.COLOUR_BAR_WIDTH)
    self.assertGreater(np.count_nonzero(attention[:top, :64].max(axis=2) < 80), 10)  # "image"
    bar_x = 2 * 64 + 2 * gap + 2
    high, low = drawing.jet(np.array([1.0, 0.0]))
    self.assertAllEqual(attention[top, bar_x], high)
    self.assertAllEqual(attention[top + 63, bar_x], low)
    ranked_matches = [t for t in targets if t.startswith("matches_q0_")]
    self.assertLen(ranked_matches, 1)  # q0 against its best-ranked positive

  def test_missing_file_is_one_line_and_exit_2(self):
    root = self.create_tempdir().full_path
    config_lib.save_config(config_lib.ExperimentConfig(model=testutil.TINY_DOLG), root)
    report_dir = os.path.join(root, "report")
    done = testutil.run_module(
      "dolg_tf.visualize",
      f"--report_dir={report_dir}",
      f"--logdir={root}",
      f"--attention_images={root}/nope.jpg",
    )
    self.assertEqual(done.returncode, 2, done.stderr)
    self.assertEqual(
      done.stderr.strip(),
      f"visualize: error: --attention_images: {root}/nope.jpg: image not found",
    )
    self.assertFalse(os.path.exists(report_dir))


class ReadmeExamplesTest(tf.test.TestCase):
  """tools/readme_examples.py: the README's pictures from two demo run folders."""

  def _demo_workdir(self, root, name):
    """A demo-shaped run folder: tiny model, benchmark/{gnd_synthetic.pkl,jpg}, features."""
    workdir = _write_run(os.path.join(root, f"demo_{name}"), name)
    benchmark = os.path.join(workdir, "benchmark")
    gnd_path, _, features = CommandTest._benchmark(self, benchmark)
    os.rename(gnd_path, os.path.join(benchmark, "gnd_synthetic.pkl"))
    os.rename(features, os.path.join(workdir, "features_trained"))
    return workdir

  def test_writes_the_five_pictures(self):
    root = self.create_tempdir().full_path
    output_dir = os.path.join(root, "images")
    done = testutil.run_module(
      "tools.readme_examples",
      f"--dolg_workdir={self._demo_workdir(root, 'dolg')}",
      f"--delg_workdir={self._demo_workdir(root, 'delg')}",
      f"--output_dir={output_dir}",
      cwd=REPO_ROOT,
    )
    self.assertEqual(done.returncode, 0, done.stderr)
    expected = {"attention.png", "matches.png", "ranked_list.png"}
    expected |= {"ap_per_query.png", "precision_recall.png"}
    self.assertEqual(set(os.listdir(output_dir)), expected)
    # Image | DOLG | DELG attention of the 64 px query at 2x, under labels, with a colour bar.
    picture = images.decode_image(os.path.join(output_dir, "attention.png"))
    self.assertEqual(picture.shape[0], attention_lib.PANEL_LABEL_HEIGHT + 128)
    self.assertGreater(picture.shape[1], 3 * 128)
    matches = images.decode_image(os.path.join(output_dir, "matches.png"))
    self.assertGreaterEqual(matches.shape[1], 2 * match_images.READABLE_SIDE)

  def test_missing_demo_is_one_line_and_exit_2(self):
    root = self.create_tempdir().full_path
    done = testutil.run_module(
      "tools.readme_examples",
      f"--dolg_workdir={root}/none",
      f"--output_dir={root}/images",
      cwd=REPO_ROOT,
    )
    self.assertEqual(done.returncode, 2, done.stderr)
    self.assertEqual(
      done.stderr.strip(),
      f"readme_examples: error: {root}/none/benchmark/gnd_synthetic.pkl: not found "
      f"(run the demo first: dolg-demo --model=dolg --workdir={root}/none)",
    )
    self.assertFalse(os.path.exists(os.path.join(root, "images")))


if __name__ == "__main__":
  tf.test.main()
