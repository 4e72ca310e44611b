"""native_logs: native code's INFO lines on stderr held back, everything else kept."""

import subprocess
import sys

import tensorflow as tf
from absl.testing import parameterized

from dolg_tf.utils import native_logs

PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_WRITER = r"""
import os, sys
from dolg_tf.utils import native_logs
print("before", file=sys.stderr, flush=True)
with native_logs.quiet_native_info():
  os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written\n")
  os.write(2, b"I0000 00:00:1796540599.695273   31947 partitioner_factory.cc:58] sampled 3000\n")
  os.write(2, b"W0000 00:00:1796540599.700733   31947 scann.cc:90] a real warning\n")
  print("I1206 07:00:47.824779 140317 progress.py:143] python info", file=sys.stderr)
after = "after"
print(after, file=sys.stderr, flush=True)
"""


class NativeLogsTest(tf.test.TestCase, parameterized.TestCase):
  @parameterized.parameters(
    ("I0000 00:00:1796540599.695273   31947 partitioner_factory_base.cc:58] x\n", True),
    ("I1206 07:00:47.824779 140317 kmeans_tree_partitioner_utils.h:90] x\n", True),
    (PREAMBLE + "\n", True),
    ("W0000 00:00:1796540599.695273   31947 partitioner_factory_base.cc:58] x\n", False),
    ("E0000 00:00:1796540599.695273   31947 scann.cc:1] x\n", False),
    ("I1206 07:00:47.824779 140317078600576 progress.py:143] step 480/600\n", False),
    ("train: error: --logdir: no run folder\n", False),
  )
  def test_is_native_info(self, line, expected):
    self.assertEqual(native_logs.is_native_info(line), expected)

  def _stderr(self, *args):
    result = subprocess.run(
      [sys.executable, "-c", _WRITER, *args], capture_output=True, text=True, timeout=120
    )
    self.assertEqual(result.returncode, 0, result.stderr)
    return result.stderr.splitlines()

  def test_native_info_held_back_the_rest_kept_in_order(self):
    self.assertEqual(
      self._stderr(),
      [
        "before",
        "W0000 00:00:1796540599.700733   31947 scann.cc:90] a real warning",
        "I1206 07:00:47.824779 140317 progress.py:143] python info",
        "after",
      ],
    )

  def test_verbose_shows_everything(self):
    self.assertLen(self._stderr("--verbose"), 6)


if __name__ == "__main__":
  tf.test.main()
