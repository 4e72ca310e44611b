"""torchvision ResNet weights as a training initialisation of the pycls-layout backbone.

torchvision ResNets (`conv1`, `bn1`, `layer{1..4}.{i}.conv{1,2,3}`, `bn{1,2,3}`,
`downsample.{0,1}`) have the same layout as the pycls backbone; their input is
RGB with the ImageNet statistics (`TORCHVISION_INPUT`). Weights come from a
state dict, a `.pth` (read with torch) or an `.npz` of the same keys (no torch).
"""

import numpy as np

from dolg_tf import config_sections
from dolg_tf.convert import torch_state, weight_mapping

TORCHVISION_INPUT = dict(
  input_mean=config_sections.IMAGENET_MEAN_RGB,
  input_std=config_sections.IMAGENET_STD_RGB,
  input_channel_order="RGB",
)
TORCHVISION_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
# pycls block layer -> torchvision's name for it.
_TORCHVISION_BLOCK_LAYERS = {
  "a": "conv1",
  "a_bn": "bn1",
  "b": "conv2",
  "b_bn": "bn2",
  "c": "conv3",
  "c_bn": "bn3",
  "proj": "downsample.0",
  "bn": "downsample.1",
}


def _torchvision_block_name(stage: int, block: int, layer: str) -> str:
  return f"layer{stage}.{block - 1}.{_TORCHVISION_BLOCK_LAYERS[layer]}"


def _torchvision_entries(backbone) -> list[weight_mapping.Entry]:
  weight_mapping.ensure_built(backbone)
  return weight_mapping.backbone_entries(backbone, ("conv1", "bn1"), _torchvision_block_name)


def load_torchvision_resnet(backbone, state_dict_or_path) -> weight_mapping.ImportReport:
  """Loads torchvision ResNet weights into a pycls-layout ResNetBackbone.

  Args:
    backbone: a `ResNetBackbone` with layout 'pycls' (built on first use if
      needed), e.g. `model.backbone` of a DolgModel.
    state_dict_or_path: a state dict (torch tensors or numpy arrays), a
      `.pth` path (read with torch) or an `.npz` of the same keys (no torch).
      The classifier (`fc.*`) is reported as unused.

  Returns:
    The ImportReport.

  Raises:
    ValueError: naming the source and the first missing, mis-shaped or
      unexpected backbone key (the backbone is left unchanged), or if the
      backbone is not in the pycls layout.
  """
  state, source = torch_state.load_state(state_dict_or_path)
  return weight_mapping.assign(_torchvision_entries(backbone), state, TORCHVISION_PREFIXES, source)


def torchvision_state_dict(backbone) -> dict[str, np.ndarray]:
  """A pycls-layout backbone as a torchvision ResNet state dict (numpy, no `fc`)."""
  return {entry.key: entry.to_torch() for entry in _torchvision_entries(backbone)}
