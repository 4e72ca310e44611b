"""The serving graph of an export: the signatures a SavedModel serves, around a descriptor model.

A SavedModel of dolg_tf holds these signatures (all
`tensorflow/serving/predict`):

- `serving_default` (DELF-style, one image):
    inputs  `input_image` uint8 [H, W, 3], `input_scales` float32 [S],
            `input_global_scales_ind` int32 [G] (which scales are pooled)
    outputs `global_descriptors` float32 [S, D] (per-scale, L2-normalised),
            `global_descriptor` float32 [D] (the selected scales' descriptors
            averaged and L2-normalised: the official DOLG test-time pooling).
- `serve_encoded` (batch of encoded images, as a REST client sends base64):
    inputs  `images` string [B] (JPEG/PNG/GIF/BMP bytes)
    outputs `global_descriptor` float32 [B, D]
  decoding, resizing so the longest side is at most `max_image_size`, the
  pyramid over the export's `image_scales` and pooling run inside the graph.
- `serve_global_batch` (batched extraction, e.g. on an accelerator): as
  `serving_default` for `input_images` uint8 [B, H, W, 3], B images of one
  size; outputs [B, S, D] and [B, D]. Per image it computes what
  `serving_default` computes (one code path: the single-image signatures run
  it on a batch of one).

DELG exports (`model_config.name == "delg"`) use DELF's local+global
signature as `serving_default` (see DelgServingModule), keep the global-only
one as `serve_global`, and add `serve_local_batch`: the local+global outputs
of B same-size images, per-feature outputs padded to [B, K, ...] with
`num_features` [B] valid rows each.

The image at scale s is resized (bilinear, half-pixel centres, as cv2's
INTER_LINEAR and DELF's tf.image.resize) to round(s * H) x round(s * W). The
rounding follows each model's reference code: DOLG exports compute s * H as the
official evaluation does (Python floats: the float32 scale is first snapped to
its 6-decimal value, e.g. 0.3535, then multiplied in float64), DELG exports as
DELF does (float32 product), so at the rare sizes where the two products fall
on opposite sides of .5 each matches its own reference. DELG's `scales` output
holds 1 / s, DELF's convention (`savedmodel_contract.INTERFACE_VERSION` 2). Nothing of
this project is needed to load the export: only TensorFlow.
`assets.extra/config.json` records the model and export configs (dolg_tf.config),
which extraction takes its defaults from.

Everything a module serves follows from one ExportConfig (`ServingModule(model,
export_config)`): the pyramid and size limit of `serve_encoded`, the pooling of
the scales, the test-time options (SuperGlobal), frozen weights and XLA.
Writing it into a version folder is dolg_tf.export.versions.
"""

import functools

import tensorflow as tf
from tensorflow.python.framework import convert_to_constants

from dolg_tf import config as config_lib
from dolg_tf.io import export_section, savedmodel_contract
from dolg_tf.keras_api import keras
from dolg_tf.model import builder, normalization, superglobal


def frozen_forward(model, **call_kwargs):
  """`model(x, training=False, **call_kwargs)` for float32 [B, H, W, 3], weights as constants.

  With export.freeze_weights the serving graph calls this instead of the
  Keras model: with constant weights oneDNN keeps its reordered weights
  between calls, and the served DOLG-R101 forward is ~15% faster than the
  variable-based one (benchmarks/serving_breakdown_benchmark.py). The price
  is memory: TensorFlow copies the constants into every graph it builds from
  the function, so loading and first calls peak at several GB more. The
  SavedModel then holds the weights inside this function and no variables.
  """
  forward = tf.function(lambda x: model(x, training=False, **call_kwargs))
  concrete = forward.get_concrete_function(tf.TensorSpec([None, None, None, 3], tf.float32))
  frozen = convert_to_constants.convert_variables_to_constants_v2(concrete)
  structure = concrete.structured_outputs

  def call(images):
    return tf.nest.pack_sequence_as(structure, frozen(images), expand_composites=True)

  return call


