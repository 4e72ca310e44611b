"""What DOLG and DELG share: input normalisation, the backbone, their one config."""

from dolg_tf import config as config_lib
from dolg_tf.keras_api import keras
from dolg_tf.model import backbones, keras_app_backbones, normalization


class RetrievalModel(keras.Model):
  """Images -> (f3, f4) through the configured backbone; subclasses add the heads.

  The ModelConfig is the model's only copy of its settings (`get_config`
  returns it as a dict).
  """

  def __init__(self, config: config_lib.ModelConfig, **kwargs):
    kwargs.setdefault("name", config.name)
    super().__init__(**kwargs)
    self.model_config = config
    self.input_normalization = normalization.InputNormalization(
      *input_normalization(config), name="input_normalization"
    )
    self.backbone = build_backbone(config)

  def features(self, images, training=None):
    """Stage-3 and stage-4 maps (f3, f4) of float RGB images in [0, 255]."""
    return self.backbone(self.input_normalization(images), training=training)

  def get_config(self):
    return {"model_config": self.model_config.to_dict(), "name": self.name}

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    model_config = config_lib.ModelConfig.from_dict(config.pop("model_config"))
    return cls(model_config, **config)


def input_normalization(config: config_lib.ModelConfig) -> tuple:
  """(mean, std, channel order) the model applies to RGB pixels in [0, 255].

  The config's input_* fields for ResNets; a keras.applications backbone's
  own (keras_app_backbones.INPUT_NORMALIZATION, what its ImageNet weights expect).
  """
  if config.backbone == "resnet":
    return config.input_mean, config.input_std, config.input_channel_order
  mean, std = keras_app_backbones.INPUT_NORMALIZATION[keras_app_backbones.family(config.backbone)]
  return mean, std, "RGB"


def build_backbone(config: config_lib.ModelConfig) -> keras.layers.Layer:
  """The backbone of `config`: a ResNetBackbone or a keras_app_backbones.KerasAppBackbone."""
  if config.backbone != "resnet":
    return keras_app_backbones.KerasAppBackbone(
      config.backbone, config.block3_strides, name="backbone"
    )
  return backbones.ResNetBackbone(
    config.backbone_depth,
    config.backbone_layout,
    config.block3_strides,
    config.resolved_bn_momentum,
    config.resolved_bn_epsilon,
    config.backbone_width_multiplier,
    relu_up=config.relu_up,
    name="backbone",
  )
