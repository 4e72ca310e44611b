"""A DELF-style DELG model for tests: DELF's structure and attribute names.

Written from the published structure of tensorflow/models research/delf
(training/model/resnet50.py, delf_model.py, delg_model.py): the attributes of
these Keras models are DELF's, so `tf.train.Checkpoint(model=...)` writes the
variable keys DELF's train.py writes. Weights are random (BatchNorm moving
statistics included). `width_multiplier` and `depth` shrink the network for
fast tests; names and structure stay DELF's (DELF itself is R50, width 1).

    model = delf_reference.DelfDelg(width_multiplier=0.125, num_classes=7)
    delf_reference.randomize(model)
    prefix = delf_reference.save_delf_checkpoint(model, logdir)
    outputs = delf_reference.reference_outputs(model, (pixels - 128) / 128)
"""

import os

import numpy as np
import tensorflow as tf

from dolg_tf.keras_api import keras
from dolg_tf.model import backbones, bottlenecks

layers = keras.layers
# As DELF's train.py: CheckpointManager(checkpoint, <logdir>/delf_tf2-ckpt).
CHECKPOINT_SUBDIR = "delf_tf2-ckpt"


class _Block(keras.Model):
  """DELF's _ConvBlock (`projection`) / _IdentityBlock: stride on conv2a."""

  def __init__(self, filters, strides=1, projection=False):
    super().__init__(name="")
    width, out_channels = filters
    self.conv2a = layers.Conv2D(width, 1, strides=strides)
    self.bn2a = layers.BatchNormalization(axis=3)
    self.conv2b = layers.Conv2D(width, 3, padding="same")
    self.bn2b = layers.BatchNormalization(axis=3)
    self.conv2c = layers.Conv2D(out_channels, 1)
    self.bn2c = layers.BatchNormalization(axis=3)
    self.projection = projection
    if projection:
      self.conv_shortcut = layers.Conv2D(out_channels, 1, strides=strides)
      self.bn_shortcut = layers.BatchNormalization(axis=3)

  def call(self, x, training=False):
    y = tf.nn.relu(self.bn2a(self.conv2a(x), training=training))
    y = tf.nn.relu(self.bn2b(self.conv2b(y), training=training))
    y = self.bn2c(self.conv2c(y), training=training)
    shortcut = x
    if self.projection:
      shortcut = self.bn_shortcut(self.conv_shortcut(x), training=training)
    return tf.nn.relu(y + shortcut)


class DelfResNet(keras.Model):
  """DELF's ResNet50 (include_top False, GeM, embedding layer, no average pooling)."""

  def __init__(
    self, depth=50, width_multiplier=1.0, block3_strides=True, embedding_dim=2048, gem_power=3.0
  ):
    super().__init__(name="backbone")
    self.block3_strides = block3_strides
    self.gem_power = gem_power
    scale = lambda w: max(1, round(w * width_multiplier))
    self.conv1 = layers.Conv2D(scale(64), 7, strides=2, padding="same")
    self.bn_conv1 = layers.BatchNormalization(axis=3)
    self.max_pool = layers.MaxPooling2D(3, strides=2)
    self.block_names = []
    for stage_index, num_blocks in enumerate(backbones.STAGE_BLOCKS[depth]):
      width = scale(backbones.STAGE_WIDTHS[stage_index])
      strides = 1 if stage_index == 0 or (stage_index == 3 and block3_strides) else 2
      for block_index in range(num_blocks):
        name = bottlenecks.delf_block_name(stage_index, block_index)
        first = block_index == 0
        block = _Block((width, 4 * width), strides if first else 1, projection=first)
        setattr(self, name, block)
        self.block_names.append((stage_index, name))
    if block3_strides:
      self.subsampling_layer = layers.MaxPooling2D(1, strides=2)
    self.embedding_layer = layers.Dense(embedding_dim)

  def build_call(self, images, training=False, intermediates=None):
    x = tf.nn.relu(self.bn_conv1(self.conv1(images), training=training))
    x = self.max_pool(x)
    for index, (stage_index, name) in enumerate(self.block_names):
      x = getattr(self, name)(x, training=training)
      last_of_stage = index + 1 == len(self.block_names) or (
        self.block_names[index + 1][0] != stage_index
      )
      if last_of_stage and stage_index == 2:
        if self.block3_strides:
          x = self.subsampling_layer(x)
        intermediates["block3"] = x
    intermediates["block4"] = x
    pooled = tf.pow(
      tf.reduce_mean(tf.pow(tf.maximum(x, 1e-6), self.gem_power), axis=[1, 2]),
      1.0 / self.gem_power,
    )
    return self.embedding_layer(pooled)

  def call(self, images, training=False):
    return self.build_call(images, training, {})


class DelfAttention(keras.Model):
  """DELF's AttentionModel: conv1 (attn_conv1) + bn_conv1 + ReLU, conv2 + softplus."""

  def __init__(self, hidden=512):
    super().__init__(name="attention")
    self.conv1 = layers.Conv2D(hidden, 1, padding="same", name="attn_conv1")
    self.bn_conv1 = layers.BatchNormalization(axis=3, name="bn_conv1")
    self.conv2 = layers.Conv2D(1, 1, padding="same", name="attn_conv2")
    self.activation_layer = layers.Activation("softplus")

  def call(self, inputs, targets=None, training=False):
    x = tf.nn.relu(self.bn_conv1(self.conv1(inputs), training=training))
    score = self.conv2(x)
    prob = self.activation_layer(score)
    targets = inputs if targets is None else targets
    targets = tf.nn.l2_normalize(targets, axis=-1)
    return tf.reduce_mean(targets * prob, [1, 2]), prob, score


