"""A PyTorch DOLG with the official code's module structure and key names (needs torch).

Written from the structure and state-dict keys of the official DOLG code (pycls
ResNet, SpatialAttention2d with optional ASPP, GeM, orthogonal fusion, the
CurricularFace head's weight); used by tests/official_dolg_test.py (converter
equality), benchmarks/training_benchmark.py (the official training step) and
tests/training_parity_test.py (the official head's margin logits and the
training step: `model.train()(x, targets)["logits"]`).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def torch_dolg(
  blocks, dilations=None, learnable_p=True, num_classes=0, seed=0, scale=30.0, margin=0.15
):
  """A DOLG PyTorch model with the official module structure and key names, in eval mode.

  With `num_classes`, `desc_cls` is the official `Arcface` head (a
  CurricularFace: `scale`, `margin`, the `t` buffer) and `model(x, targets)`
  adds its margin logits as "logits".
  """

  def conv(c_in, c_out, k, stride=1, padding=0, dilation=1, bias=False):
    return nn.Conv2d(c_in, c_out, k, stride, padding, dilation=dilation, bias=bias)

  class Transform(nn.Module):  # pycls BottleneckTransform: stride on the 3x3.
    def __init__(self, w_in, w_out, w_b, stride):
      super().__init__()
      self.a, self.a_bn = conv(w_in, w_b, 1), nn.BatchNorm2d(w_b)
      self.b, self.b_bn = conv(w_b, w_b, 3, stride, 1), nn.BatchNorm2d(w_b)
      self.c, self.c_bn = conv(w_b, w_out, 1), nn.BatchNorm2d(w_out)

    def forward(self, x):
      x = F.relu(self.a_bn(self.a(x)))
      x = F.relu(self.b_bn(self.b(x)))
      return self.c_bn(self.c(x))

  class Block(nn.Module):  # pycls ResBlock.
    def __init__(self, w_in, w_out, w_b, stride):
      super().__init__()
      self.proj_block = w_in != w_out or stride != 1
      if self.proj_block:
        self.proj, self.bn = conv(w_in, w_out, 1, stride), nn.BatchNorm2d(w_out)
      self.f = Transform(w_in, w_out, w_b, stride)

    def forward(self, x):
      shortcut = self.bn(self.proj(x)) if self.proj_block else x
      return F.relu(shortcut + self.f(x))

  class Stem(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv, self.bn = conv(3, 64, 7, 2, 3), nn.BatchNorm2d(64)

    def forward(self, x):
      return F.max_pool2d(F.relu(self.bn(self.conv(x))), 3, 2, 1)

  class ResNet(nn.Module):
    def __init__(self):
      super().__init__()
      self.stem = Stem()
      w_in = 64
      for k, (d, w_b) in enumerate(zip(blocks, (64, 128, 256, 512))):
        stage = nn.Module()
        for i in range(d):
          stride = 2 if k > 0 and i == 0 else 1
          stage.add_module(f"b{i + 1}", Block(w_in, 4 * w_b, w_b, stride))
          w_in = 4 * w_b
        self.add_module(f"s{k + 1}", stage)

    def forward(self, x):
      x = self.stem(x)
      outputs = []
      for k in range(4):
        for block in getattr(self, f"s{k + 1}").children():
          x = block(x)
        outputs.append(x)
      return outputs[2], outputs[3]

  class ASPP(nn.Module):
    def __init__(self, c_in):
      super().__init__()
      self.aspp = nn.ModuleList(
        [conv(c_in, 512, 1, bias=True)]
        + [conv(c_in, 512, 3, 1, d, d, bias=True) for d in dilations]
      )
      self.im_pool = nn.Sequential(
        nn.AdaptiveAvgPool2d(1), conv(c_in, 512, 1, bias=True), nn.ReLU()
      )
      self.conv_after = nn.Sequential(
        conv(512 * (len(dilations) + 2), 1024, 1, bias=True), nn.ReLU()
      )

    def forward(self, x):
      h, w = x.shape[2:]
      pooled = F.interpolate(self.im_pool(x), size=(h, w), mode="bilinear", align_corners=False)
      return self.conv_after(torch.cat([pooled] + [branch(x) for branch in self.aspp], 1))

  class SpatialAttention2d(nn.Module):
    def __init__(self, c_in):
      super().__init__()
      if dilations:
        self.aspp = ASPP(c_in)
      self.conv1, self.bn = conv(c_in, 1024, 1, bias=True), nn.BatchNorm2d(1024)
      self.conv2 = conv(1024, 1, 1, bias=True)

    def forward(self, x):
      if dilations:
        x = self.aspp(x)
      x = self.bn(self.conv1(x))
      normalised = F.normalize(x, p=2, dim=1)
      attention = F.softplus(self.conv2(F.relu(x)))
      return attention * normalised, attention

  class GeM(nn.Module):
    def __init__(self):
      super().__init__()
      self.p = nn.Parameter(torch.ones(1) * 3.0) if learnable_p else 3.0

    def forward(self, x):
      return F.adaptive_avg_pool2d(x.clamp(min=1e-6).pow(self.p), 1).pow(1.0 / self.p)

  class CurricularHead(nn.Module):
    def __init__(self):
      super().__init__()
      self.weight = nn.Parameter(torch.randn(num_classes, 512))
      self.register_buffer("t", torch.full([1], 0.3))

    def forward(self, features, targets):
      # The official Arcface.forward, step by step (t is updated before its use).
      cos_theta = F.linear(F.normalize(features), F.normalize(self.weight)).clamp(-1, 1)
      target_logit = cos_theta[torch.arange(0, features.size(0)), targets].view(-1, 1)
      sin_theta = torch.sqrt(1.0 - torch.pow(target_logit, 2))
      cos_theta_m = target_logit * math.cos(margin) - sin_theta * math.sin(margin)
      mask = cos_theta > cos_theta_m
      final_target_logit = torch.where(
        target_logit > math.cos(math.pi - margin),
        cos_theta_m,
        target_logit - math.sin(math.pi - margin) * margin,
      )
      hard_example = cos_theta[mask]
      with torch.no_grad():
        self.t = target_logit.mean() * 0.01 + (1 - 0.01) * self.t
      cos_theta[mask] = hard_example * (self.t + hard_example)
      cos_theta.scatter_(1, targets.view(-1, 1).long(), final_target_logit)
      return cos_theta * scale

  class DOLG(nn.Module):
    def __init__(self):
      super().__init__()
      self.pool_l = nn.AdaptiveAvgPool2d((1, 1))
      self.pool_g = GeM()
      self.fc_t = nn.Linear(2048, 1024)
      self.fc = nn.Linear(2048, 512)
      self.globalmodel = ResNet()
      self.localmodel = SpatialAttention2d(1024)
      if num_classes:
        self.desc_cls = CurricularHead()

    def forward(self, x, targets=None):
      f3, f4 = self.globalmodel(x)
      fl, _ = self.localmodel(f3)
      fg = self.fc_t(self.pool_g(f4).flatten(1))
      fg_norm = torch.norm(fg, p=2, dim=1)
      proj = torch.bmm(fg.unsqueeze(1), torch.flatten(fl, start_dim=2))
      proj = torch.bmm(fg.unsqueeze(2), proj).view(fl.size())
      proj = proj / (fg_norm * fg_norm).view(-1, 1, 1, 1)
      fo = self.pool_l(fl - proj).flatten(1)
      embedding = self.fc(torch.cat((fg, fo), 1))
      outputs = dict(f3=f3, f4=f4, f_g=fg, f_l=fl, descriptor=F.normalize(embedding, p=2, dim=1))
      outputs["embedding"] = embedding
      if targets is not None:
        outputs["logits"] = self.desc_cls(embedding, targets)
      return outputs

  torch.manual_seed(seed)
  model = DOLG()
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.2)
        module.running_mean.normal_(0.0, 0.2)
        module.running_var.uniform_(0.5, 2.0)
      elif isinstance(module, nn.Conv2d) and module.bias is None:  # backbone: pycls init.
        module.weight.normal_(
          0.0, (2.0 / (module.kernel_size[0] ** 2 * module.out_channels)) ** 0.5
        )
    if learnable_p:
      model.pool_g.p.fill_(2.7)
  return model.eval()
