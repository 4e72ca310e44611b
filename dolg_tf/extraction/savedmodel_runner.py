"""Running an exported SavedModel: load, signature checks, single and batched runs.

Only the SavedModel contract is used (io/savedmodel_contract.py: signature,
input and output names, the export section); no model code is imported, so a
converted official checkpoint, a trained model and a TF Serving deployment
run alike.

    loaded, model_path = savedmodel_runner.load(config, config_path)
    runner = SavedModelRunner(loaded, model_path, GLOBAL_ONLY, inputs)
    outputs = runner.run(image)                 # {output name: numpy array}
    per_image = runner.run_batch([a, b, c])     # one forward per equal-size group

Global-only extraction uses `serve_global` (a DELG export) or
`serving_default`; DELG's local + global extraction `serving_default` with
DELF's inputs. The batched signatures (`serve_global_batch`,
`serve_local_batch`) are used when the export has them; older exports of this
project and DELF's run one image at a time.
"""

import os
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from dolg_tf.io import config_io
from dolg_tf.io import savedmodel_contract as contract

DolgConfig = config_io.DolgConfig

# export.<field> -> (GlobalConfig field overriding it, SavedModel variable), for
# SuperGlobal's GeM+ and Regional-GeM.
EXPORT_TEST_TIME_FIELDS = {
  "superglobal_gem_p": ("gem_plus_p", contract.GEM_PLUS_P),
  "regional_gem_weight": ("regional_gem_weight", contract.REGIONAL_GEM_WEIGHT),
}


class SignatureSpec(NamedTuple):
  """The signatures one kind of extraction runs, and the inputs they must take."""

  candidates: tuple[str, ...]  # in order of preference
  inputs: frozenset
  batch_name: str
  batch_inputs: frozenset
  kind: str  # for the message of a signature with other inputs
  hint: str  # appended to that message
  per_feature: tuple[str, ...]  # batched outputs padded per image (NUM_FEATURES rows valid)


GLOBAL_ONLY = SignatureSpec(
  tuple(contract.GLOBAL_SIGNATURES),
  contract.GLOBAL_INPUTS,
  contract.SERVE_GLOBAL_BATCH,
  contract.BATCH_GLOBAL_INPUTS,
  "the global-only",
  "",
  (),
)
LOCAL_AND_GLOBAL = SignatureSpec(
  (contract.SERVING_DEFAULT,),
  contract.LOCAL_GLOBAL_INPUTS,
  contract.SERVE_LOCAL_BATCH,
  contract.BATCH_LOCAL_GLOBAL_INPUTS,
  "DELG's local+global",
  " (is it a DELG export?)",
  (contract.BOXES, contract.FEATURES, contract.SCALES, contract.SCORES),
)


def load_saved_model(model_path: str, source: str = "<config>"):
  """tf.saved_model.load, with a damaged SavedModel reported as one ValueError naming it.

  A truncated variables file, say, surfaces from TF as an IndexError or an
  OpError deep inside the checkpoint reader.
  """
  try:
    return tf.saved_model.load(model_path)
  except (IndexError, KeyError, ValueError, OSError, tf.errors.OpError) as e:
    reason = " ".join(str(e).split())[:300]
    raise ValueError(
      f"{model_path}: cannot load the SavedModel (model_path in {source}): "
      f"{type(e).__name__}: {reason}"
    ) from e


def load(config: DolgConfig, config_path: str | None, model_path: str | None, saved_model=None):
  """(loaded SavedModel, its folder or None) for a DolgConfig.

  Args:
    config: the extraction config (its model_path, resolved as config_io does).
    config_path: the file `config` came from (named in errors).
    model_path: overrides `config.model_path` (already resolved).
    saved_model: an already loaded SavedModel to use instead of loading one;
      its folder is still resolved (without requiring it) for its config asset.

  Raises:
    FileNotFoundError: the folder or its saved_model.pb is missing (named).
    ValueError: the SavedModel does not load (named).
  """
  source = config_path or "<config>"
  if saved_model is not None:
    if model_path is None and config.model_path:
      model_path = config_io.resolve_model_path(config, config_path, must_exist=False)
    return saved_model, model_path
  model_path = model_path or config_io.resolve_model_path(config, config_path)
  if not os.path.exists(os.path.join(model_path, "saved_model.pb")):
    raise FileNotFoundError(f"{model_path}: no saved_model.pb (model_path in {source})")
  return load_saved_model(model_path, source), model_path