class ServingModule(tf.Module):
  """Wraps a descriptor model with the serving signatures."""

  # How s * H is rounded (see the module docstring): "official" (DOLG) or "delf".
  SIZE_ROUNDING = "official"
  # What the serving graph calls the model with (besides training=False).
  MODEL_CALL_KWARGS = {}

  def __init__(self, model, export_config: export_section.ExportConfig | None = None):
    """Wraps `model`; everything it serves follows from `export_config` (default ExportConfig()).

    Args:
      model: the descriptor model (a Keras model, see `serving_model` for the twin an
        export.precision or fold_batch_norms serves).
      export_config: image_scales and max_image_size (serve_encoded), scale_pooling,
        the test-time options, freeze_weights and serve_jit_compile.
    """
    super().__init__(name="dolg_serving")
    export_config = export_config or export_section.ExportConfig()
    # The SavedModel needs the model's variables (or the frozen forward), not the
    # Keras object: tracking the model would make tf.saved_model.save trace every
    # layer's call (about 5 s per export of even a tiny model, 7x the save
    # itself, and 1.7 s more per load), for functions nothing serves.
    self.__dict__["model"] = model
    if export_config.freeze_weights:
      test_time = test_time_options(export_config)
      call_kwargs = dict(self.MODEL_CALL_KWARGS, test_time=test_time)
      self.__dict__["_forward"] = frozen_forward(model, **call_kwargs)
    else:
      self.model_variables = list(model.variables)
      # Variables, so that extraction can switch GeM+ and Regional-GeM (see Extractor).
      self.superglobal_gem_p = tf.Variable(
        float(export_config.superglobal_gem_p), trainable=False, dtype=tf.float32
      )
      self.regional_gem_weight = tf.Variable(
        float(export_config.regional_gem_weight), trainable=False, dtype=tf.float32
      )
      test_time = test_time_options(export_config, self.superglobal_gem_p, self.regional_gem_weight)
      call_kwargs = dict(self.MODEL_CALL_KWARGS, test_time=test_time)
      self.__dict__["_forward"] = functools.partial(model, training=False, **call_kwargs)
    self.scale_pooling = export_config.scale_pooling
    if export_config.serve_jit_compile:
      self.__dict__["_forward"] = tf.function(self._forward, jit_compile=True)
    self.max_image_size = int(export_config.max_image_size)
    self.image_scales = tuple(float(s) for s in export_config.image_scales)

  def signatures(self) -> dict:
    """The SavedModel's signatures: name -> concrete function."""
    return {
      savedmodel_contract.SERVING_DEFAULT: self.serve.get_concrete_function(),
      savedmodel_contract.SERVE_ENCODED: self.serve_encoded.get_concrete_function(),
      savedmodel_contract.SERVE_GLOBAL_BATCH: self.serve_batch.get_concrete_function(),
    }

  def _scaled_size(self, size, scale):
    """round(scale * size) of an int32 [H, W] size, at least 1, as the model's reference code."""
    if self.SIZE_ROUNDING == "official":
      size = tf.cast(size, tf.float64)
      scale = tf.round(tf.cast(scale, tf.float64) * 1e6) / 1e6
    else:
      size = tf.cast(size, tf.float32)
    # tf.round rounds half to even, like Python's round().
    return tf.maximum(tf.cast(tf.round(size * scale), tf.int32), 1)

  def _resize_batch(self, images, scale):
    """float32 [B, H, W, 3] images of one size resized to round(scale * [H, W])."""
    size = tf.shape(images)[1:3]
    new_size = self._scaled_size(size, scale)
    # Bilinear resizing (half-pixel centres) to the same size is the identity: skip it.
    return tf.cond(
      tf.reduce_all(tf.equal(new_size, size)),
      lambda: images,
      lambda: tf.image.resize(images, new_size, method="bilinear"),
    )

  def _describe(self, images, scales):
    """Per-scale descriptors [B, S, D] of float32 [B, H, W, 3] images of one size."""

    def one_scale(scale):
      return self._global_descriptor(self._forward(self._resize_batch(images, scale)))

    per_scale = tf.map_fn(
      one_scale,
      scales,
      fn_output_signature=tf.TensorSpec([None, None], tf.float32),
      parallel_iterations=1,
    )
    return tf.transpose(per_scale, [1, 0, 2])

  @staticmethod
  def _global_descriptor(outputs):
    """The global descriptor among the model's outputs."""
    return outputs

  def _pool(self, descriptors, scale_indices):
    """The selected scales of [..., S, D] descriptors pooled and L2-normalised: [..., D].

    export.scale_pooling "average": each scale L2-normalised, averaged (official
    DOLG); "max": their elementwise maximum (SuperGlobal's Scale-GeM, p = inf).
    """
    selected = normalization.l2_normalize(tf.gather(descriptors, scale_indices, axis=-2))
    reduce = tf.reduce_max if self.scale_pooling == "max" else tf.reduce_mean
    return normalization.l2_normalize(reduce(selected, axis=-2))

  def _global_outputs(self, images, scales, global_scales_ind):
    descriptors = self._describe(tf.cast(images, tf.float32), scales)
    return {
      savedmodel_contract.GLOBAL_DESCRIPTORS: descriptors,
      savedmodel_contract.GLOBAL_DESCRIPTOR: self._pool(descriptors, global_scales_ind),
    }

  @tf.function(
    input_signature=[
      tf.TensorSpec([None, None, 3], tf.uint8, name=savedmodel_contract.INPUT_IMAGE),
      tf.TensorSpec([None], tf.float32, name=savedmodel_contract.INPUT_SCALES),
      tf.TensorSpec([None], tf.int32, name=savedmodel_contract.INPUT_GLOBAL_SCALES_IND),
    ]
  )
  def serve(self, input_image, input_scales, input_global_scales_ind):
    outputs = self._global_outputs(input_image[None], input_scales, input_global_scales_ind)
    return {name: value[0] for name, value in outputs.items()}

  @tf.function(
    input_signature=[
      tf.TensorSpec([None, None, None, 3], tf.uint8, name=savedmodel_contract.INPUT_IMAGES),
      tf.TensorSpec([None], tf.float32, name=savedmodel_contract.INPUT_SCALES),
      tf.TensorSpec([None], tf.int32, name=savedmodel_contract.INPUT_GLOBAL_SCALES_IND),
    ]
  )
  def serve_batch(self, input_images, input_scales, input_global_scales_ind):
    return self._global_outputs(input_images, input_scales, input_global_scales_ind)

  def _resize_to_max(self, image):
    if self.max_image_size <= 0:  # -1: no limit
      return image
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    factor = tf.minimum(1.0, self.max_image_size / tf.reduce_max(size))
    new_size = tf.maximum(tf.cast(tf.round(size * factor), tf.int32), 1)
    return tf.image.resize(image, new_size, method="bilinear")

  @tf.function(
    input_signature=[
      tf.TensorSpec([None], tf.string, name=savedmodel_contract.INPUT_ENCODED_IMAGES)
    ]
  )
  def serve_encoded(self, images):
    scales = tf.constant(self.image_scales, tf.float32)
    all_scales = tf.range(tf.size(scales))

    def one_image(encoded):
      image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
      image = self._resize_to_max(tf.cast(image, tf.float32))
      image.set_shape([None, None, 3])
      return self._pool(self._describe(image[None], scales)[0], all_scales)

    return {
      savedmodel_contract.GLOBAL_DESCRIPTOR: tf.map_fn(
        one_image, images, fn_output_signature=tf.TensorSpec([None], tf.float32)
      )
    }


