"""Tests for dolg_tf.utils.cpu (native bfloat16 detection) and the "auto" precisions."""

import json
import os
from unittest import mock

import tensorflow as tf

from dolg_tf import config as config_lib
from dolg_tf.export import versions
from dolg_tf.io import savedmodel_contract
from dolg_tf.utils import cpu
from tests import testutil

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"


class CpuTest(tf.test.TestCase):
  def _cpuinfo(self, text):
    path = os.path.join(self.create_tempdir().full_path, "cpuinfo")
    with open(path, "w") as f:
      f.write(text)
    return path

  def test_flags_and_native_bfloat16(self):
    self.assertFalse(cpu.has_native_bfloat16(self._cpuinfo(AVX2_ONLY)))
    self.assertIn("avx2", cpu.cpu_flags(self._cpuinfo(AVX2_ONLY)))
    self.assertTrue(cpu.has_native_bfloat16(self._cpuinfo(SAPPHIRE_RAPIDS)))
    self.assertEqual(cpu.cpu_flags("/nonexistent/cpuinfo"), frozenset())

  def test_auto_follows_the_cpu(self):
    with mock.patch.object(cpu, "has_native_bfloat16", return_value=True):
      self.assertEqual(cpu.resolve_auto("auto", "mixed_bfloat16"), "mixed_bfloat16")
      self.assertEqual(cpu.resolve_auto("float32", "mixed_bfloat16"), "float32")
    with mock.patch.object(cpu, "has_native_bfloat16", return_value=False):
      self.assertEqual(cpu.resolve_auto("auto", "bfloat16"), "float32")

  def test_auto_export_records_the_precision_it_got(self):
    config = config_lib.ExportConfig(max_image_size=80, image_scales=(1.0,), precision="auto")
    base = self.create_tempdir().full_path
    with mock.patch.object(cpu, "has_native_bfloat16", return_value=False):
      export_dir = versions.export_saved_model(
        testutil.tiny_model("dolg"), testutil.TINY_DOLG, base, export_config=config
      )
    with open(os.path.join(export_dir, savedmodel_contract.CONFIG_ASSET)) as f:
      self.assertEqual(json.load(f)["export"]["precision"], "float32")

  def test_auto_is_a_valid_choice(self):
    config_lib.TrainConfig(mixed_precision="auto").validate()
    with self.assertRaisesRegex(config_lib.ConfigError, "train.mixed_precision"):
      config_lib.TrainConfig(mixed_precision="bf16").validate()


if __name__ == "__main__":
  tf.test.main()
