"""Build hook of the dolg_tf distribution (metadata lives in pyproject.toml).

Before the Python files are collected, `protos/*.proto` are compiled into
`dolg_tf/protos/*_pb2.py` (grpc_tools.protoc from the build requirements, or
the system `protoc`) and the shipped `protos/*.pbtxt` configs are copied next
to them, so an installed dolg_tf carries both. The same step runs for
`pip install .`, `pip install -e .` and `python -m build`.
"""

import glob
import os
import shutil
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = "protos"
PACKAGE_PROTO_DIR = os.path.join("dolg_tf", "protos")


def _protoc_command() -> list[str]:
  try:
    import grpc_tools.protoc  # noqa: F401,PLC0415 (build requirement; a system protoc also works)

    return [sys.executable, "-m", "grpc_tools.protoc"]
  except ImportError:
    if shutil.which("protoc"):
      return ["protoc"]
    raise RuntimeError("building dolg_tf needs grpcio-tools or a protoc binary") from None


def generate_protos() -> None:
  """Compiles protos/*.proto into dolg_tf/protos and copies the shipped .pbtxt configs."""
  protos = sorted(glob.glob(os.path.join(ROOT, PROTO_DIR, "*.proto")))
  outputs = [
    os.path.join(ROOT, PACKAGE_PROTO_DIR, os.path.basename(p)[: -len(".proto")] + "_pb2.py")
    for p in protos
  ]
  if any(
    not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(p)
    for p, out in zip(protos, outputs)
  ):
    command = _protoc_command() + [
      f"--proto_path={PACKAGE_PROTO_DIR}={PROTO_DIR}",
      "--python_out=.",
    ]
    subprocess.run(command + [os.path.relpath(p, ROOT) for p in protos], cwd=ROOT, check=True)
  for config in glob.glob(os.path.join(ROOT, PROTO_DIR, "*.pbtxt")):
    shutil.copyfile(config, os.path.join(ROOT, PACKAGE_PROTO_DIR, os.path.basename(config)))


class BuildPyWithProtos(build_py):
  def run(self):
    generate_protos()
    super().run()


if __name__ == "__main__":
  setup(cmdclass={"build_py": BuildPyWithProtos})
