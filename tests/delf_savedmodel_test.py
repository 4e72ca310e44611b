"""DELF's released DELG models work unchanged: a DELF-exported SavedModel and a DELF checkpoint.

One DELF-structured DELG (tests/delf_reference.py: DELF's attribute names and
structure, R50 at 1/8 width, random weights) is

  (a) exported the way DELF's export_local_and_global_model.py does (a
      tf.Module with one tf.function named by DELF's inputs and outputs,
      `tf.saved_model.save(module, path)` with no explicit signatures), then
      extracted by this project's extract_features with DELF's own command line
      and a DelfConfig .pbtxt;
  (b) saved as DELF's train.py saves it, converted (dolg-convert-delf), exported
      by this project and extracted with the equivalent DolgConfig.

Both sets of files are compared with DELF's extractor computed here from the
DELF SavedModel's raw outputs (DELF's extractor.py post-processing: keypoint
centres divided by the resize factors, L2 local descriptors, global = L2 of
the sum of the per-scale L2-normalised descriptors).
"""

import os

import numpy as np
import scipy.io
import tensorflow as tf
from PIL import Image

from dolg_tf.convert import delf_checkpoint
from dolg_tf.io import datum_io, feature_io
from tests import delf_reference, testutil

_SMALL = dict(
  depth=50, width_multiplier=0.125, embedding_dim=32, reduced_dim=8, attention_hidden=16
)
_SCALES = (0.5, 0.70710677, 1.0, 1.4142135)
_GLOBAL_SCALES_IND = (1, 2, 3)
_MAX_FEATURES = 40
_MAX_IMAGE_SIZE = 160


class _DelfStyleExport(tf.Module):
  """DELF's DELG export module (export_local_and_global_model.py), from its published behaviour."""

  def __init__(self, model):
    super().__init__()
    self._model = model
    # DELF hard-codes the R50 receptive field; block3_strides doubles the stride.
    self._rf, self._stride, self._padding = 291.0, 32.0, 145.0

  @tf.function(
    input_signature=[
      tf.TensorSpec([None, None, 3], tf.uint8, name="input_image"),
      tf.TensorSpec([None], tf.float32, name="input_scales"),
      tf.TensorSpec((), tf.int32, name="input_max_feature_num"),
      tf.TensorSpec((), tf.float32, name="input_abs_thres"),
      tf.TensorSpec([None], tf.int32, name="input_global_scales_ind"),
    ]
  )
  def ExtractFeatures(  # noqa: N802 (DELF's name)
    self, input_image, input_scales, input_max_feature_num, input_abs_thres, input_global_scales_ind
  ):
    size = tf.cast(tf.shape(input_image)[:2], tf.float32)
    image = ((tf.cast(input_image, tf.float32) - 128.0) / 128.0)[None]
    boxes = tf.zeros([0, 4])
    features = tf.zeros([0, _SMALL["reduced_dim"]])
    scales = tf.zeros([0])
    scores = tf.zeros([0])
    global_descriptors = tf.zeros([0, _SMALL["embedding_dim"]])
    for index in tf.range(tf.size(input_scales)):
      tf.autograph.experimental.set_loop_options(
        shape_invariants=[
          (boxes, tf.TensorShape([None, 4])),
          (features, tf.TensorShape([None, _SMALL["reduced_dim"]])),
          (scales, tf.TensorShape([None])),
          (scores, tf.TensorShape([None])),
          (global_descriptors, tf.TensorShape([None, _SMALL["embedding_dim"]])),
        ]
      )
      scale = input_scales[index]
      resized = tf.image.resize(image, tf.cast(tf.round(size * scale), tf.int32))
      out = self._model.forward(resized, training=False)
      attention = tf.reshape(out["attention"][0], [-1])
      feature_map = out["reduced_features"][0]
      height, width = tf.shape(feature_map)[0], tf.shape(feature_map)[1]
      x, y = tf.meshgrid(tf.range(width), tf.range(height))
      points = tf.cast(tf.reshape(tf.stack([y, x], axis=2), [-1, 2]), tf.float32)
      rf_boxes = self._stride * tf.concat([points, points], 1) + [
        -self._padding,
        -self._padding,
        -self._padding + self._rf - 1,
        -self._padding + self._rf - 1,
      ]
      keep = tf.reshape(tf.where(attention >= input_abs_thres), [-1])
      boxes = tf.concat([boxes, tf.gather(rf_boxes / scale, keep)], 0)
      features = tf.concat(
        [features, tf.gather(tf.reshape(feature_map, [-1, _SMALL["reduced_dim"]]), keep)], 0
      )
      selected = tf.gather(attention, keep)
      scores = tf.concat([scores, selected], 0)
      scales = tf.concat([scales, tf.ones_like(selected) / scale], 0)
      if tf.reduce_any(tf.equal(input_global_scales_ind, index)):
        global_descriptors = tf.concat([global_descriptors, out["global_embedding"]], 0)
    # DELF's non_max_suppression at IoU 1.0: the strongest boxes, none suppressed.
    count = tf.minimum(input_max_feature_num, tf.shape(boxes)[0])
    order = tf.image.non_max_suppression(boxes, scores, count, iou_threshold=1.0)
    return {
      "boxes": tf.identity(tf.gather(boxes, order), name="boxes"),
      "features": tf.identity(tf.gather(features, order), name="features"),
      "scales": tf.identity(tf.gather(scales, order), name="scales"),
      "scores": tf.identity(tf.gather(scores, order)[:, None], name="scores"),
      "global_descriptors": tf.identity(global_descriptors, name="global_descriptors"),
    }


