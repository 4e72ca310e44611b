"""Tests for dolg_tf.config and the SavedModel contract's export section (dolg_tf.io)."""

import json
import os

import tensorflow as tf

from dolg_tf import config as config_lib
from dolg_tf.io import export_section, savedmodel_contract


class ReadExportConfigTest(tf.test.TestCase):
  def _model(self, config_json=None, legacy_json=None):
    folder = self.create_tempdir().full_path
    os.makedirs(os.path.join(folder, "assets.extra"))
    for asset, payload in (
      (savedmodel_contract.CONFIG_ASSET, config_json),
      (savedmodel_contract.LEGACY_CONFIG_ASSET, legacy_json),
    ):
      if payload is not None:
        with open(os.path.join(folder, asset), "w") as f:
          f.write(payload if isinstance(payload, str) else json.dumps(payload))
    return folder

  def test_no_folder_or_no_asset_is_none(self):
    self.assertIsNone(export_section.read_export_config(None))
    self.assertIsNone(export_section.read_export_config(self._model()))

  def test_reads_the_export_section_through_export_config(self):
    model = self._model(
      {
        "model": {},
        "export": {"image_scales": [0.5, 1], "max_image_size": 32, "scale_pooling": "max"},
        savedmodel_contract.INTERFACE_KEY: 2,
      }
    )
    record = export_section.read_export_config(model)
    self.assertEqual(record.path, os.path.join(model, savedmodel_contract.CONFIG_ASSET))
    self.assertEqual(record.interface_version, 2)
    self.assertEqual(
      record.recorded_values(),
      {"image_scales": (0.5, 1.0), "max_image_size": 32, "scale_pooling": "max"},
    )
    self.assertIsInstance(record.config, export_section.ExportConfig)
    self.assertEqual(record.config.min_image_size, -1)  # not recorded: the default

  def test_older_exports_and_keys(self):
    # Before the interface key: version 1; a renamed key is read; unknown keys are ignored.
    model = self._model({"export": {"jit_compile": True, "gone_field": 3}})
    record = export_section.read_export_config(model)
    self.assertEqual(record.interface_version, 1)
    self.assertEqual(record.recorded_values(), {"serve_jit_compile": True})
    # Exports before the config asset: a flat export_config.json.
    legacy = self._model(legacy_json={"image_scales": [1.0, 2.0], "max_image_size": 50})
    record = export_section.read_export_config(legacy)
    self.assertEqual(record.path, os.path.join(legacy, savedmodel_contract.LEGACY_CONFIG_ASSET))
    self.assertEqual(record.interface_version, 1)
    self.assertEqual(record.recorded_values(), {"image_scales": (1.0, 2.0), "max_image_size": 50})

  def test_bad_values_are_one_line_naming_file_and_field(self):
    cases = [
      ("{", "config.json: not a JSON file"),
      ({"export": [1]}, "config.json: expected a JSON object 'export'"),
      ({"export": {"image_scales": "1.0"}}, "config.json: export.image_scales: expected a list"),
      ({"export": {"max_image_size": 1.5}}, "export.max_image_size: expected an integer, got 1.5"),
      ({"export": {"superglobal_gem_p": True}}, "export.superglobal_gem_p: expected a number"),
      (
        {"export": {"scale_pooling": "mean"}},
        r"export.scale_pooling: expected one of \['average', 'max'\], got 'mean'",
      ),
      ({"export": {"max_image_size": 0}}, "export.max_image_size must be positive or -1"),
      ({"interface_version": "2"}, "config.json: interface_version: expected an integer"),
    ]
    for payload, message in cases:
      with self.subTest(message=message):
        with self.assertRaisesRegex(ValueError, message):
          export_section.read_export_config(self._model(payload))
    with self.assertRaisesRegex(ValueError, r"export_config.json: max_image_size: expected an int"):
      export_section.read_export_config(self._model(legacy_json={"max_image_size": "5"}))


class ConfigTest(tf.test.TestCase):
  def test_export_section_is_the_contracts(self):
    self.assertIs(config_lib.ExportConfig, export_section.ExportConfig)
    self.assertEqual(
      config_lib.ExperimentConfig().export.image_scales,
      savedmodel_contract.PYRAMID_PRESETS[savedmodel_contract.DEFAULT_PYRAMID],
    )

  def test_load_config_of_an_older_export(self):
    folder = self.create_tempdir().full_path
    path = os.path.join(folder, "config.json")
    with open(path, "w") as f:
      json.dump({"export": {"jit_compile": True}, savedmodel_contract.INTERFACE_KEY: 2}, f)
    self.assertTrue(config_lib.load_config(path).export.serve_jit_compile)


class OverrideTest(tf.test.TestCase):
  def test_key_value_yaml_and_dict_overrides(self):
    base = config_lib.ExperimentConfig()
    changed = config_lib.override(
      base, "train.batch_size=8,export.image_scales=[0.5, 1],train.weight_decay=1e-6"
    )
    self.assertEqual(changed.train.batch_size, 8)
    self.assertEqual(changed.export.image_scales, (0.5, 1.0))
    self.assertEqual(changed.train.weight_decay, 1e-6)
    self.assertEqual(base.train.batch_size, 64)  # a copy
    self.assertEqual(config_lib.override(base, "train:\n  seed: 3").train.seed, 3)
    self.assertEqual(config_lib.override(base, {"model": {"gem_p": 4}}).model.gem_p, 4.0)
    self.assertEqual(
      config_lib.override(base, "data.train_file_pattern=/a/t-*").data.train_file_pattern, "/a/t-*"
    )

  def test_errors_are_one_line_naming_the_field(self):
    base = config_lib.ExperimentConfig()
    cases = [
      ("model.dpth=3", "^unknown config field model.dpth$"),
      ("export.max_image_size", "^--params_override: expected key=value"),
      ("a=1,,", "^--params_override: expected key=value pairs"),
      ("model=3", "^config field model is a section, got 3$"),
      ("model.gem_p={a: 1}", "^config field model.gem_p is a value"),
      ("train.batch_size=abc", "^train.batch_size: could not convert"),
      ("export.precision=fp8", "^export.precision must be one of"),
      ("missing.yaml", "^config not found: missing.yaml$"),
      ("train.optimizer=rmsprop", "^train.optimizer must be one of"),
      (
        "{train: {optimizer: adam, lr_multipliers: backbone=0.1}}",
        "^train.lr_multipliers scale gradients, which leaves an Adam step unchanged",
      ),
    ]
    for text, message in cases:
      with self.subTest(text=text):
        with self.assertRaisesRegex(config_lib.ConfigError, message):
          config_lib.override(base, text)


if __name__ == "__main__":
  tf.test.main()
