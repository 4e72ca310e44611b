"""DELG: one network with a GeM global head and an attentive local head.

Cao, Araujo, Sim (ECCV 2020), as the DELF code base's DELG model
(tensorflow/models research/delf, training/model/delg_model.py); with the
default config (DELG_MODEL: 'delf' backbone layout, block3_strides) the
network is DELF's, and `dolg_tf.convert.delf_checkpoint` imports its TF2
training checkpoints:

- global: GeM (p fixed, 3) on stage 4 -> Dense whitening (2048, bias) -> L2;
  trained with ArcFace (s = 45.25, m = 0.1) on the un-normalised whitened vector.
- local, on `tf.stop_gradient(stage 3)`: an autoencoder (1x1 conv to 128,
  linear; 1x1 conv back to 1024, ReLU) and an attention network (1x1 conv 512 +
  BN + ReLU, 1x1 conv 1 + softplus). The attention-weighted mean of the
  L2-normalised reconstructed features feeds an attention classifier.

Training uses `call(..., return_intermediates=True)`; inference returns the
L2-normalised global descriptor like DolgModel. The local branch's receptive
fields (for keypoint locations) are in `receptive_field()`.
"""

import tensorflow as tf

from dolg_tf import config as config_lib
from dolg_tf.keras_api import keras
from dolg_tf.model import backbones, base, normalization, pooling, superglobal

INTERMEDIATES = (
  "f3",
  "f4",
  "global_embedding",
  "descriptor",
  "attention",
  "attention_scores",
  "reduced_features",
  "reconstructed_features",
  "attention_prelogits",
)


class DelgAutoencoder(keras.layers.Layer):
  """1x1 conv to `reduced_dim` (linear) and back to `channels` (ReLU)."""

  def __init__(self, reduced_dim=128, channels=1024, **kwargs):
    super().__init__(**kwargs)
    self.reduced_dim = reduced_dim
    self.channels = channels
    self.reduce = keras.layers.Conv2D(reduced_dim, 1, name="autoenc_conv1")
    self.expand = keras.layers.Conv2D(channels, 1, activation="relu", name="autoenc_conv2")

  def call(self, x):
    reduced = self.reduce(x)
    return self.expand(reduced), reduced

  def get_config(self):
    config = super().get_config()
    config.update(reduced_dim=self.reduced_dim, channels=self.channels)
    return config


class DelgAttention(keras.layers.Layer):
  """DELF attention: scores, probabilities and attention-pooled features.

  prob = softplus(conv(ReLU(BN(conv(x))))); pooled = mean(l2n(targets) * prob).
  """

  def __init__(self, hidden=512, bn_momentum=0.99, bn_epsilon=1e-3, **kwargs):
    super().__init__(**kwargs)
    self.hidden = hidden
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.conv1 = keras.layers.Conv2D(hidden, 1, name="attn_conv1")
    self.bn = keras.layers.BatchNormalization(
      momentum=bn_momentum, epsilon=bn_epsilon, name="bn_conv1"
    )
    self.conv2 = keras.layers.Conv2D(1, 1, name="attn_conv2")

  def call(self, x, targets=None, training=None):
    hidden = tf.nn.relu(self.bn(self.conv1(x), training=training))
    scores = tf.cast(self.conv2(hidden), tf.float32)
    probabilities = tf.math.softplus(scores)
    targets = x if targets is None else targets
    normalized = normalization.l2_normalize(targets, axis=-1)
    pooled = tf.reduce_mean(normalized * probabilities, axis=[1, 2])
    return pooled, probabilities, scores

  def get_config(self):
    config = super().get_config()
    config.update(hidden=self.hidden, bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon)
    return config


class DelgModel(base.RetrievalModel):
  """Images -> DELG global descriptors (and local features on request)."""

  def __init__(self, config: config_lib.ModelConfig, num_classes=None, **kwargs):
    """Builds the network; `num_classes` adds the attention classifier (training)."""
    super().__init__(config, **kwargs)
    self.num_classes = num_classes
    f3_channels = self.backbone.output_channels[0]
    self.pool = pooling.GeMPooling(config.gem_p, config.gem_p_trainable, config.gem_eps, name="gem")
    self.whitening = keras.layers.Dense(
      config.embedding_dim, name="embedding_layer", dtype="float32"
    )
    self.autoencoder = DelgAutoencoder(config.delg_reduced_dim, f3_channels, name="autoencoder")
    self.attention = DelgAttention(config.delg_attention_hidden, name="attention")
    # The attention classifier exists only when training (num_classes known).
    self.attention_classifier = (
      keras.layers.Dense(num_classes, name="attention_fc", dtype="float32") if num_classes else None
    )

  def call(self, images, training=None, return_intermediates=False, test_time=None):
    """Computes descriptors (and, on request, the local-branch tensors).

    `test_time`: optional superglobal.TestTimeOptions (GeM+, Regional-GeM).

    Returns:
      L2-normalised global descriptors [B, embedding_dim], or a dict with the
      keys of `INTERMEDIATES` (+ "attention_logits" when the classifier exists).
    """
    f3, f4 = self.features(images, training=training)
    f4 = superglobal.apply_regional_gem(f4, test_time)
    pooled = self.pool(f4, p=superglobal.gem_plus_p(test_time))
    global_embedding = self.whitening(pooled)
    descriptor = normalization.l2_normalize(global_embedding, axis=-1)
    if not return_intermediates:
      return descriptor
    # The local head must not change the backbone: DELG trains it on stopped features.
    local_input = tf.stop_gradient(f3)
    reconstructed, reduced = self.autoencoder(local_input)
    prelogits, probabilities, scores = self.attention(
      local_input, targets=reconstructed, training=training
    )
    outputs = dict(
      f3=f3,
      f4=f4,
      global_embedding=global_embedding,
      descriptor=descriptor,
      attention=probabilities,
      attention_scores=scores,
      reduced_features=reduced,
      reconstructed_features=reconstructed,
      attention_prelogits=prelogits,
    )
    outputs = {k: tf.cast(v, tf.float32) for k, v in outputs.items()}
    if self.attention_classifier is not None:
      outputs["attention_logits"] = self.attention_classifier(prelogits)
    return outputs

  def receptive_field(self):
    """(size, stride, padding) of a local feature in input pixels.

    DELF's R50 with block3_strides (the default): (291, 32, 145); without: (291, 16, 145).
    keras.applications backbones: their convolutions' field (KerasAppBackbone.receptive_field).
    """
    config = self.model_config
    if config.backbone != "resnet":
      return self.backbone.receptive_field()
    return backbones.stage3_receptive_field(
      config.backbone_depth, config.backbone_layout, config.block3_strides
    )

  def get_config(self):
    return dict(super().get_config(), num_classes=self.num_classes)