def _delf_resize(image, max_image_size):
  """DELF's utils.ResizeImage (max size only): PIL bilinear to round(s * W) x round(s * H)."""
  height, width = image.shape[:2]
  if max(height, width) <= max_image_size:
    return image, np.ones(2)
  scale = max_image_size / max(height, width)
  new_size = (int(round(width * scale)), int(round(height * scale)))
  resized = np.array(Image.fromarray(image).resize(new_size, resample=Image.BILINEAR))
  return resized, np.array([new_size[1] / height, new_size[0] / width])


def _delf_extractor(serve, image, resize_factor=1.0):
  """DELF's extractor.py ExtractorFn on a TF2-exported DELG, written from its behaviour."""
  resized, factors = _delf_resize(image, _MAX_IMAGE_SIZE * resize_factor)
  out = serve(
    input_image=tf.constant(resized),
    input_scales=tf.constant(_SCALES, tf.float32),
    input_max_feature_num=tf.constant(_MAX_FEATURES),
    input_abs_thres=tf.constant(0.0),
    input_global_scales_ind=tf.constant(_GLOBAL_SCALES_IND),
  )
  out = {k: v.numpy().astype(np.float64) for k, v in out.items()}
  per_scale = out["global_descriptors"]
  per_scale /= np.linalg.norm(per_scale, axis=1, keepdims=True)
  summed = per_scale.sum(axis=0)
  boxes = out["boxes"]
  features = out["features"] / np.linalg.norm(out["features"], axis=1, keepdims=True)
  return dict(
    global_descriptor=summed / np.linalg.norm(summed),
    locations=0.5 * (boxes[:, :2] + boxes[:, 2:]) / factors,
    descriptors=features,
    scales=out["scales"],
    attention=out["scores"].reshape([-1]),
  )


def _relative(ours, reference):
  return float(np.max(np.abs(ours - reference)) / max(np.max(np.abs(reference)), 1e-12))


