"""tf.data input for training and evaluation on GLDv2-layout TFRecords.

Training: files shuffled, records interleaved and shuffled, repeated forever;
each image gets a random-resized crop (area 0.08-1, aspect 3/4-4/3, as in
DOLG/DELG training) and a random horizontal flip, then is resized to
image_size x image_size. Evaluation: one pass in file order; the central
square of each image (or the whole image) is resized to image_size x
image_size.

Batches are (images, labels): float32 RGB [B, S, S, 3] in [0, 255] (the model
normalises internally) and int32 [B].

Determinism: every random op is seeded. The augmentation of the i-th element
of the (repeated, shuffled) stream uses the stateless seed (seed, i), so the
same seed gives the same batches, and every epoch gets new crops and flips.
`tf.data.Options().deterministic` is set, so parallel maps keep their order.
"""

import tensorflow as tf

from dolg_tf.data import gldv2

AUTOTUNE = tf.data.AUTOTUNE


def list_files(file_pattern: str | list[str]) -> list[str]:
  """Sorted files matching a glob pattern (or a comma-separated list / list of patterns).

  Raises:
    FileNotFoundError: naming the pattern, if nothing matches.
  """
  patterns = file_pattern.split(",") if isinstance(file_pattern, str) else list(file_pattern)
  files = sorted({f for p in patterns if p for f in tf.io.gfile.glob(p.strip())})
  if not files:
    raise FileNotFoundError(f"no file matches {file_pattern}")
  return files


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


def make_dataset(
  file_pattern: str | list[str],
  batch_size: int,
  image_size: int,
  training: bool,
  seed: int = 0,
  drop_remainder: bool | None = None,
  shuffle_buffer_size: int = 1024,
  cycle_length: int = 16,
  center_crop: bool = True,
  repeat: bool | None = None,
  input_context: tf.distribute.InputContext | None = None,
  crop_area_range: tuple[float, float] = (0.08, 1.0),
) -> tf.data.Dataset:
  """Batches of (images, labels) from GLDv2-layout TFRecords.

  Args:
    file_pattern: glob pattern(s) of the TFRecord files (comma-separated or a
      list).
    batch_size: examples per batch (per replica under tf.distribute).
    image_size: side of the square output images.
    training: augment, shuffle and (by default) repeat; else one ordered pass.
    seed: seed of the file and record shuffles and of the augmentations.
    drop_remainder: drop a last partial batch (static batch size, as
      tf.distribute and TPUs need). None: True for training, False else.
    shuffle_buffer_size: records in the shuffle buffer (training).
    cycle_length: files read concurrently.
    center_crop: evaluation only: resize the central square (True) or the
      whole image (False, aspect not kept).
    repeat: repeat forever; None: same as `training`.
    crop_area_range: training: relative area range of the random-resized crop.
    input_context: tf.distribute input context; the files (or, with fewer
      files than pipelines, the records) are sharded across input pipelines.

  Returns:
    A tf.data.Dataset of (float32 [B, S, S, 3] in [0, 255], int32 [B]).

  Raises:
    FileNotFoundError: if no file matches.
    ValueError: on a non-positive batch or image size.
  """
  if batch_size < 1 or image_size < 1:
    raise ValueError(f"batch_size and image_size must be >= 1, got {batch_size}, {image_size}")
  if drop_remainder is None:
    drop_remainder = training
  if repeat is None:
    repeat = training
  files = list_files(file_pattern)
  dataset = tf.data.Dataset.from_tensor_slices(files)
  shard_records = False
  if input_context is not None and input_context.num_input_pipelines > 1:
    if len(files) >= input_context.num_input_pipelines:
      dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    else:
      shard_records = True
  if training:
    dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
  dataset = dataset.interleave(
    lambda path: tf.data.TFRecordDataset(path, buffer_size=8 << 20),
    cycle_length=max(1, min(cycle_length, len(files))),
    block_length=1,
    num_parallel_calls=AUTOTUNE,
    deterministic=True,
  )
  if shard_records:
    dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
  if training:
    dataset = dataset.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    dataset = dataset.repeat()

  def parse(serialized):
    parsed = gldv2.parse_example(serialized)
    return parsed["image"], tf.cast(parsed["label"], tf.int32)

  if training:
    base_seed = tf.constant(seed, tf.int64)

    def train_map(index, serialized):
      image, label = parse(serialized)
      element_seed = tf.stack([base_seed, index])
      return preprocess_train(image, image_size, element_seed, crop_area_range), label

    dataset = dataset.enumerate().map(train_map, num_parallel_calls=AUTOTUNE, deterministic=True)
  else:

    def eval_map(serialized):
      image, label = parse(serialized)
      return preprocess_eval(image, image_size, center_crop), label

    dataset = dataset.map(eval_map, num_parallel_calls=AUTOTUNE, deterministic=True)
  dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
  dataset = dataset.prefetch(AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = True
  if input_context is not None:
    # Already sharded above; tf.distribute must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
  return dataset.with_options(options)
