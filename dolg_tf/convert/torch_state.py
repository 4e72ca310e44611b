"""PyTorch checkpoints read as numpy state dicts, without running their code.

`.pyth`/`.pth` files are read with `torch.load(weights_only=True)` (tensors and
plain containers only); `.npz` files of the same keys need no torch. torch is
optional: it is imported only to read a PyTorch file.
"""

import os
from collections.abc import Mapping

import numpy as np


def _to_numpy(value, key: str, source: str) -> np.ndarray:
  if isinstance(value, np.ndarray):
    return value
  if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch.Tensor
    tensor = value.detach().cpu()
    if tensor.is_floating_point():
      tensor = tensor.float()  # float16 / bfloat16 -> float32
    return tensor.numpy()
  raise ValueError(f"{source}: not a state dict: key '{key}' holds a {type(value).__name__}")


def _torch_load(path: str):
  """torch.load(weights_only=True) with one-line errors naming `path`."""
  with open(path, "rb") as f:
    header = f.read(4)
  # torch.save writes a zip archive; the legacy format starts with a pickle opcode.
  if not (header.startswith(b"PK\x03\x04") or header.startswith(b"\x80")):
    raise ValueError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle)")
  try:
    import torch  # optional dependency, imported only here
  except ImportError as e:
    raise ImportError(
      f"{path}: reading PyTorch files needs torch, or save the state dict as .npz "
      f"(numpy.savez) first: {e}"
    ) from e
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many exception types for corrupt files
    message = str(e)
    marker = "WeightsUnpickler error:"
    if marker in message:  # a pickle that is not plain tensors / containers
      reason = "not loadable with weights_only=True: " + message.split(marker, 1)[1]
    else:
      reason = message
    reason = " ".join(reason.split())[:200]
    raise ValueError(f"{path}: not a readable PyTorch checkpoint ({reason})") from e


def unwrap_state_dict(obj, source: str = "<state dict>") -> dict[str, np.ndarray]:
  """Returns the float32/int numpy state dict inside a loaded checkpoint object.

  Accepts a pycls checkpoint (`{"model_state": ...}`), a `{"state_dict": ...}`
  wrapper or a bare state dict, with or without DataParallel's `module.`
  prefix; values may be torch tensors or numpy arrays.

  Raises:
    ValueError: naming `source`, if `obj` is not a state dict.
  """
  if isinstance(obj, Mapping):
    for wrapper in ("model_state", "state_dict"):
      if wrapper in obj and isinstance(obj[wrapper], Mapping):
        obj = obj[wrapper]
        break
  if not isinstance(obj, Mapping) or not obj:
    raise ValueError(f"{source}: not a state dict (got {type(obj).__name__})")
  state = {}
  for key, value in obj.items():
    if not isinstance(key, str):
      raise ValueError(f"{source}: not a state dict: key {key!r} is not a string")
    name = key[len("module.") :] if key.startswith("module.") else key
    state[name] = _to_numpy(value, key, source)
  return state


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a state dict from a PyTorch file (`.pyth`, `.pth`, ...) or an `.npz`.

  Raises:
    FileNotFoundError: if `path` does not exist.
    ImportError: for a PyTorch file when torch is not installed.
    ValueError: naming `path`, if it is not a checkpoint / state dict.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint not found: {path}")
  if path.endswith(".npz"):
    try:
      with np.load(path, allow_pickle=False) as data:
        return unwrap_state_dict({k: data[k] for k in data.files}, path)
    except (OSError, ValueError) as e:
      if path in str(e):
        raise
      raise ValueError(f"{path}: not a readable .npz state dict ({e})") from e
  return unwrap_state_dict(_torch_load(path), path)


def load_state(checkpoint) -> tuple[dict[str, np.ndarray], str]:
  """(state dict, name for messages) of a path (read) or of an object already loaded."""
  if isinstance(checkpoint, str | os.PathLike):
    source = os.fspath(checkpoint)
    return read_state_dict(source), source
  return unwrap_state_dict(checkpoint, "<state dict>"), "<state dict>"