class DelgServingModule(ServingModule):
  """DELG export: DELF's local+global signature as `serving_default`.

  inputs  `input_image` uint8 [H, W, 3], `input_scales` float32 [S],
          `input_max_feature_num` int32 [], `input_abs_thres` float32 [],
          `input_global_scales_ind` int32 [G]
  outputs `boxes` [N, 4] (y1, x1, y2, x2 receptive boxes in input-image
          pixels), `features` [N, d] (the autoencoder's reduced features, not
          yet normalised: the extractor L2-normalises and applies PCA, as DELF),
          `scales` [N] (1 / s for a feature found at pyramid scale s, DELF's
          convention), `scores` [N] (attention), `global_descriptors` [G, D]
          (per selected scale, L2-normalised), `global_descriptor` [D] (pooled).
  Keypoints are the features whose attention >= input_abs_thres over all
  scales, the `input_max_feature_num` strongest kept.
  """

  SIZE_ROUNDING = "delf"
  # One frozen graph serves both the global and the local signatures.
  MODEL_CALL_KWARGS = {"return_intermediates": True}

  def __init__(self, model, export_config: export_section.ExportConfig | None = None):
    super().__init__(model, export_config)
    self.rf_size, self.rf_stride, self.rf_padding = model.receptive_field()

  def signatures(self) -> dict:
    return {
      savedmodel_contract.SERVING_DEFAULT: self.serve_local.get_concrete_function(),
      savedmodel_contract.SERVE_GLOBAL: self.serve.get_concrete_function(),
      savedmodel_contract.SERVE_ENCODED: self.serve_encoded.get_concrete_function(),
      savedmodel_contract.SERVE_GLOBAL_BATCH: self.serve_batch.get_concrete_function(),
      savedmodel_contract.SERVE_LOCAL_BATCH: self.serve_local_batch.get_concrete_function(),
    }

  @staticmethod
  def _global_descriptor(outputs):
    return outputs["descriptor"]

  def _local_outputs(self, images, scales, max_feature_num, abs_thres, global_scales_ind):
    """DELG's outputs for uint8 [B, H, W, 3] images of one size, per-feature ones padded.

    Per image, the features of every scale whose attention >= abs_thres, the
    `max_feature_num` strongest first (ties: the earlier scale, then row-major
    grid order). Rows past NUM_FEATURES[b] of the [B, K, ...] outputs are
    padding (K = min(max_feature_num, grid positions of all scales)).
    """
    images = tf.cast(images, tf.float32)
    batch = tf.shape(images)[0]
    num_scales = tf.size(scales)
    reduced_dim = self.model.autoencoder.reduced_dim
    # Per scale: boxes [n, 4] and scales [n] (shared by the batch), features
    # [n, B, d] and masked scores [n, B] (the TensorArrays concatenate along n).
    arrays = [tf.TensorArray(tf.float32, size=num_scales, infer_shape=False) for _ in range(4)]
    descriptors = tf.TensorArray(tf.float32, size=num_scales)
    for i in tf.range(num_scales):
      scale = scales[i]
      out = self._forward(self._resize_batch(images, scale))
      attention = out["attention"][..., 0]  # [B, h, w]
      height, width = tf.shape(attention)[1], tf.shape(attention)[2]
      rows, cols = tf.meshgrid(tf.range(height), tf.range(width), indexing="ij")
      grid = tf.cast(tf.reshape(tf.stack([rows, cols], axis=-1), [-1, 2]), tf.float32)  # (y, x)
      # Receptive boxes at this scale, mapped back to input-image pixels.
      top_left = grid * self.rf_stride - self.rf_padding
      boxes = tf.concat([top_left, top_left + self.rf_size - 1], axis=1) / scale
      flat_attention = tf.reshape(attention, [batch, -1])
      masked = tf.where(flat_attention >= abs_thres, flat_attention, -float("inf"))
      features = tf.reshape(out["reduced_features"], [batch, -1, reduced_dim])
      arrays[0] = arrays[0].write(i, boxes)
      arrays[1] = arrays[1].write(i, tf.transpose(features, [1, 0, 2]))
      arrays[2] = arrays[2].write(i, tf.fill([tf.shape(grid)[0]], 1.0 / scale))
      arrays[3] = arrays[3].write(i, tf.transpose(masked))
      descriptors = descriptors.write(i, out["descriptor"])
    boxes = tf.reshape(arrays[0].concat(), [-1, 4])
    features = tf.transpose(tf.reshape(arrays[1].concat(), [-1, batch, reduced_dim]), [1, 0, 2])
    feature_scales = arrays[2].concat()
    scores = tf.transpose(tf.reshape(arrays[3].concat(), [-1, batch]))  # [B, N]
    top = tf.math.top_k(scores, tf.minimum(max_feature_num, tf.shape(scores)[1]))
    valid = top.values > -float("inf")
    global_descriptors = tf.gather(
      tf.transpose(descriptors.stack(), [1, 0, 2]), global_scales_ind, axis=1
    )
    return {
      savedmodel_contract.BOXES: tf.gather(boxes, top.indices),
      savedmodel_contract.FEATURES: tf.gather(features, top.indices, batch_dims=1),
      savedmodel_contract.SCALES: tf.gather(feature_scales, top.indices),
      savedmodel_contract.SCORES: tf.where(valid, top.values, 0.0),
      savedmodel_contract.NUM_FEATURES: tf.reduce_sum(tf.cast(valid, tf.int32), axis=1),
      savedmodel_contract.GLOBAL_DESCRIPTORS: global_descriptors,
      savedmodel_contract.GLOBAL_DESCRIPTOR: self._pool(
        global_descriptors, tf.range(tf.shape(global_descriptors)[1])
      ),
    }

  @tf.function(
    input_signature=[
      tf.TensorSpec([None, None, 3], tf.uint8, name=savedmodel_contract.INPUT_IMAGE),
      tf.TensorSpec([None], tf.float32, name=savedmodel_contract.INPUT_SCALES),
      tf.TensorSpec([], tf.int32, name=savedmodel_contract.INPUT_MAX_FEATURE_NUM),
      tf.TensorSpec([], tf.float32, name=savedmodel_contract.INPUT_ABS_THRES),
      tf.TensorSpec([None], tf.int32, name=savedmodel_contract.INPUT_GLOBAL_SCALES_IND),
    ]
  )
  def serve_local(
    self,
    input_image,
    input_scales,
    input_max_feature_num,
    input_abs_thres,
    input_global_scales_ind,
  ):
    outputs = self._local_outputs(
      input_image[None],
      input_scales,
      input_max_feature_num,
      input_abs_thres,
      input_global_scales_ind,
    )
    count = outputs.pop(savedmodel_contract.NUM_FEATURES)[0]
    per_feature = (
      savedmodel_contract.BOXES,
      savedmodel_contract.FEATURES,
      savedmodel_contract.SCALES,
      savedmodel_contract.SCORES,
    )
    return {
      name: value[0, :count] if name in per_feature else value[0] for name, value in outputs.items()
    }

  @tf.function(
    input_signature=[
      tf.TensorSpec([None, None, None, 3], tf.uint8, name=savedmodel_contract.INPUT_IMAGES),
      tf.TensorSpec([None], tf.float32, name=savedmodel_contract.INPUT_SCALES),
      tf.TensorSpec([], tf.int32, name=savedmodel_contract.INPUT_MAX_FEATURE_NUM),
      tf.TensorSpec([], tf.float32, name=savedmodel_contract.INPUT_ABS_THRES),
      tf.TensorSpec([None], tf.int32, name=savedmodel_contract.INPUT_GLOBAL_SCALES_IND),
    ]
  )
  def serve_local_batch(
    self,
    input_images,
    input_scales,
    input_max_feature_num,
    input_abs_thres,
    input_global_scales_ind,
  ):
    return self._local_outputs(
      input_images, input_scales, input_max_feature_num, input_abs_thres, input_global_scales_ind
    )