class DelfReleasedModelsTest(tf.test.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tf.compat.v1.test.get_temp_dir()
    cls.model = delf_reference.randomize(delf_reference.DelfDelg(**_SMALL), seed=21)
    cls.delf_export = os.path.join(cls.tmp, "delf_export")
    tf.saved_model.save(_DelfStyleExport(cls.model), cls.delf_export)
    cls.serve = tf.saved_model.load(cls.delf_export).signatures["serving_default"]
    # A tiny Revisited-Oxford-style dataset: 2 queries (with boxes), 2 index images.
    cls.images_dir = os.path.join(cls.tmp, "jpg")
    os.makedirs(cls.images_dir)
    rng = np.random.default_rng(22)
    sizes = {"q1": (131, 97), "q2": (203, 177), "i1": (97, 131), "i2": (240, 180)}
    cls.images = {}
    for name, (height, width) in sizes.items():
      image = rng.integers(0, 256, [height, width, 3], dtype=np.uint8)
      Image.fromarray(image).save(os.path.join(cls.images_dir, name + ".jpg"), quality=95)
      cls.images[name] = np.array(Image.open(os.path.join(cls.images_dir, name + ".jpg")))
    cls.boxes = {"q1": (10.4, 12.6, 90.2, 120.0), "q2": (0.0, 5.5, 160.7, 199.2)}
    # The MATLAB layout of gnd_roxford5k.mat: cell arrays of names, a 1 x nq struct, 1-based.
    fields = ("easy", "hard", "junk", "bbx")
    gnd = np.zeros((1, 2), dtype=[(f, object) for f in fields])
    for i, name in enumerate(("q1", "q2")):
      gnd[0, i]["easy"] = np.array([[1.0]])
      gnd[0, i]["hard"] = np.array([[2.0]])
      gnd[0, i]["junk"] = np.zeros((0, 0))
      gnd[0, i]["bbx"] = np.array(cls.boxes[name], np.float64).reshape(1, 4)
    cls.gnd_path = os.path.join(cls.tmp, "gnd_test.mat")
    scipy.io.savemat(
      cls.gnd_path,
      {
        "imlist": np.array(["i1", "i2"], dtype=object).reshape(-1, 1),
        "qimlist": np.array(["q1", "q2"], dtype=object).reshape(1, -1),
        "gnd": gnd,
      },
    )

  def _config(self, name, model_path, delf):
    scales = "\n".join(f"image_scales: {s}" for s in _SCALES)
    indices = "\n".join(f"  image_scales_ind: {i}" for i in _GLOBAL_SCALES_IND)
    if delf:  # DELF's r50delg_gldv2clean_config.pbtxt, with this test's sizes.
      text = f"""use_local_features: true
use_global_features: true
model_path: "{model_path}"
{scales}
delf_local_config {{
  use_pca: false
  max_feature_num: {_MAX_FEATURES}
  score_threshold: 0.0
}}
delf_global_config {{
  use_pca: false
{indices}
}}
max_image_size: {_MAX_IMAGE_SIZE}
is_tf2_exported: true
"""
    else:
      text = f"""model_path: "{model_path}"
{scales}
max_image_size: {_MAX_IMAGE_SIZE}
use_global_features: true
use_local_features: true
global_config {{
{indices}
}}
local_config {{ max_feature_num: {_MAX_FEATURES} }}
global_descriptor_suffix: ".delg_global"
local_descriptor_suffix: ".delg_local"
"""
    path = os.path.join(self.tmp, name)
    with open(path, "w") as f:
      f.write(text)
    return path

  def _extract(self, config_path, output_dir):
    for image_set in ("query", "index"):
      result = testutil.run_module(
        "dolg_tf.extraction.extract_features",
        f"--delf_config_path={config_path}",
        f"--dataset_file_path={self.gnd_path}",
        f"--images_dir={self.images_dir}",
        f"--image_set={image_set}",
        f"--output_features_dir={output_dir}",
      )
      self.assertEqual(result.returncode, 0, msg=result.stderr[-3000:])

  def _assert_delf_files(self, output_dir, what):
    worst = {}
    for name, image in self.images.items():
      resize_factor = 1.0
      if name in self.boxes:
        x1, y1, x2, y2 = (int(round(v)) for v in self.boxes[name])
        cropped = image[y1:y2, x1:x2]
        resize_factor = max(cropped.shape[:2]) / max(image.shape[:2])
        image = cropped
      want = _delf_extractor(self.serve, image, resize_factor)
      got_global = datum_io.ReadFromFile(os.path.join(output_dir, name + ".delg_global"))
      locations, scales, descriptors, attention, _ = feature_io.ReadFromFile(
        os.path.join(output_dir, name + ".delg_local")
      )
      self.assertLen(attention, len(want["attention"]))
      for key, got in (
        ("global_descriptor", got_global),
        ("locations", locations),
        ("descriptors", descriptors),
        ("scales", scales),
        ("attention", attention),
      ):
        self.assertEqual(np.shape(got), np.shape(want[key]), f"{what} {name} {key}")
        error = _relative(np.asarray(got), want[key])
        worst[key] = max(worst.get(key, 0.0), error)
        self.assertLessEqual(error, 1e-5, f"{what} {name} {key}: relative error {error:.1e}")
    print(f"[delf parity] {what}: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))

  def test_delf_savedmodel_with_delf_config_and_command_line(self):
    output_dir = os.path.join(self.tmp, "out_delf_export")
    self._extract(self._config("delf.pbtxt", self.delf_export, delf=True), output_dir)
    self._assert_delf_files(output_dir, "DELF SavedModel + DelfConfig")

  def test_converted_delf_checkpoint_gives_the_same_files(self):
    logdir = os.path.join(self.tmp, "delf_logdir")
    delf_reference.save_delf_checkpoint(self.model, logdir)
    paths = delf_checkpoint.convert_delf_checkpoint(logdir, os.path.join(self.tmp, "converted"))
    output_dir = os.path.join(self.tmp, "out_converted")
    self._extract(self._config("converted.pbtxt", paths["export"], delf=False), output_dir)
    self._assert_delf_files(output_dir, "converted checkpoint + project export")


if __name__ == "__main__":
  tf.test.main()
