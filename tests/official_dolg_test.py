"""Tests for dolg_tf.convert.official_dolg against a PyTorch model with the official structure.

The PyTorch reference (pycls ResNet, SpatialAttention2d with optional ASPP, GeM,
orthogonal fusion) is written here from the official code's structure and key
names; it gets random weights and non-trivial BatchNorm statistics, is saved as
`{"model_state": state_dict}` and converted. Parts that need torch (or
torchvision) are skipped with a visible reason when it is not installed.
"""

import os
import re

import cv2
import numpy as np
import tensorflow as tf
from absl.testing import absltest

from dolg_tf import config as config_lib
from dolg_tf.convert import official_dolg, official_structure, torch_state, torchvision_resnet
from dolg_tf.extraction import extractor as extractor_lib
from dolg_tf.io import config_io, image_loading, savedmodel_contract
from dolg_tf.keras_api import keras
from dolg_tf.model import backbones, builder
from tests import testutil

try:
  import torch
  import torch.nn.functional as F
  from torch import nn

  from tests import torch_dolg_reference

  _TORCH_MISSING = ""
except ImportError as e:  # torch is an optional dependency of the converter only.
  torch = None
  _TORCH_MISSING = f"torch not installed: {e}"

try:
  import torchvision

  _TORCHVISION_MISSING = ""
except ImportError as e:
  torchvision = None
  _TORCHVISION_MISSING = f"torchvision not installed: {e}"

_BGR_MEAN = np.array([0.406, 0.456, 0.485])
_BGR_STD = np.array([0.225, 0.224, 0.229])
_SIZES = ((65, 47), (64, 96))
_SMALL_BLOCKS = (2, 2, 2, 2)  # depth 26 in our config.
# Measured differences, printed at the end: {case: {tensor: (relative, absolute)}}.
MEASURED = {}


def _pixels(height, width, seed):
  return np.random.default_rng(seed).uniform(0.0, 255.0, size=[height, width, 3]).astype(np.float32)


def _official_input(rgb):
  """The official preprocessing: BGR, /255, (x - mean) / std, NCHW."""
  bgr = rgb[..., ::-1].astype(np.float64) / 255.0
  normalised = (bgr - _BGR_MEAN) / _BGR_STD
  return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)[None], np.float32))


def _nchw_to_nhwc(x):
  return x.detach().numpy().transpose(0, 2, 3, 1)


def _save(obj, path):
  torch.save(obj, path)
  return path


# --------------------------------------------------------------------------- tests


