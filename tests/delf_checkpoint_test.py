"""Tests for dolg_tf.convert.delf_checkpoint: DELF DELG checkpoints -> DelgModel."""

import os
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf

from dolg_tf import config as config_lib
from dolg_tf.convert import delf_checkpoint
from tests import delf_reference

# A reduced DELF network: DELF's names and structure, 1/8 of the width, 2 blocks a stage.
_SMALL = dict(
  depth=26, width_multiplier=0.125, embedding_dim=32, reduced_dim=8, attention_hidden=16
)
_PARITY_KEYS = ("f3", "f4", "global_embedding", "attention", "reduced_features")


def _relative_error(ours, reference):
  return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))


def _pixels(height, width, seed):
  return tf.random.stateless_uniform([2, height, width, 3], [seed, 7], 0.0, 255.0)


class DelfCheckpointTest(tf.test.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.reference = delf_reference.randomize(
      delf_reference.DelfDelg(num_classes=7, **_SMALL), seed=1
    )
    cls.logdir = os.path.join(cls.tmp, "delf_logdir")
    cls.prefix = delf_reference.save_delf_checkpoint(cls.reference, cls.logdir, save_weights=True)
    cls.converted = delf_checkpoint.load_delf_checkpoint(cls.logdir, import_head=True)

  def _assert_parity(self, model, height, width, seed):
    pixels = _pixels(height, width, seed)
    expected = delf_reference.reference_outputs(self.reference, (pixels - 128.0) / 128.0)
    ours = model(pixels, training=False, return_intermediates=True)
    for key in _PARITY_KEYS:
      self.assertEqual(ours[key].shape, expected[key].shape, key)
      error = _relative_error(ours[key].numpy(), expected[key])
      self.assertLessEqual(error, 1e-5, f"{key}: relative error {error:.2e}")

  def test_checkpoint_has_delf_keys(self):
    keys = {k for k, _ in tf.train.list_variables(self.prefix)}
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    for name in (
      "backbone/conv1/kernel",
      "backbone/bn_conv1/moving_variance",
      "backbone/l2a/conv_shortcut/kernel",
      "backbone/l5b/bn2c/gamma",
      "backbone/embedding_layer/kernel",
      "attention/conv1/kernel",
      "attention/bn_conv1/moving_mean",
      "autoencoder/conv2/bias",
      "attn_classification/kernel",
      "cosine_weights",
      "scale_factor",
    ):
      self.assertIn(f"model/{name}{suffix}", keys)

  def test_inferred_config(self):
    config = self.converted.config
    self.assertEqual(config.backbone_layout, "delf")
    self.assertTrue(config.block3_strides)
    self.assertEqual(config.backbone_depth, 26)
    self.assertEqual(config.backbone_width_multiplier, 0.125)
    self.assertEqual((config.embedding_dim, config.delg_reduced_dim), (32, 8))
    self.assertEqual(config.delg_attention_hidden, 16)
    self.assertEqual((config.head_scale, config.head_margin), (45.25, 0.1))
    report = self.converted.report
    self.assertEqual(report.unused, [])
    self.assertGreater(report.ignored, 0)  # optimizer variables and bookkeeping
    self.assertIn("unused: none", report.summary())

  def test_outputs_match_delf_on_odd_and_even_inputs(self):
    self._assert_parity(self.converted.model, 97, 131, seed=1)
    self._assert_parity(self.converted.model, 96, 128, seed=2)

  def test_attention_classifier_and_head(self):
    pixels = _pixels(64, 64, seed=3)
    expected = self.reference.forward((pixels - 128.0) / 128.0, training=False)
    ours = self.converted.model(pixels, training=False, return_intermediates=True)
    self.assertAllClose(
      ours["attention_logits"],
      self.reference.attn_classification(expected["attention_prelogits"]),
      rtol=1e-4,
      atol=1e-5,
    )
    head = self.converted.head
    self.assertAllEqual(head.kernel, self.reference.cosine_weights)
    # DELF's cosine_classifier_logits without margin (eval): scale * cosine.
    cosine = tf.matmul(
      tf.math.l2_normalize(expected["global_embedding"], axis=1),
      tf.math.l2_normalize(self.reference.cosine_weights, axis=0),
    )
    self.assertAllClose(head(ours["global_embedding"]), 45.25 * cosine, rtol=1e-4, atol=1e-4)

  def test_save_weights_file_loads_too(self):
    converted = delf_checkpoint.load_delf_checkpoint(os.path.join(self.logdir, "delf_weights"))
    self.assertIsNone(converted.head)
    self.assertEqual(converted.report.unused, ["cosine_weights"])
    self._assert_parity(converted.model, 65, 47, seed=4)

  def test_full_size_r50(self):
    # DELF's own network (R50, width 1, 2048-d embedding, 128-d reduction); ~5 s on 2 cores.
    reference = delf_reference.randomize(delf_reference.DelfDelg(num_classes=3), seed=7)
    logdir = os.path.join(self.tmp, "r50")
    delf_reference.save_delf_checkpoint(reference, logdir)
    converted = delf_checkpoint.load_delf_checkpoint(logdir)
    self.assertEqual(converted.config.backbone_depth, 50)
    self.assertEqual(converted.config.backbone_width_multiplier, 1.0)
    self.assertEqual(converted.report.loaded, 334)  # 53 convs + 53 BNs, then the heads
    pixels = _pixels(321, 321, seed=8)[:1]
    expected = delf_reference.reference_outputs(reference, (pixels - 128.0) / 128.0)
    ours = converted.model(pixels, training=False, return_intermediates=True)
    self.assertEqual(ours["f3"].shape, (1, 10, 10, 1024))  # as DELF at 321 x 321
    self.assertEqual(ours["f4"].shape, (1, 10, 10, 2048))
    for key in _PARITY_KEYS:
      self.assertLessEqual(_relative_error(ours[key].numpy(), expected[key]), 1e-5, key)

  def test_block3_strides_off(self):
    reference = delf_reference.randomize(
      delf_reference.DelfDelg(block3_strides=False, **_SMALL), seed=5
    )
    logdir = os.path.join(self.tmp, "no_strides")
    delf_reference.save_delf_checkpoint(reference, logdir)
    converted = delf_checkpoint.load_delf_checkpoint(logdir, block3_strides=False)
    pixels = _pixels(97, 131, seed=6)
    expected = delf_reference.reference_outputs(reference, (pixels - 128.0) / 128.0)
    ours = converted.model(pixels, training=False, return_intermediates=True)
    self.assertEqual(ours["f3"].shape, (2, 6, 8, 128))  # DELF: 97 -> 49 -> 24 -> 12 -> 6
    for key in _PARITY_KEYS:
      self.assertLessEqual(_relative_error(ours[key].numpy(), expected[key]), 1e-5, key)

  def test_convert_writes_loadable_artefacts(self):
    output = os.path.join(self.tmp, "converted")
    paths = delf_checkpoint.convert_delf_checkpoint(self.prefix, output, import_head=True)
    self.assertEqual(config_lib.load_model_config(paths["model_config"]).backbone_layout, "delf")
    self.assertTrue(tf.io.gfile.exists(paths["checkpoint"] + ".index"))
    exported = tf.saved_model.load(paths["export"])
    stored = config_lib.load_model_config(paths["export"])
    self.assertEqual(stored, self.converted.config)
    self.assertNotEmpty(exported.signatures)
    self.assertFalse(os.path.exists(f"{output}.tmp-{os.getpid()}"))

  def test_errors_name_file_and_variable(self):
    with self.assertRaisesRegex(OSError, "missing_dir"):
      delf_checkpoint.load_delf_checkpoint(os.path.join(self.tmp, "missing_dir"))
    other = tf.train.Checkpoint(model=tf.Module())
    other.model.v = tf.Variable(1.0)
    prefix = other.save(os.path.join(self.tmp, "other", "ckpt"))
    with self.assertRaisesRegex(ValueError, r"ckpt-1: not a DELF/DELG checkpoint"):
      delf_checkpoint.load_delf_checkpoint(prefix)
    # An autoencoder that does not expand back to the block3 channels (129, not 128).
    bad = delf_reference.DelfDelg(**_SMALL)
    bad.autoencoder = delf_reference.DelfAutoencoder(8, 129)
    delf_reference.build(bad)
    prefix = delf_reference.save_delf_checkpoint(bad, os.path.join(self.tmp, "bad"))
    with self.assertRaisesRegex(
      ValueError,
      r"ckpt-1: shape mismatch for 'model/autoencoder/conv2/kernel/.ATTRIBUTES/VARIABLE_VALUE'",
    ):
      delf_checkpoint.load_delf_checkpoint(prefix)

  def test_binary_reports_user_errors_in_one_line(self):
    result = subprocess.run(
      [
        sys.executable,
        "-m",
        "dolg_tf.convert.convert_delf_checkpoint",
        f"--checkpoint={os.path.join(self.tmp, 'nothing_here')}",
        f"--output_dir={os.path.join(self.tmp, 'out_bin')}",
      ],
      capture_output=True,
      text=True,
      check=False,
    )
    self.assertEqual(result.returncode, 2, result.stderr)
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    self.assertLen(lines, 1)
    self.assertIn("nothing_here", lines[0])


if __name__ == "__main__":
  tf.test.main()
