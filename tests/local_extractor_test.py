"""Tests for DELG local + global extraction from an exported SavedModel."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import tensorflow as tf
from PIL import Image

from dolg_tf.extraction import extractor as extractor_lib
from dolg_tf.extraction import failure_log, local_extractor, pipeline, task_sources
from dolg_tf.io import binarize, config_io, datum_io, feature_io, savedmodel_contract
from dolg_tf.utils import images
from tests import testutil

TINY_DELG = testutil.TINY_DELG

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = """
image_scales: 0.5
image_scales: 1.0
max_image_size: 64
use_global_features: true
use_local_features: true
global_config { image_scales_ind: 1 }
local_config {
  max_feature_num: 12
  use_resized_coordinates: %s
  binarize: %s
}
global_descriptor_suffix: ".delg_global"
local_descriptor_suffix: ".delg_local"
"""


class LocalExtractorTest(tf.test.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.export_dir = testutil.tiny_export("delg")
    cls.loaded = tf.saved_model.load(cls.export_dir)
    # 96 x 128: max_image_size 64 resizes it to 48 x 64 (factor 0.5).
    cls.image = np.random.default_rng(0).integers(0, 256, [96, 128, 3], dtype=np.uint8)

  def _extractor(self, resized=False, binary=False):
    text = CONFIG % (str(resized).lower(), str(binary).lower())
    config = config_io.parse_dolg_config(text)
    return extractor_lib.Extractor(config, model_path=self.export_dir, saved_model=self.loaded)

  def test_features_in_original_coordinates(self):
    extractor = self._extractor()
    result = extractor.extract(self.image)
    n = len(result["scores"])
    self.assertBetween(n, 1, 12)
    self.assertEqual(result["locations"].shape, (n, 2))
    self.assertEqual(result["descriptors"].shape, (n, 8))
    self.assertAllClose(np.linalg.norm(result["descriptors"], axis=1), np.ones(n), atol=1e-5)
    self.assertTrue(np.all(np.diff(result["scores"]) <= 0))
    self.assertEqual(result["global"].shape, (16,))
    self.assertAllClose(np.linalg.norm(result["global"]), 1.0, atol=1e-5)
    locations = result["locations"]
    self.assertTrue(np.all(locations >= 0))
    self.assertTrue(np.all(locations[:, 0] <= 96) and np.all(locations[:, 1] <= 128))
    # Resized coordinates are the same points at the resize factor 0.5.
    resized = self._extractor(resized=True).extract(self.image)
    self.assertAllClose(resized["locations"] * 2.0, locations, atol=1e-3)
    self.assertTrue(np.all(resized["locations"][:, 0] <= 48))
    # Keypoints are the box centres of the raw signature output.
    raw = extractor.run_model(extractor.preprocess(self.image).image)
    self.assertAllClose(local_extractor.keypoint_centers(raw["boxes"]) * 2.0, locations, atol=1e-3)

  def test_scales_follow_delf_convention(self):
    # DELF's .delg_local `scales` hold 1 / s for a feature found at pyramid scale s.
    result = self._extractor().extract(self.image)
    self.assertContainsSubset(set(np.unique(result["scales"]).tolist()), {2.0, 1.0})
    # Exports made before interface version 2 held s: extraction inverts theirs.
    old_export = os.path.join(self.create_tempdir().full_path, "1")
    shutil.copytree(self.export_dir, old_export)
    asset = os.path.join(old_export, savedmodel_contract.CONFIG_ASSET)
    with open(asset) as f:
      payload = json.load(f)
    self.assertEqual(
      payload.pop(savedmodel_contract.INTERFACE_KEY), savedmodel_contract.INTERFACE_VERSION
    )
    with open(asset, "w") as f:
      json.dump(payload, f)
    config = config_io.parse_dolg_config(CONFIG % ("false", "false"))
    old = extractor_lib.Extractor(config, model_path=old_export, saved_model=self.loaded)
    self.assertAllClose(old.outputs.local_scales(np.array([0.5, 1.0])), [2.0, 1.0])
    self.assertAllClose(self._extractor().outputs.local_scales(np.array([2.0, 1.0])), [2.0, 1.0])

  def test_tiny_images_follow_delf_rule(self):
    folder = self.create_tempdir().full_path
    path = os.path.join(folder, "tiny.png")
    Image.fromarray(self.image[:9, :40]).save(path)  # 9 px high: under DELF's 10
    text = (CONFIG % ("false", "false")).replace("use_global_features: true", "")
    local_only = extractor_lib.Extractor(
      config_io.parse_dolg_config(text + "use_global_features: false"),
      model_path=self.export_dir,
      saved_model=self.loaded,
    )
    result = local_only.extract_from_file(path)
    self.assertEqual(result["locations"].shape, (0, 2))
    self.assertEqual(result["scores"].shape, (0,))
    written = local_only.write_outputs(folder, "tiny", result)
    self.assertEqual(written, [os.path.join(folder, "tiny.delg_local")])
    self.assertEmpty(feature_io.read_from_file(written[0]).scales)
    # With a global descriptor the image is a failure naming it (DELF's script stops there).
    with self.assertRaisesRegex(images.ImageError, r"tiny.png: image too small \(40x9"):
      self._extractor().extract_from_file(path)

  def test_one_extractor_for_both_kinds_of_config(self):
    extractor = self._extractor()
    self.assertTrue(extractor.local)
    self.assertEqual(extractor.signature_name, "serving_default")
    self.assertIsInstance(
      extractor.make_writer(self.get_temp_dir()), local_extractor.LocalGlobalWriter
    )
    # A global-only config on the same DELG export runs serve_global at the global scale only.
    text = CONFIG % ("false", "false")
    config = config_io.parse_dolg_config(text.replace("use_local_features: true", ""))
    global_only = extractor_lib.Extractor(
      config, model_path=self.export_dir, saved_model=self.loaded
    )
    self.assertFalse(global_only.local)
    self.assertEqual(global_only.signature_name, "serve_global")
    self.assertAllClose(global_only.scales, [1.0])
    self.assertIsNone(global_only.make_writer(self.get_temp_dir()))
    descriptor = global_only.extract(global_only.preprocess(self.image))
    self.assertAllClose(descriptor, extractor.extract(self.image)["global"], atol=1e-5)

  def test_files_written_and_readable(self):
    out = self.create_tempdir().full_path
    extractor = self._extractor()
    result = extractor.extract(self.image)
    paths = extractor.write_outputs(out, "img", result)
    self.assertEqual(paths, extractor.output_paths(out, "img"))
    self.assertAllClose(datum_io.read_from_file(paths[0]), result["global"])
    features = feature_io.read_from_file(paths[1])
    self.assertAllClose(features.locations, result["locations"])
    self.assertAllClose(features.descriptors, result["descriptors"])
    self.assertAllClose(features.attention, result["scores"])
    self.assertAllClose(features.scales, result["scales"])
    self.assertEqual(sorted(os.listdir(out)), ["img.delg_global", "img.delg_local"])

  def test_binarized_files_round_trip(self):
    out = self.create_tempdir().full_path
    float_result = self._extractor().extract(self.image)
    extractor = self._extractor(binary=True)
    result = extractor.extract(self.image)
    self.assertEqual(result["descriptors"].dtype, np.uint8)
    self.assertAllEqual(result["descriptors"], binarize.binarize(float_result["descriptors"]))
    path = extractor.write_outputs(out, "img", result)[1]
    self.assertEqual(feature_io.read_from_file(path).descriptors.dtype, np.uint32)
    self.assertAllEqual(
      local_extractor.read_local_features(path).descriptors, result["descriptors"]
    )

  def test_batch_extraction_skips_and_records_failures(self):
    images_dir = self.create_tempdir().full_path
    out = self.create_tempdir().full_path
    tf.io.write_file(os.path.join(images_dir, "a.png"), tf.io.encode_png(self.image[:40, :50]))
    with open(os.path.join(images_dir, "bad.jpg"), "wb") as f:
      f.write(b"not an image")
    extractor = self._extractor()
    tasks = task_sources.tasks_from_paths(task_sources.list_images(images_dir))
    summary = pipeline.run_extraction(extractor, tasks, out)
    self.assertEqual((summary.done, summary.failed, summary.exit_code), (1, 1, 0))
    self.assertTrue(os.path.exists(os.path.join(out, "a.delg_local")))
    self.assertTrue(os.path.exists(os.path.join(out, "a.delg_global")))
    self.assertLen(failure_log.read_failures(os.path.join(out, failure_log.FAILURES_FILE)), 1)
    again = pipeline.run_extraction(extractor, tasks, out)
    self.assertEqual((again.done, again.skipped, again.failed), (0, 1, 1))
    # An image whose global file is missing (a run killed between its two
    # files) is extracted again; shards cannot hold local features.
    os.remove(os.path.join(out, "a.delg_global"))
    third = pipeline.run_extraction(extractor, tasks, out)
    self.assertEqual((third.done, third.skipped), (1, 0))
    self.assertTrue(os.path.exists(os.path.join(out, "a.delg_global")))
    with self.assertRaisesRegex(ValueError, "per image only"):
      pipeline.run_extraction(extractor, tasks, out, output_format="shards")

  def test_extract_features_binary_writes_delf_local_and_global_files(self):
    script = os.path.join(REPO_ROOT, "extract_features.py")
    if not os.path.exists(script):
      self.skipTest(f"{script} is not in this test's runfiles")
    root = self.create_tempdir().full_path
    images = os.path.join(root, "images")
    os.makedirs(images)
    for i in range(2):
      Image.fromarray(np.roll(self.image, 7 * i, axis=1)).save(os.path.join(images, f"im{i}.jpg"))
    config_path = os.path.join(root, "delg.pbtxt")
    with open(config_path, "w") as f:
      f.write(f'model_path: "{self.export_dir}"\n' + CONFIG % ("false", "false"))
    out = os.path.join(root, "out")
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
      [
        sys.executable,
        script,
        f"--config={config_path}",
        f"--images_dir={images}",
        f"--output_dir={out}",
      ],
      cwd=root,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
    )
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    refused = subprocess.run(
      [
        sys.executable,
        script,
        f"--config={config_path}",
        f"--images_dir={images}",
        f"--output_dir={os.path.join(root, 'shards')}",
        "--output_format=shards",
      ],
      cwd=root,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
    )
    self.assertEqual(refused.returncode, 2, refused.stderr[-3000:])
    self.assertIn("per image only", refused.stderr)
    self.assertFalse(os.path.exists(os.path.join(root, "shards")))
    for i in range(2):
      features = feature_io.read_from_file(os.path.join(out, f"im{i}.delg_local"))
      self.assertBetween(len(features.scales), 1, 12)
      self.assertEqual(
        datum_io.read_from_file(os.path.join(out, f"im{i}.delg_global")).shape, (16,)
      )


if __name__ == "__main__":
  tf.test.main()