class TorchFreeTest(tf.test.TestCase):
  """What works without torch: structure inference, .npz round trips, errors."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    keras.utils.set_random_seed(3)
    cls.config = config_lib.ModelConfig(
      backbone_depth=26,
      backbone_width_multiplier=0.25,
      local_dim=64,
      embedding_dim=32,
      use_multi_atrous=True,
      atrous_dilations=(1, 2),
      gem_p=2.5,
      **official_structure.OFFICIAL_INPUT,
    )
    cls.model = builder.build_model(cls.config, image_size=64)
    for variable in cls.model.variables:  # non-trivial BatchNorm statistics
      if "moving_variance" in variable.name:
        variable.assign(np.random.uniform(0.5, 2.0, variable.shape))
      elif "moving_mean" in variable.name or "beta" in variable.name:
        variable.assign(np.random.normal(0.0, 0.2, variable.shape))
    cls.state = official_dolg.official_state_dict(cls.model)

  def test_official_input_reproduces_bgr_preprocessing(self):
    rgb = _pixels(5, 4, 0)
    normalise = builder.build_model(self.config).input_normalization
    expected = ((rgb[..., ::-1] / 255.0 - _BGR_MEAN) / _BGR_STD)[None]
    self.assertAllClose(normalise(rgb[None]), expected, atol=1e-5)

  def test_npz_round_trip_with_module_prefix(self):
    path = os.path.join(self.create_tempdir(), "dolg.npz")
    np.savez(path, **{f"module.{k}": v for k, v in self.state.items()}, **{"desc_cls.t": [0.1]})
    converted = official_dolg.load_official_checkpoint(path, atrous_dilations=(1, 2))
    self.assertEqual(converted.config.backbone_depth, 26)
    self.assertEqual(converted.config.backbone_width_multiplier, 0.25)
    self.assertTrue(converted.config.use_multi_atrous)
    self.assertTrue(converted.config.gem_p_trainable)
    self.assertEqual((converted.config.local_dim, converted.config.embedding_dim), (64, 32))
    self.assertEqual(converted.config.input_channel_order, "BGR")
    self.assertEqual(converted.report.unused, ["desc_cls.t"])
    self.assertEqual(converted.report.loaded, len(self.state))
    images = tf.constant(_pixels(70, 50, 1)[None])
    self.assertAllClose(converted.model(images), self.model(images), atol=1e-6)
    for key, value in official_dolg.official_state_dict(converted.model).items():
      self.assertAllEqual(value, self.state[key], msg=key)

  def test_depth_inference(self):
    for blocks, depth in ((2, 26), (6, 50), (23, 101), (36, 152)):
      state = {f"globalmodel.s3.b{i + 1}.f.a.weight": np.zeros(1) for i in range(blocks)}
      state.update(
        {
          "globalmodel.stem.conv.weight": np.zeros([64, 3, 7, 7]),
          "fc_t.weight": np.zeros([1024, 2048]),
          "fc.weight": np.zeros([512, 2048]),
        }
      )
      config = official_structure.infer_model_config(state)
      self.assertEqual(config.backbone_depth, depth)
      self.assertFalse(config.use_multi_atrous)
      self.assertFalse(config.gem_p_trainable)
      self.assertEqual(config.gem_p, 3.0)
    state["globalmodel.s3.b40.f.a.weight"] = np.zeros(1)
    with self.assertRaisesRegex(ValueError, r"<state dict>: cannot infer the ResNet depth: 40"):
      official_structure.infer_model_config(state)

  def test_mismatches_name_the_first_key(self):
    missing = dict(self.state)
    del missing["globalmodel.s2.b1.f.b_bn.running_var"]
    with self.assertRaisesRegex(
      ValueError, r"^<state dict>: missing key 'globalmodel.s2.b1.f.b_bn.running_var'"
    ):
      official_dolg.load_official_checkpoint(missing, atrous_dilations=(1, 2))
    wrong = dict(self.state)
    wrong["localmodel.conv2.weight"] = np.zeros([1, 64, 3, 3], np.float32)
    with self.assertRaisesRegex(
      ValueError,
      r"shape mismatch for 'localmodel.conv2.weight': expected \(1, 64, 1, 1\), "
      r"found \(1, 64, 3, 3\)",
    ):
      official_dolg.load_official_checkpoint(wrong, atrous_dilations=(1, 2))
    extra = dict(self.state)
    extra["globalmodel.s4.b3.f.a.weight"] = np.zeros([128, 512, 1, 1], np.float32)
    with self.assertRaisesRegex(ValueError, r"unexpected key 'globalmodel.s4.b3.f.a.weight'"):
      official_dolg.load_official_checkpoint(extra, atrous_dilations=(1, 2))
    with self.assertRaisesRegex(ValueError, r"2 dilated conv\(s\).*3 dilation\(s\)"):
      official_dolg.load_official_checkpoint(self.state)  # official 6/12/18 by default
    with self.assertRaisesRegex(ValueError, r"not a state dict"):
      official_dolg.load_official_checkpoint({"model_state": {"x": "text"}})

  def test_wrong_keys_are_named_without_a_depth(self):
    torchvision_like = {
      "conv1.weight": np.zeros([64, 3, 7, 7]),
      "layer1.0.conv1.weight": np.zeros(1),
    }
    with self.assertRaisesRegex(
      ValueError,
      "^"
      + re.escape(
        "<state dict>: missing key 'globalmodel.stem.conv.weight', unexpected key 'conv1.weight' "
        "(2 of 2 keys unknown): not an official DOLG state dict (cannot infer the ResNet depth)"
      )
      + "$",
    ):
      official_dolg.load_official_checkpoint(torchvision_like)
    no_stage3 = {k: v for k, v in self.state.items() if not k.startswith("globalmodel.s3.")}
    with self.assertRaisesRegex(ValueError, r"missing key 'globalmodel.s3.b1.f.a.weight'"):
      official_dolg.load_official_checkpoint(no_stage3, atrous_dilations=(1, 2))
    five = {f"globalmodel.s3.b{i}.f.a.weight": np.zeros(1) for i in (1, 2, 3, 5)}
    with self.assertRaisesRegex(
      ValueError,
      r"cannot infer the ResNet depth: 5 blocks .*: missing key 'globalmodel.s3.b4.f.a.weight' "
      r"\(R50 has 6\)$",
    ):
      official_structure.infer_model_config(five)
    forty = {f"globalmodel.s3.b{i + 1}.f.a.weight": np.zeros(1) for i in range(40)}
    with self.assertRaisesRegex(
      ValueError, r": unexpected key 'globalmodel.s3.b37.f.a.weight' \(R152 has 36\)$"
    ):
      official_structure.infer_model_config(forty)

  def _convert(self, *args):
    return testutil.run_module(
      "dolg_tf.convert.convert_official_dolg", *args, cwd=self.create_tempdir().full_path
    )

  def _assert_one_line_error(self, result, message):
    self.assertEqual(result.returncode, 2, result.stderr[-2000:])
    self.assertNotIn("Traceback", result.stderr)
    self.assertEqual(
      result.stderr.strip().splitlines()[-1:], [f"convert_official_dolg: error: {message}"]
    )

  def test_command_line_errors_are_one_line_and_exit_2(self):
    folder = self.create_tempdir().full_path
    wrong = os.path.join(folder, "wrong.npz")
    np.savez(wrong, **{"conv1.weight": np.zeros([8, 3, 7, 7], np.float32)})
    missing = os.path.join(folder, "missing.pyth")
    self._assert_one_line_error(
      self._convert(f"--checkpoint={wrong}", f"--output_dir={folder}/out"),
      f"{wrong}: missing key 'globalmodel.stem.conv.weight', unexpected key 'conv1.weight' "
      "(1 of 1 keys unknown): not an official DOLG state dict (cannot infer the ResNet depth)",
    )
    self.assertFalse(os.path.exists(f"{folder}/out"))
    self._assert_one_line_error(
      self._convert(f"--checkpoint={missing}", f"--output_dir={folder}/out"),
      f"--checkpoint: {missing}: no such file",
    )

  def test_unreadable_files_are_named(self):
    path = os.path.join(self.create_tempdir(), "broken.npz")
    with open(path, "wb") as f:
      f.write(b"not a zip file")
    with self.assertRaisesRegex(ValueError, r"broken.npz: not a readable .npz"):
      torch_state.read_state_dict(path)
    path = os.path.join(self.create_tempdir(), "garbage.pyth")
    with open(path, "wb") as f:
      f.write(b"definitely not a checkpoint " * 10)
    with self.assertRaisesRegex(ValueError, r"garbage.pyth: not a PyTorch checkpoint"):
      official_dolg.load_official_checkpoint(path)
    with self.assertRaisesRegex(FileNotFoundError, r"nowhere.pyth"):
      torch_state.read_state_dict(os.path.join(self.get_temp_dir(), "nowhere.pyth"))

  def test_pbtxt_is_a_valid_official_config(self):
    text = official_dolg.official_dolg_pbtxt("/models/dolg/export/1")
    config = config_io.parse_dolg_config(text)
    self.assertEqual(config.model_path, "/models/dolg/export/1")
    self.assertAllClose(list(config.image_scales), [0.3535, 0.5, 0.7071, 1.0, 1.4142])
    self.assertEqual(config.max_image_size, -1)
    self.assertEqual(config.query_box_rounding, config.TRUNCATE)
    self.assertEqual(config.global_config.scale_pooling, config.global_config.AVERAGE)
    delf_style = config_io.parse_dolg_config(
      official_dolg.official_dolg_pbtxt(
        "/m", official_dolg.DELF_STYLE_MAX_IMAGE_SIZE, savedmodel_contract.PYRAMID_PRESETS["delf_3"]
      )
    )
    self.assertEqual(delf_style.max_image_size, 1024)
    self.assertLen(delf_style.image_scales, 3)

  def test_torchvision_npz_round_trip(self):
    backbone = backbones.ResNetBackbone(26, "pycls", width_multiplier=0.25)
    backbone(tf.zeros([1, 32, 32, 3]))
    for variable in backbone.variables:
      if "moving" in variable.name:
        variable.assign(np.random.uniform(0.5, 1.5, variable.shape))
    state = torchvision_resnet.torchvision_state_dict(backbone)
    self.assertIn("layer3.0.downsample.0.weight", state)
    self.assertEqual(state["conv1.weight"].shape, (16, 3, 7, 7))
    path = os.path.join(self.create_tempdir(), "resnet.npz")
    np.savez(path, **state, **{"fc.weight": np.zeros([10, 512]), "fc.bias": np.zeros([10])})
    fresh = backbones.ResNetBackbone(26, "pycls", width_multiplier=0.25)
    report = torchvision_resnet.load_torchvision_resnet(fresh, path)
    self.assertEqual(report.unused, ["fc.bias", "fc.weight"])
    self.assertEqual(report.loaded, len(state))
    exported = torchvision_resnet.torchvision_state_dict(fresh)
    self.assertEqual(sorted(exported), sorted(state))
    for key in state:
      self.assertAllEqual(exported[key], state[key], msg=key)
    images = tf.random.normal([1, 40, 56, 3], seed=2)
    for a, b in zip(fresh(images, training=False), backbone(images, training=False)):
      self.assertAllClose(a, b, atol=1e-6)
    del state["layer2.1.bn2.running_mean"]
    with self.assertRaisesRegex(ValueError, r"missing key 'layer2.1.bn2.running_mean'"):
      torchvision_resnet.load_torchvision_resnet(fresh, state)
    with self.assertRaisesRegex(ValueError, r"backbone_layout='pycls'"):
      torchvision_resnet.load_torchvision_resnet(backbones.ResNetBackbone(26, "keras"), state)


@absltest.skipUnless(torch is not None, _TORCH_MISSING or "torch not installed")
class OfficialParityTest(tf.test.TestCase):
  """Converted checkpoints against the PyTorch reference."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    torch.set_num_threads(2)
    cls.tmp = tf.compat.v1.test.get_temp_dir()

  @classmethod
  def tearDownClass(cls):
    for case, values in sorted(MEASURED.items()):
      line = ", ".join(f"{k} rel {r:.1e} abs {a:.1e}" for k, (r, a) in values.items())
      print(f"[official_dolg parity] {case}: {line}")
    super().tearDownClass()

  def _convert(self, torch_model, name, **kwargs):
    path = _save({"model_state": torch_model.state_dict(), "epoch": 3}, f"{self.tmp}/{name}.pyth")
    return official_dolg.load_official_checkpoint(path, **kwargs)

  def _assert_parity(self, case, torch_model, tf_model, sizes):
    measured = MEASURED.setdefault(case, {})
    for index, (height, width) in enumerate(sizes):
      rgb = _pixels(height, width, seed=10 + index)
      with torch.no_grad():
        expected = torch_model(_official_input(rgb))
      got = tf_model(tf.constant(rgb[None]), training=False, return_intermediates=True)
      for key in ("f3", "f4", "f_g", "f_l", "descriptor"):
        want = expected[key]
        want = _nchw_to_nhwc(want) if want.ndim == 4 else want.numpy()
        self.assertEqual(got[key].shape, want.shape, msg=f"{case} {key} {height}x{width}")
        absolute = float(np.max(np.abs(got[key].numpy() - want)))
        relative = absolute / float(np.max(np.abs(want)))
        old = measured.get(key, (0.0, 0.0))
        measured[key] = (max(old[0], relative), max(old[1], absolute))
        self.assertLessEqual(relative, 1e-4, msg=f"{case} {key} {height}x{width}")
        if key == "descriptor":
          self.assertLessEqual(absolute, 1e-5, msg=f"{case} {height}x{width}")

  def test_r50_learnable_p(self):
    torch_model = torch_dolg_reference.torch_dolg((3, 4, 6, 3), seed=1)
    converted = self._convert(torch_model, "r50")
    config = converted.config
    self.assertEqual(config.backbone_depth, 50)
    self.assertFalse(config.use_multi_atrous)
    self.assertTrue(config.gem_p_trainable)
    self.assertAllClose(converted.model.pool_g.p, 2.7)
    self.assertEqual(converted.report.unused, [])
    self.assertGreater(converted.report.ignored, 0)  # num_batches_tracked
    self._assert_parity("R50 learnable p", torch_model, converted.model, _SIZES)

  def test_multi_atrous(self):
    torch_model = torch_dolg_reference.torch_dolg(_SMALL_BLOCKS, dilations=(6, 12, 18), seed=2)
    converted = self._convert(torch_model, "aspp")
    self.assertEqual(converted.config.backbone_depth, 26)
    self.assertTrue(converted.config.use_multi_atrous)
    self.assertEqual(converted.config.atrous_dilations, (6, 12, 18))
    # Odd 65x47 and even 208x304: the latter gives a 13x19 stage-3 map, so the
    # dilated taps see real data (on tiny maps they all fall in the padding).
    self._assert_parity("R26 multi-atrous", torch_model, converted.model, ((65, 47), (208, 304)))

  def test_fixed_p_pipeline_export_and_head(self):
    torch_model = torch_dolg_reference.torch_dolg(
      _SMALL_BLOCKS, learnable_p=False, num_classes=7, seed=3
    )
    checkpoint = _save({"model_state": torch_model.state_dict()}, f"{self.tmp}/fixed.pyth")
    output_dir = os.path.join(self.create_tempdir(), "converted")
    paths = official_dolg.convert_official_checkpoint(
      checkpoint,
      output_dir,
      import_head=True,
      max_image_size=512,
    )
    config = config_lib.load_model_config(paths["model_config"])
    self.assertFalse(config.gem_p_trainable)
    self.assertEqual(config.gem_p, 3.0)
    self.assertEqual(config.head_type, "curricularface")
    self.assertEqual(paths["export"], os.path.join(output_dir, "export", "1"))
    extraction = config_io.load_dolg_config(paths["pbtxt"])
    self.assertEqual(config_io.resolve_model_path(extraction), paths["export"])
    self.assertFalse([d for d in os.listdir(os.path.dirname(output_dir)) if ".tmp" in d])

    # The TF checkpoint restores into a fresh model (and head) with the same outputs.
    model = builder.build_model(config, image_size=32)
    head = builder.build_head(config, 7)
    head(tf.zeros([1, 512]))
    tf.train.Checkpoint(model=model, head=head).restore(paths["checkpoint"]).assert_consumed()
    weight = torch_model.desc_cls.weight.detach().numpy()
    self.assertAllEqual(head.kernel, weight.T)
    self.assertAllClose(head.t, 0.3)
    self._assert_parity("R26 fixed p", torch_model, model, _SIZES)

    # serving_default of the export = the official multi-scale pooling in torch.
    image = np.random.default_rng(5).integers(0, 256, size=[70, 53, 3], dtype=np.uint8)
    scales = (0.7071, 1.0)
    serve = tf.saved_model.load(paths["export"]).signatures["serving_default"]
    got = serve(
      input_image=tf.constant(image),
      input_scales=tf.constant(scales, tf.float32),
      input_global_scales_ind=tf.constant([0, 1], tf.int32),
    )["global_descriptor"].numpy()
    pooled = 0.0
    for s in scales:
      size = [max(1, round(image.shape[0] * s)), max(1, round(image.shape[1] * s))]
      resized = tf.image.resize(tf.cast(image, tf.float32)[None], size, method="bilinear")
      with torch.no_grad():
        pooled = pooled + torch_model(_official_input(resized.numpy()[0]))["descriptor"]
    want = F.normalize(pooled / len(scales), p=2, dim=1)[0].numpy()
    difference = float(np.max(np.abs(got - want)))
    MEASURED["R26 fixed p SavedModel 2-scale"] = {"global_descriptor": (difference, difference)}
    self.assertLessEqual(difference, 1e-5)

  def test_bad_checkpoints_give_one_line_errors(self):
    torch_model = torch_dolg_reference.torch_dolg(_SMALL_BLOCKS, seed=4)
    state = torch_model.state_dict()
    # (Missing keys deeper in the network and wrong shapes: see TorchFreeTest.)
    missing = {k: v for k, v in state.items() if k != "fc_t.weight"}
    path = _save({"model_state": missing}, f"{self.tmp}/missing.pyth")
    with self.assertRaisesRegex(ValueError, r"^\S*missing.pyth: missing key 'fc_t.weight'$"):
      official_dolg.load_official_checkpoint(path)
    wrong = dict(state, **{"fc.weight": torch.zeros(512, 1000)})
    path = _save(wrong, f"{self.tmp}/wrong.pyth")  # a bare state dict
    with self.assertRaisesRegex(
      ValueError, r"wrong.pyth: shape mismatch for 'fc.weight': expected \(512, 2048\), found "
    ):
      official_dolg.load_official_checkpoint(path)
    path = _save({"model_state": state}, f"{self.tmp}/truncated.pyth")
    with open(path, "rb") as f:
      data = f.read()
    with open(path, "wb") as f:
      f.write(data[: len(data) // 2])
    with self.assertRaisesRegex(ValueError, r"truncated.pyth: not a readable PyTorch checkpoint"):
      official_dolg.load_official_checkpoint(path)
    path = _save({"model_state": [1, 2, 3]}, f"{self.tmp}/list.pyth")
    with self.assertRaisesRegex(ValueError, r"list.pyth: not a state dict"):
      official_dolg.load_official_checkpoint(path)
    # DataParallel's `module.` prefix is stripped (the head's keys stay unused: TorchFreeTest).
    prefixed = {f"module.{k}": v for k, v in state.items()}
    loaded = torch_state.read_state_dict(_save(prefixed, f"{self.tmp}/dp.pyth"))
    self.assertEqual(sorted(loaded), sorted(state))
    self.assertAllEqual(loaded["fc.weight"], state["fc.weight"].numpy())

  def test_torchvision_names_load_the_pycls_backbone(self):
    torch_model = torch_dolg_reference.torch_dolg(_SMALL_BLOCKS, seed=6).globalmodel
    renames = {
      "f.a.": "conv1.",
      "f.a_bn.": "bn1.",
      "f.b.": "conv2.",
      "f.b_bn.": "bn2.",
      "f.c.": "conv3.",
      "f.c_bn.": "bn3.",
      "proj.": "downsample.0.",
      "bn.": "downsample.1.",
    }
    state = {}
    for key, value in torch_model.state_dict().items():
      if key.startswith("stem."):
        key = key.replace("stem.conv.", "conv1.").replace("stem.bn.", "bn1.")
      else:
        stage, block, rest = key.split(".", 2)
        rest = next(new + rest[len(old) :] for old, new in renames.items() if rest.startswith(old))
        key = f"layer{stage[1:]}.{int(block[1:]) - 1}.{rest}"
      state[key] = value
    backbone = backbones.ResNetBackbone(26, "pycls")
    report = torchvision_resnet.load_torchvision_resnet(backbone, state)
    self.assertEqual(report.unused, [])
    x = np.random.default_rng(7).normal(size=[1, 3, 61, 80]).astype(np.float32)
    with torch.no_grad():
      want = torch_model(torch.from_numpy(x))
    got = backbone(tf.constant(x.transpose(0, 2, 3, 1)), training=False)
    for g, w in zip(got, want):
      w = _nchw_to_nhwc(w)
      self.assertLessEqual(np.max(np.abs(g.numpy() - w)) / np.max(np.abs(w)), 1e-4)

  @absltest.skipUnless(
    torch is not None and torchvision is not None,
    _TORCHVISION_MISSING or _TORCH_MISSING or "torchvision not installed",
  )
  def test_torchvision_resnet50(self):
    reference = torchvision.models.resnet50(weights=None).eval()
    with torch.no_grad():
      for module in reference.modules():
        if isinstance(module, nn.BatchNorm2d):
          module.running_mean.normal_(0.0, 0.2)
          module.running_var.uniform_(0.5, 2.0)
    path = _save(reference.state_dict(), f"{self.tmp}/resnet50.pth")
    backbone = backbones.ResNetBackbone(50, "pycls")
    report = torchvision_resnet.load_torchvision_resnet(backbone, path)
    self.assertEqual(report.unused, ["fc.bias", "fc.weight"])
    x = np.random.default_rng(8).normal(size=[1, 3, 65, 47]).astype(np.float32)
    with torch.no_grad():
      t = torch.from_numpy(x)
      for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"):
        t = getattr(reference, name)(t)
      want3, want4 = t, reference.layer4(t)
    got3, got4 = backbone(tf.constant(x.transpose(0, 2, 3, 1)), training=False)
    for g, w in ((got3, want3), (got4, want4)):
      w = _nchw_to_nhwc(w)
      self.assertLessEqual(np.max(np.abs(g.numpy() - w)) / np.max(np.abs(w)), 1e-4)


def _official_test_time_descriptor(torch_model, path, scales, box=None):
  """The official evaluation (evaler/infer.py + process.py), written here independently.

  cv2 BGR read, float32, query box truncated to int, then per scale a bilinear
  cv2.resize to int(round(s * H)) x int(round(s * W)) (Python floats), /255,
  (x - mean) / std per BGR channel, the network, per-scale L2, mean, L2.
  """
  image = cv2.imread(path).astype(np.float32)
  if box is not None:
    x1, y1, x2, y2 = map(int, box)
    image = image[y1:y2, x1:x2]
  height, width = image.shape[:2]
  total = 0.0
  for s in scales:
    resized = cv2.resize(
      image, (int(round(width * s)), int(round(height * s))), interpolation=cv2.INTER_LINEAR
    )
    normalised = (resized / 255.0 - _BGR_MEAN.astype(np.float32)) / _BGR_STD.astype(np.float32)
    batch = torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)[None], np.float32))
    with torch.no_grad():
      total = total + F.normalize(torch_model(batch)["descriptor"], p=2, dim=1)
  mean = (total / len(scales))[0].numpy().astype(np.float64)
  return mean / np.linalg.norm(mean)


