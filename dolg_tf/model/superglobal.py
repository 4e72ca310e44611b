"""SuperGlobal's training-free changes to the global branch (Shao et al., ICCV 2023).

The network-side operators of "Global Features are All You Need for Image
Retrieval and Reranking", applied to the stage-4 map f4 of DOLG and DELG at
inference (ReLU-up is the backbone's `relu_up`, see bottlenecks.activation):

- GeM+: GeM with a tuned exponent instead of the trained one
  (`TestTimeOptions.gem_plus_p`; SuperGlobal uses 4.6 for its CVNet backbone).
- Regional-GeM: f4 <- (1 - w) f4 + w lp(f4), where lp is LP pooling with
  exponent 2.5 over 5x5 windows at stride 1 on the reflect-padded map,
  normalised as a mean: lp(x) = (mean_window x^p)^(1/p). SuperGlobal's code
  divides x by 25^(1/p) before torch's LPPool2d (a sum), which is the same;
  its weight is w = 0.5.

Differences from SuperGlobal's code (all deliberate):
- The blend weight w is a parameter (0 = off) rather than a fixed 0.5, so an
  export can switch Regional-GeM at run time (a variable of the SavedModel).
- A map with a side of at most (size - 1) / 2 cannot be reflect-padded
  (PyTorch raises an error there); such maps are pooled over the part of each
  window inside the map instead.
- Negative inputs are treated as 0 before the power (f4 is post-ReLU, so this
  only guards against NaN from a non-integer power).
"""

import dataclasses
from typing import Any

import tensorflow as tf

# SuperGlobal's settings.
REFERENCE_GEM_PLUS_P = 4.6
REFERENCE_REGIONAL_GEM_WEIGHT = 0.5
REFERENCE_REGIONAL_GEM_P = 2.5
REFERENCE_REGIONAL_GEM_SIZE = 5
REFERENCE_RELU_UP = 0.014


@dataclasses.dataclass(frozen=True)
class TestTimeOptions:
  """Inference-only options of the global branch (scalars or scalar tensors/variables).

  Attributes:
    gem_plus_p: GeM+ exponent; None or <= 0 keeps the trained one.
    regional_gem_weight: Regional-GeM blend weight w in [0, 1]; None or 0 = off.
    regional_gem_p: LP-pooling exponent of Regional-GeM.
    regional_gem_size: its window side (odd).
  """

  gem_plus_p: Any = None
  regional_gem_weight: Any = None
  regional_gem_p: float = REFERENCE_REGIONAL_GEM_P
  regional_gem_size: int = REFERENCE_REGIONAL_GEM_SIZE


def regional_gem(x, p: float = REFERENCE_REGIONAL_GEM_P, size: int = REFERENCE_REGIONAL_GEM_SIZE):
  """LP pooling (mean_window max(x, 0)^p)^(1/p) of [B, H, W, C] maps, stride 1, same size."""
  x = tf.maximum(tf.cast(x, tf.float32), 0.0)
  pad = (size - 1) // 2
  powered = tf.pow(x, p)
  height, width = tf.shape(x)[1], tf.shape(x)[2]

  def reflected():
    # Reflect padding by gathering, not tf.pad: XLA compiles both branches of the
    # tf.cond, and its MirrorPad rejects maps too small for the padding.
    padded = tf.gather(powered, _reflected_indices(height, pad), axis=1)
    padded = tf.gather(padded, _reflected_indices(width, pad), axis=2)
    return tf.nn.avg_pool2d(padded, size, 1, "VALID")

  def inside():
    # TensorFlow's SAME average pooling averages over the in-map part of each window.
    return tf.nn.avg_pool2d(powered, size, 1, "SAME")

  pooled = tf.cond(tf.logical_and(height > pad, width > pad), reflected, inside)
  return tf.pow(pooled, 1.0 / p)


def _reflected_indices(n, pad):
  """Source indices of a reflect-padded axis of length n: -pad .. n + pad - 1 mirrored."""
  i = tf.abs(tf.range(-pad, n + pad))
  i = (n - 1) - tf.abs((n - 1) - i)
  return tf.clip_by_value(i, 0, n - 1)  # only maps of side <= pad, never gathered from


def apply_regional_gem(f4, options: TestTimeOptions | None):
  """f4, or its Regional-GeM blend (float32) when the options' weight is positive."""
  if options is None or options.regional_gem_weight is None:
    return f4
  weight = tf.cast(options.regional_gem_weight, tf.float32)

  def blended():
    pooled = regional_gem(f4, options.regional_gem_p, options.regional_gem_size)
    return (1.0 - weight) * tf.cast(f4, tf.float32) + weight * pooled

  return tf.cond(weight > 0, blended, lambda: tf.cast(f4, tf.float32))


def gem_plus_p(options: TestTimeOptions | None):
  """The GeM+ exponent of the options (None: the trained one)."""
  return None if options is None else options.gem_plus_p
