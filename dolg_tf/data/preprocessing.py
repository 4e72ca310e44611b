"""Image preprocessing of the tf.data input: training augmentation and evaluation resizing.

Training: a random-resized crop (area 0.08-1, aspect 3/4-4/3, as in DOLG/DELG
training) and a random horizontal flip, then a resize to image_size x
image_size, all with stateless seeds (the same seed gives the same output).
Evaluation: the central square (or the whole image) resized. Inputs are uint8
RGB [H, W, 3]; outputs float32 RGB in [0, 255] (the model normalises
internally).
"""

import tensorflow as tf


def random_resized_crop(
  image: tf.Tensor,
  seed: tf.Tensor,
  area_range: tuple[float, float] = (0.08, 1.0),
  aspect_ratio_range: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
  max_attempts: int = 10,
) -> tf.Tensor:
  """Crops a random window of relative area in `area_range` and the given aspect range.

  Falls back to the whole image when no window fits in `max_attempts` (as
  tf.image.sample_distorted_bounding_box does).

  Args:
    image: [H, W, C] tensor.
    seed: int32/int64 [2] stateless seed.
    area_range: range of crop area / image area.
    aspect_ratio_range: range of crop width / height.
    max_attempts: sampling attempts.

  Returns:
    The crop, [h, w, C].
  """
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
    tf.shape(image),
    bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]], tf.float32),
    seed=seed,
    min_object_covered=0.0,
    aspect_ratio_range=aspect_ratio_range,
    area_range=area_range,
    max_attempts=max_attempts,
    use_image_if_no_bounding_boxes=True,
  )
  return tf.slice(image, begin, size)


def center_square_crop(image: tf.Tensor) -> tf.Tensor:
  """The largest centred square of an [H, W, C] image."""
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  side = tf.minimum(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  return image[top : top + side, left : left + side]


def _resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
  image = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
  return tf.clip_by_value(image, 0.0, 255.0)


def preprocess_train(
  image: tf.Tensor,
  image_size: int,
  seed: tf.Tensor,
  area_range: tuple[float, float] = (0.08, 1.0),
) -> tf.Tensor:
  """Random-resized crop, random horizontal flip, resize; uint8 -> float32 [0, 255].

  Args:
    image: uint8 RGB [H, W, 3].
    image_size: output side.
    seed: [2] stateless seed; the same seed gives the same output.
    area_range: range of the crop's relative area.

  Returns:
    float32 [image_size, image_size, 3].
  """
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=2)
  image = random_resized_crop(image, seeds[0], area_range=area_range)
  image = tf.image.stateless_random_flip_left_right(image, seeds[1])
  image = _resize(image, image_size)
  image.set_shape([image_size, image_size, 3])
  return image


def preprocess_eval(image: tf.Tensor, image_size: int, center_crop: bool = True) -> tf.Tensor:
  """Central square crop (optional) and resize; uint8 -> float32 [0, 255]."""
  if center_crop:
    image = center_square_crop(image)
  image = _resize(image, image_size)
  image.set_shape([image_size, image_size, 3])
  return image