@absltest.skipUnless(torch is not None, _TORCH_MISSING)
class OfficialPipelineTest(tf.test.TestCase):
  """Image file -> descriptor: the converted model's extraction equals the official test time."""

  def test_converted_extraction_equals_the_official_evaluation(self):
    torch_model = torch_dolg_reference.torch_dolg(_SMALL_BLOCKS, seed=11)
    tmp = self.create_tempdir().full_path
    checkpoint = _save({"model_state": torch_model.state_dict()}, f"{tmp}/official.pyth")
    paths = official_dolg.convert_official_checkpoint(checkpoint, os.path.join(tmp, "out"))
    extraction = config_io.load_dolg_config(paths["pbtxt"])
    self.assertEqual(
      list(extraction.image_scales),
      list(np.float32(savedmodel_contract.PYRAMID_PRESETS["official_5"])),
    )
    self.assertEqual(extraction.max_image_size, -1)
    self.assertEqual(extraction.query_box_rounding, config_io.DolgConfig.TRUNCATE)
    extractor = extractor_lib.Extractor(extraction, config_path=paths["pbtxt"])
    rng = np.random.default_rng(12)
    # Odd sizes; 2331 px is over 1024 and a side where float32 and Python rounding
    # of 1.4142 * 2331 (3296.5 +- ulp) disagree: only the official rounding passes.
    cases = (
      ("odd", 97, 131, None),
      ("tall", 2331, 45, None),
      ("query", 301, 257, (20.7, 33.9, 190.2, 251.6)),
    )
    for name, height, width, box in cases:
      # JPEG too: Pillow and OpenCV decode it to the same pixels here.
      path = os.path.join(tmp, f"{name}.{'jpg' if name == 'odd' else 'png'}")
      smooth = cv2.GaussianBlur(rng.uniform(0, 255, size=[height, width, 3]), (0, 0), 2.0)
      cv2.imwrite(path, np.clip(smooth, 0, 255).astype(np.uint8))
      got = extractor.extract_from_file(path, box)
      want = _official_test_time_descriptor(
        torch_model, path, savedmodel_contract.PYRAMID_PRESETS["official_5"], box
      )
      difference = float(np.max(np.abs(got - want)))
      print(f"[official pipeline] {name} {height}x{width}: descriptor max abs {difference:.1e}")
      self.assertLessEqual(difference, 1e-5, msg=name)
    # The same image with the DELF rule (rounded box) is a different crop.
    rounded = image_loading.crop_box(np.zeros([301, 257, 3]), cases[2][3])
    self.assertEqual(rounded.shape[:2], (252 - 34, 190 - 21))

  def test_float32_size_rounding_would_differ(self):
    # Why the export rounds s * H in float64: at 2331 px the float32 product rounds down.
    self.assertEqual(round(2331 * 1.4142), 3297)
    self.assertEqual(int(np.round(np.float32(2331) * np.float32(1.4142))), 3296)


if __name__ == "__main__":
  tf.test.main()
