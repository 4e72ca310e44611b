"""Build hook of the dolg_tf distribution (metadata lives in pyproject.toml).

Before the Python files are collected, `protos/*.proto` are compiled into
`dolg_tf/protos/*_pb2.py` and the shipped `protos/*.pbtxt` configs are copied
next to them, so an installed dolg_tf carries both. The same step runs for
`pip install .`, `pip install -e .` and `python -m build`.

protoc (grpc_tools.protoc from the build requirements, or the system `protoc`)
only parses the .proto files into a descriptor set; the modules are written
here in the form protoc 25 emits, without the runtime-version check that
protoc >= 26 adds. So the generated code loads on every protobuf runtime the
supported stacks have (4.25 on the design card's, 5 and 6 on the current one)
whichever grpcio-tools built it, and one source tree serves both stacks' venvs.
"""

import glob
import os
import shutil
import subprocess
import sys
import tempfile

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


def _module_source(file_proto) -> str:
  """A `_pb2` module for one FileDescriptorProto (protobuf's builder API, 3.20+)."""
  module = file_proto.name[: -len(".proto")].replace("/", ".") + "_pb2"
  imports = "".join(
    f"from {dep.rsplit('/', 1)[0].replace('/', '.')} import "
    f"{os.path.basename(dep)[: -len('.proto')]}_pb2  # noqa: F401 (registers {dep} first)\n"
    for dep in file_proto.dependency
  )
  serialized = file_proto.SerializeToString(deterministic=True)
  return (
    f"# Generated from {file_proto.name} by dolg_tf's setup.py. DO NOT EDIT.\n"
    f'"""Protocol buffer classes of {file_proto.name}."""\n\n'
    "from google.protobuf import descriptor_pool as _descriptor_pool\n"
    "from google.protobuf.internal import builder as _builder\n\n"
    f"{imports}\n"
    f"DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile({serialized!r})\n"
    "_builder.BuildMessageAndEnumDescriptors(DESCRIPTOR, globals())\n"
    f"_builder.BuildTopDescriptorsAndMessages(DESCRIPTOR, {module!r}, globals())\n"
  )


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
    from google.protobuf import descriptor_pb2  # noqa: PLC0415 (a build requirement)

    with tempfile.TemporaryDirectory() as tmp:
      descriptor_set = os.path.join(tmp, "protos.desc")
      command = _protoc_command() + [
        f"--proto_path={PACKAGE_PROTO_DIR}={PROTO_DIR}",
        f"--descriptor_set_out={descriptor_set}",
      ]
      subprocess.run(command + [os.path.relpath(p, ROOT) for p in protos], cwd=ROOT, check=True)
      with open(descriptor_set, "rb") as f:
        files = descriptor_pb2.FileDescriptorSet.FromString(f.read()).file
    for file_proto in files:
      out = os.path.join(ROOT, file_proto.name[: -len(".proto")] + "_pb2.py")
      with open(out + ".tmp", "w", encoding="utf-8") as f:
        f.write(_module_source(file_proto))
      os.replace(out + ".tmp", out)
  for config in glob.glob(os.path.join(ROOT, PROTO_DIR, "*.pbtxt")):
    shutil.copyfile(config, os.path.join(ROOT, PACKAGE_PROTO_DIR, os.path.basename(config)))


class BuildPyWithProtos(build_py):
  def run(self):
    generate_protos()
    super().run()


if __name__ == "__main__":
  setup(cmdclass={"build_py": BuildPyWithProtos})
