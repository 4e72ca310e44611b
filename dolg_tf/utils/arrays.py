"""NumPy array helpers shared by extraction and retrieval (model code has its TF twins)."""

import numpy as np


def l2_normalize(x, axis: int = -1, epsilon: float = 1e-12, dtype=np.float32) -> np.ndarray:
  """x / max(||x||_2, epsilon) along `axis` (zero vectors stay zero).

  Args:
    x: array-like of numbers.
    axis: the axis holding the vectors.
    epsilon: floor of the norms.
    dtype: the float type computed in and returned.

  Returns:
    An array of x's shape and `dtype`.
  """
  x = np.asarray(x, dtype=dtype)
  norms = np.linalg.norm(x, axis=axis, keepdims=True)
  return (x / np.maximum(norms, epsilon)).astype(dtype, copy=False)
