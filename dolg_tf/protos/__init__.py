"""Generated protocol buffer modules (from ../../protos/*.proto) and the shipped configs.

The `*_pb2.py` modules and copies of `protos/*.pbtxt` are written here by the
package build (setup.py: `pip install .`, `pip install -e .`) or by Bazel's
genrules; neither is kept in git.
"""

import os

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))


def shipped_config_path(name: str) -> str:
  """Path of a shipped extraction config, e.g. 'dolg' -> .../dolg_tf/protos/dolg.pbtxt."""
  return os.path.join(CONFIG_DIR, f"{name}.pbtxt")
