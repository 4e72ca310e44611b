"""Tests for dolg_tf.utils.progress (the one progress/ETA logger)."""

import math
from unittest import mock

import tensorflow as tf

from dolg_tf.utils import progress as progress_lib


class FakeClock:
  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


class FormatDurationTest(tf.test.TestCase):
  def test_formats(self):
    self.assertEqual(
      [progress_lib.format_duration(s) for s in (3.4, 123, 3723)], ["3s", "2m03s", "1h02m03s"]
    )
    self.assertEqual(progress_lib.format_duration(0), "0s")
    self.assertEqual(progress_lib.format_duration(-5), "0s")
    self.assertEqual(progress_lib.format_duration(math.inf), "?")
    self.assertEqual(progress_lib.format_duration(283.4), "4m43s")


class ProgressTest(tf.test.TestCase):
  def setUp(self):
    super().setUp()
    self.clock = FakeClock()
    patcher = mock.patch.object(progress_lib.logging, "info")
    self.info = patcher.start()
    self.addCleanup(patcher.stop)

  def _lines(self):
    return [call.args[0] % call.args[1:] for call in self.info.call_args_list]

  def test_line_with_counters_rate_and_eta(self):
    progress = progress_lib.Progress(1000, "extracted", "img", interval=30, clock=self.clock)
    self.clock.now += 40.0
    # 120 written + 4 failed in 40 s: 3.1 img/s; 876 left -> 282.6 s.
    self.assertTrue(progress.update(120, processed=124, failed=4, skipped=30))
    self.assertEqual(
      self._lines(), ["extracted 120/1000 (failed 4, skipped 30), 3.1 img/s, ETA 4m43s"]
    )
    self.assertAllClose(progress.rate(), 3.1)
    self.assertAllClose(progress.eta_seconds(), 876 / 3.1)

  def test_interval_and_force(self):
    progress = progress_lib.Progress(10, "converted", "img", interval=30, clock=self.clock)
    self.clock.now += 10.0
    self.assertFalse(progress.update(1))
    self.clock.now += 25.0  # 35 s since the start
    self.assertTrue(progress.update(2))
    self.clock.now += 5.0
    self.assertFalse(progress.update(3))
    self.assertTrue(progress.update(3, force=True))
    self.assertLen(self._lines(), 2)
    self.assertEqual(progress.done, 3)
    every = progress_lib.Progress(10, interval=0, clock=self.clock)
    self.assertTrue(every.update(1))
    self.assertTrue(every.update(2))

  def test_before_any_item_and_when_finished(self):
    progress = progress_lib.Progress(5, "extracted", "img", clock=self.clock)
    self.assertEqual(progress.rate(), 0.0)
    self.assertEqual(progress.eta_seconds(), math.inf)
    self.assertEqual(progress.message(), "extracted 0/5, 0 img/s, ETA ?")
    self.clock.now += 2.0
    progress.update(5, force=True)
    self.assertEqual(progress.eta_seconds(), 0.0)
    self.assertEqual(self._lines(), ["extracted 5/5, 2.5 img/s, ETA 0s"])
    empty = progress_lib.Progress(0, "converted", "img", clock=self.clock)
    empty.update(0, force=True, failed=0)
    self.assertEqual(self._lines()[-1], "converted 0/0 (failed 0), 0 img/s, ETA 0s")

  def test_training_loop_resumed_with_a_note(self):
    # Resumed at step 100 of 1000: the rate counts only this run's steps.
    progress = progress_lib.Progress(1000, "step", "steps", interval=0, start=100, clock=self.clock)
    self.clock.now += 50.0
    progress.update(200, note="loss 0.1234")
    self.assertEqual(self._lines(), ["step 200/1000, 2.0 steps/s, ETA 6m40s | loss 0.1234"])
    self.assertAllClose(progress.rate() * 32, 64.0)  # img/s for a batch of 32
    self.assertAllClose(progress.elapsed(), 50.0)

  def test_slow_rates_keep_significant_digits(self):
    progress = progress_lib.Progress(100, "extracted", "img", clock=self.clock)
    self.clock.now += 300.0
    progress.update(7, force=True)
    self.assertIn("0.0233 img/s", self._lines()[0])


if __name__ == "__main__":
  tf.test.main()
