"""What this machine's CPU can do natively (read once from /proc/cpuinfo)."""

import functools

# /proc/cpuinfo flags of native bfloat16 arithmetic (AVX512_BF16 dot products, AMX tiles).
BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
  """The CPU's feature flags (empty where the file does not exist, e.g. macOS)."""
  try:
    with open(path) as f:
      for line in f:
        if line.startswith("flags"):
          return frozenset(line.split(":", 1)[1].split())
  except OSError:
    pass
  return frozenset()


def has_native_bfloat16(path: str = "/proc/cpuinfo") -> bool:
  """True when the CPU computes bfloat16 natively (AVX512_BF16 or AMX-BF16)."""
  return any(flag in cpu_flags(path) for flag in BFLOAT16_FLAGS)


def resolve_auto(value: str, bfloat16: str, float32: str = "float32") -> str:
  """`value`, or for "auto" `bfloat16` on CPUs with native bfloat16 and `float32` elsewhere."""
  if value != "auto":
    return value
  return bfloat16 if has_native_bfloat16() else float32