def serving_model(model, model_config: config_lib.ModelConfig, export_config):
  """The network an export serves: `model`, or a twin for export.precision and fold_batch_norms.

  "bfloat16" builds the twin under Keras mixed_bfloat16 (bf16 convolutions and
  matmuls, float32 weights). export.fold_batch_norms folds the backbone's batch
  norms into its convolutions, from `model`'s float32 weights
  (foldable_batch_norm.FoldableBatchNorm): TF's CPU remapper fuses a convolution with a
  bias in float32 and bfloat16 alike, but a bfloat16 convolution not with a
  batch norm. The twin is for inference only; `model` is not changed.

  Args:
    model: the trained float32 model.
    model_config: its config.
    export_config: an ExportConfig whose precision is resolved (not "auto").
  """
  bfloat16 = export_config.precision == "bfloat16"
  # keras.applications backbones have no foldable pairs (keras_app_backbones.fold_batch_norms).
  fold = export_config.fold_batch_norms and bool(model.backbone.conv_bn_pairs())
  if not bfloat16 and not fold:
    return model
  policy = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy("mixed_bfloat16" if bfloat16 else "float32")
  try:
    # A DELG model converted with its attention classifier has two more weights.
    num_classes = getattr(model, "num_classes", None)
    twin = builder.build_model(model_config, image_size=64, num_classes=num_classes)
  finally:
    keras.mixed_precision.set_global_policy(policy)
  twin.set_weights(model.get_weights())
  if fold:
    twin.backbone.fold_batch_norms(source=model.backbone)
  return twin


def test_time_options(export_config, gem_plus_p=None, regional_gem_weight=None):
  """The model's superglobal.TestTimeOptions of an export (values default to the config's)."""
  return superglobal.TestTimeOptions(
    gem_plus_p=export_config.superglobal_gem_p if gem_plus_p is None else gem_plus_p,
    regional_gem_weight=(
      export_config.regional_gem_weight if regional_gem_weight is None else regional_gem_weight
    ),
    regional_gem_p=export_config.regional_gem_p,
    regional_gem_size=export_config.regional_gem_size,
  )


def serving_module(model, model_config: config_lib.ModelConfig, export_config) -> ServingModule:
  """The module an export of `model` serves: DelgServingModule for DELG, else ServingModule.

  Args:
    model: the trained float32 model.
    model_config: its config.
    export_config: an ExportConfig whose precision is resolved (not "auto");
      the module serves `serving_model`'s twin when it asks for one.
  """
  module_class = DelgServingModule if model_config.name == "delg" else ServingModule
  return module_class(serving_model(model, model_config, export_config), export_config)