class DelfAutoencoder(keras.Model):
  """DELF's AutoencoderModel: conv1 (autoenc_conv1, linear), conv2 (autoenc_conv2, ReLU)."""

  def __init__(self, reduced_dim, channels):
    super().__init__(name="autoencoder")
    self.conv1 = layers.Conv2D(reduced_dim, 1, padding="same", name="autoenc_conv1")
    self.conv2 = layers.Conv2D(channels, 1, activation="relu", padding="same", name="autoenc_conv2")

  def call(self, inputs):
    reduced = self.conv1(inputs)
    return self.conv2(reduced), reduced


class DelfDelg(keras.Model):
  """DELF's Delg with use_dim_reduction, after init_classifiers(num_classes)."""

  def __init__(
    self,
    depth=50,
    width_multiplier=1.0,
    block3_strides=True,
    embedding_dim=2048,
    reduced_dim=128,
    attention_hidden=512,
    num_classes=None,
    scale_factor=45.25,
  ):
    super().__init__(name="DELG")
    self.backbone = DelfResNet(depth, width_multiplier, block3_strides, embedding_dim)
    self.attention = DelfAttention(attention_hidden)
    f3_channels = 4 * max(1, round(256 * width_multiplier))
    self.autoencoder = DelfAutoencoder(reduced_dim, f3_channels)
    self.num_classes = num_classes
    if num_classes:
      self.cosine_weights = tf.Variable(
        keras.initializers.GlorotUniform()([embedding_dim, num_classes]),
        name="cosine_weights",
      )
      self.scale_factor = tf.Variable(scale_factor, name="scale_factor", trainable=False)
      self.attn_classification = layers.Dense(num_classes, name="att_fc")

  def forward(self, images, training=False):
    """DELF's global_and_local_forward_pass, returning a dict of its tensors."""
    blocks = {}
    global_feature = self.backbone.build_call(images, training, blocks)
    block3 = tf.stop_gradient(blocks["block3"])
    expanded, reduced = self.autoencoder(block3)
    prelogits, probabilities, scores = self.attention(block3, targets=expanded, training=training)
    return dict(
      f3=blocks["block3"],
      f4=blocks["block4"],
      global_embedding=global_feature,
      attention=probabilities,
      attention_scores=scores,
      reduced_features=reduced,
      reconstructed_features=expanded,
      attention_prelogits=prelogits,
    )

  def call(self, images, training=False):
    outputs = self.forward(images, training)
    if self.num_classes:
      self.attn_classification(outputs["attention_prelogits"])
    return outputs["attention"], outputs["reduced_features"]


def build(model, image_size=64):
  """Creates the weights of `model` (a DelfDelg) by one call."""
  model(tf.zeros([1, image_size, image_size, 3]))
  return model


def randomize(model, seed=0):
  """Random weights everywhere, BatchNorm gamma/beta/moving statistics included.

  BatchNorm statistics are drawn so activations neither vanish nor explode.
  """
  rng = np.random.default_rng(seed)
  if not model.built:
    build(model)
  for layer in model._flatten_layers(include_self=False, recursive=True):
    if isinstance(layer, layers.BatchNormalization):
      channels = layer.gamma.shape[0]
      layer.gamma.assign(rng.uniform(0.3, 0.8, channels).astype(np.float32))
      layer.beta.assign(rng.normal(0.0, 0.1, channels).astype(np.float32))
      layer.moving_mean.assign(rng.normal(0.0, 0.1, channels).astype(np.float32))
      layer.moving_variance.assign(rng.uniform(0.5, 2.0, channels).astype(np.float32))
    elif isinstance(layer, layers.Conv2D | layers.Dense):
      fan_in = int(np.prod(layer.kernel.shape[:-1]))
      layer.kernel.assign(
        rng.normal(0.0, np.sqrt(2.0 / fan_in), layer.kernel.shape).astype(np.float32)
      )
      layer.bias.assign(rng.normal(0.0, 0.05, layer.bias.shape).astype(np.float32))
  if hasattr(model, "cosine_weights"):  # a bare tf.Variable: Keras' initializer is unseeded
    shape = model.cosine_weights.shape
    model.cosine_weights.assign(rng.normal(0.0, 1.0, shape).astype(np.float32))
  return model


def save_delf_checkpoint(model, logdir, save_weights=False):
  """Saves like DELF's train.py; returns the checkpoint prefix.

  tf.train.Checkpoint(optimizer=SGD(momentum 0.9), model=model) through a
  CheckpointManager in `<logdir>/delf_tf2-ckpt` (one zero step first, so the
  optimizer's slot variables exist as in a training checkpoint). With
  `save_weights`, also `model.save_weights(<logdir>/delf_weights)` as train.py.
  """
  optimizer = keras.optimizers.SGD(learning_rate=0.0, momentum=0.9)
  variables = model.trainable_variables
  optimizer.apply_gradients(zip([tf.zeros_like(v) for v in variables], variables))
  checkpoint = tf.train.Checkpoint(optimizer=optimizer, model=model)
  manager = tf.train.CheckpointManager(
    checkpoint, os.path.join(logdir, CHECKPOINT_SUBDIR), max_to_keep=3
  )
  prefix = manager.save()
  if save_weights:
    model.save_weights(os.path.join(logdir, "delf_weights"), save_format="tf")
  return prefix


def reference_outputs(model, images):
  """DELF's tensors for normalised float images ((pixels - 128) / 128), inference mode.

  Returns:
    A dict of numpy arrays: f3 (block3, after the subsampling), f4 (block4),
    global_embedding (GeM + whitening, before L2), attention (probabilities),
    attention_scores, reduced_features, reconstructed_features,
    attention_prelogits.
  """
  outputs = model.forward(tf.convert_to_tensor(images, tf.float32), training=False)
  return {k: v.numpy() for k, v in outputs.items()}
