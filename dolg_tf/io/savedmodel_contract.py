"""The SavedModel contract: what export writes and extraction and serving read.

Signature, input and output names; the config asset (the experiment config
the model was exported with: its `model` and `export` sections), the
interface version recorded there and the asset of older exports; the values
the export section's fields take (pyramid presets, precisions, scale
poolings) and the keys older exports wrote under other names.

Standard library only (no TensorFlow), so that TF-free code (the REST serving client)
can use it. The export section itself, typed and validated (ExportConfig),
and its reading from a SavedModel folder (`read_export_config`, tolerating
what older exports wrote) are dolg_tf/io/export_section.py.
"""

from collections.abc import Mapping

# Signatures.
SERVING_DEFAULT = "serving_default"  # DOLG: global descriptors; DELG: DELF's local + global.
SERVE_GLOBAL = "serve_global"  # DELG exports: the global-only interface of DOLG's default.
SERVE_ENCODED = "serve_encoded"  # A batch of encoded images (REST clients, base64).
# Batches of decoded images of one size (batched extraction, accelerators): the
# global-only interface, and DELG's local+global one, with INPUT_IMAGES.
SERVE_GLOBAL_BATCH = "serve_global_batch"
SERVE_LOCAL_BATCH = "serve_local_batch"
# The signatures with the global-only interface, in order of preference.
GLOBAL_SIGNATURES = (SERVE_GLOBAL, SERVING_DEFAULT)

# Inputs.
INPUT_IMAGE = "input_image"  # uint8 [H, W, 3]
INPUT_SCALES = "input_scales"  # float32 [S]
INPUT_GLOBAL_SCALES_IND = "input_global_scales_ind"  # int32 [G]
INPUT_MAX_FEATURE_NUM = "input_max_feature_num"  # int32 []
INPUT_ABS_THRES = "input_abs_thres"  # float32 []
INPUT_ENCODED_IMAGES = "images"  # string [B]
INPUT_IMAGES = "input_images"  # uint8 [B, H, W, 3], the batched signatures
GLOBAL_INPUTS = frozenset({INPUT_IMAGE, INPUT_SCALES, INPUT_GLOBAL_SCALES_IND})
LOCAL_GLOBAL_INPUTS = GLOBAL_INPUTS | {INPUT_MAX_FEATURE_NUM, INPUT_ABS_THRES}
BATCH_GLOBAL_INPUTS = (GLOBAL_INPUTS - {INPUT_IMAGE}) | {INPUT_IMAGES}
BATCH_LOCAL_GLOBAL_INPUTS = (LOCAL_GLOBAL_INPUTS - {INPUT_IMAGE}) | {INPUT_IMAGES}

# Outputs.
GLOBAL_DESCRIPTORS = "global_descriptors"  # float32 [S or G, D], per scale
GLOBAL_DESCRIPTOR = "global_descriptor"  # float32 [D] (serve_encoded: [B, D])
BOXES = "boxes"  # float32 [N, 4]
FEATURES = "features"  # float32 [N, d]
SCALES = "scales"  # float32 [N]: 1 / pyramid scale (DELF), see INTERFACE_VERSION
SCORES = "scores"  # float32 [N]
# The batched signatures give every output above with a leading batch axis
# ([B, S, D], [B, D]; DELG's per-feature outputs padded to [B, K, ...]) and:
NUM_FEATURES = "num_features"  # int32 [B]: the valid rows of each image's features

# Scalar float32 variables of non-frozen exports, attributes of the loaded
# SavedModel that extraction may assign (SuperGlobal's test-time options):
GEM_PLUS_P = "superglobal_gem_p"  # GeM+ exponent of the global GeM; 0 = the trained p
REGIONAL_GEM_WEIGHT = "regional_gem_weight"  # Regional-GeM blend weight; 0 = off

# The experiment config (dolg_tf.config) the SavedModel was exported with, as
# JSON, inside the SavedModel folder: its `model` and `export` sections
# (pyramid, size limits) give extraction its defaults.
CONFIG_ASSET = "assets.extra/config.json"

# The version of this interface, recorded in CONFIG_ASSET under INTERFACE_KEY.
# 2: DELG's SCALES output holds 1 / s, DELF's convention. Exports of this
# project without the key (version 1) hold s itself; extraction inverts those.
# DELF's own exports have no CONFIG_ASSET and already hold 1 / s.
INTERFACE_KEY = "interface_version"
INTERFACE_VERSION = 2

# Exports of this project written before CONFIG_ASSET: only the export
# settings, as a flat JSON object (its interface version is 1).
LEGACY_CONFIG_ASSET = "assets.extra/export_config.json"
# Keys older exports wrote in the export section under another name -> the field.
RENAMED_EXPORT_KEYS = {"jit_compile": "serve_jit_compile"}

# Image pyramids (ExportConfig.image_scales), by name; each pyramid has one name.
PYRAMID_PRESETS = {
  # 1/sqrt(2), 1, sqrt(2): the DELF-style 3 scales of official DOLG's training
  # config, with the largest side capped (ExportConfig's default).
  "delf_3": (0.7071, 1.0, 1.4142),
  # The pyramid of the official DOLG evaluation script (evaler/infer.py), used
  # with no size cap: the official-checkpoint converter's default.
  "official_5": (0.3535, 0.5, 0.7071, 1.0, 1.4142),
}
DEFAULT_PYRAMID = "delf_3"

# Export precisions: the SavedModel's compute type (inputs and outputs stay float32 / uint8).
EXPORT_PRECISIONS = ("float32", "bfloat16", "auto")
# How the serving signatures pool the pyramid's descriptors (ExportConfig.scale_pooling).
EXPORT_SCALE_POOLINGS = ("average", "max")


def upgrade_export_section(values: Mapping) -> dict:
  """An export section as an older export wrote it, with its keys renamed to the fields'.

  RENAMED_EXPORT_KEYS are renamed (a key under the new name wins); other keys
  are kept as they are.
  """
  upgraded = {k: v for k, v in values.items() if k not in RENAMED_EXPORT_KEYS}
  for old, new in RENAMED_EXPORT_KEYS.items():
    if old in values and new not in upgraded:
      upgraded[new] = values[old]
  return upgraded