def set_test_time_options(
  loaded, config: DolgConfig, record, model_path: str | None, source: str
) -> None:
  """Sets the SavedModel's GeM+ / Regional-GeM variables for `config`.

  A value the config's global_config sets wins; otherwise the export's own
  (`record`, its export_section.ExportRecord, or None), so that a
  SavedModel object shared by several extractors never keeps another
  config's values.

  Raises:
    ValueError: the config sets one but the SavedModel has no such variable
      (a frozen export, or not one of this project's), named.
  """
  recorded = record.recorded_values() if record is not None else {}
  global_config = config.global_config
  for export_field, (field, attribute) in EXPORT_TEST_TIME_FIELDS.items():
    variable = getattr(loaded, attribute, None)
    if global_config.HasField(field):
      value = getattr(global_config, field)
      if not isinstance(variable, tf.Variable):
        raise ValueError(
          f"{source}: global_config.{field}: {model_path or '<loaded SavedModel>'} has no "
          f"{attribute} variable (exported with freeze_weights, or not by dolg_tf); "
          f"set export.{export_field} and export again instead"
        )
    elif export_field in recorded:
      value = float(recorded[export_field])
    else:
      continue
    if isinstance(variable, tf.Variable):
      variable.assign(value)


def check_image(image: np.ndarray) -> np.ndarray:
  """`image` as a uint8 [H, W, 3] array; ValueError for anything else."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
  return image


class SavedModelRunner:
  """One signature of a loaded SavedModel (and its batched twin), checked and run.

  Attributes:
    signature_name: the signature `run` calls.
    batch_signature_name: the batched signature `run_batch` calls, or None for
      exports without it (`run_batch` then runs the images one by one).
    batch_signature: that concrete function, or None.
  """

  def __init__(self, loaded, model_path: str | None, spec: SignatureSpec, inputs: dict):
    """Selects and checks the signatures of `spec`.

    Args:
      loaded: the loaded SavedModel.
      model_path: its folder (named in errors), or None.
      spec: GLOBAL_ONLY or LOCAL_AND_GLOBAL.
      inputs: the signature inputs other than the image(s) (tensors).

    Raises:
      ValueError: the SavedModel lacks the signature or it takes other inputs (named).
    """
    name = model_path or "<loaded SavedModel>"
    available = [n for n in spec.candidates if n in loaded.signatures]
    if not available:
      raise ValueError(
        f"{name}: SavedModel has no signature {' or '.join(spec.candidates)}; "
        f"it has {sorted(loaded.signatures)}"
      )
    self.signature_name = available[0]
    self._signature = loaded.signatures[self.signature_name]
    found = set(self._signature.structured_input_signature[1])
    if found != spec.inputs:
      raise ValueError(
        f"{name}: signature {self.signature_name} takes {sorted(found)}, not {spec.kind} "
        f"inputs {sorted(spec.inputs)}" + spec.hint
      )
    self.batch_signature = loaded.signatures.get(spec.batch_name)
    if self.batch_signature is not None:
      batch_found = set(self.batch_signature.structured_input_signature[1])
      if batch_found != spec.batch_inputs:
        raise ValueError(
          f"{name}: signature {spec.batch_name} takes {sorted(batch_found)}, "
          f"not {sorted(spec.batch_inputs)}"
        )
    self.batch_signature_name = spec.batch_name if self.batch_signature is not None else None
    self._spec = spec
    self._inputs = dict(inputs)

  def run(self, image: np.ndarray) -> dict[str, np.ndarray]:
    """The signature's raw outputs (GLOBAL_DESCRIPTORS [S, D], and for DELG BOXES,
    FEATURES, SCALES, SCORES) for a preprocessed uint8 [H, W, 3] image."""
    image = check_image(image)
    outputs = self._signature(input_image=tf.constant(image), **self._inputs)
    out = {k: v.numpy() for k, v in outputs.items()}
    # DELF's exports give scores as [N, 1], and a global-only export made with
    # a multi-scale pool type gives one pooled [D] descriptor.
    if contract.SCORES in out:
      out[contract.SCORES] = out[contract.SCORES].reshape([-1])
    pooled = out.get(contract.GLOBAL_DESCRIPTORS)
    if pooled is not None and pooled.ndim == 1:
      out[contract.GLOBAL_DESCRIPTORS] = pooled[None]
    return out

  def run_batch(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """`run` of each image; images of one size go through one batched forward.

    The batched signature is used when the export has it and there are two
    or more images of one shape; otherwise (or for mixed shapes) the images
    are run one by one. Each result holds what `run` returns for that image
    (DELG's padding removed).
    """
    images = [check_image(image) for image in images]
    if (
      self.batch_signature is None
      or len(images) < 2
      or any(image.shape != images[0].shape for image in images)
    ):
      return [self.run(image) for image in images]
    outputs = self.batch_signature(input_images=tf.constant(np.stack(images)), **self._inputs)
    out = {k: v.numpy() for k, v in outputs.items()}
    results = []
    for b in range(len(images)):
      result = {contract.GLOBAL_DESCRIPTORS: out[contract.GLOBAL_DESCRIPTORS][b]}
      if self._spec.per_feature:
        count = int(out[contract.NUM_FEATURES][b])
        result.update({name: out[name][b, :count] for name in self._spec.per_feature})
      results.append(result)
    return results
