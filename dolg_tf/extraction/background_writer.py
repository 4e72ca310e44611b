"""The background thread of an extraction run that writes descriptors as the model makes them.

    writer = BackgroundWriter(descriptor_files.PerImageWriter(out, suffix), on_written, on_lost)
    writer.start()
    writer.put((task, descriptor))   # raises the writer's error, if it stopped
    writer.close()                   # writes what is queued, flushes, joins

A write error of one image (`on_lost` is called with the tasks whose output
is lost: the image, or a shard buffer's images) does not stop the thread;
an error about the whole output folder (disk full, read-only, permission
denied: `is_stop`), or one of the callbacks (e.g. a failures file that cannot
be written), ends it, and `put`, `check` and `close` raise it in the calling
thread, so the writer never dies silently.
"""

import queue
import threading
from collections.abc import Callable

from dolg_tf.extraction import output_folder


def is_stop(error: BaseException) -> bool:
  """Whether `error` concerns the whole output folder (the run stops) rather than one image."""
  return (
    isinstance(error, output_folder.OutputError) or output_folder.folder_errno(error) is not None
  )


class BackgroundWriter:
  """Writes (task, result) items with a descriptor writer on its own thread."""

  def __init__(
    self,
    writer,
    on_written: Callable[[list[str]], None],
    on_lost: Callable[[list, BaseException], None],
    queue_size: int = 16,
  ):
    """Args:
    writer: has `write(image_id, result) -> ids written` and `flush() -> ids`
      (descriptor_files.PerImageWriter / ShardWriter, local_extractor.LocalGlobalWriter).
    on_written: called with the ids written (this thread).
    on_lost: called with the tasks whose output a failed write lost, and the error.
    queue_size: items queued at most.
    """
    self._writer = writer
    self._on_written = on_written
    self._on_lost = on_lost
    self._queue = queue.Queue(maxsize=queue_size)
    self._lock = threading.Lock()
    self._pending = {}  # id -> task, buffered by the writer and not yet written
    self._error = []
    self._thread = threading.Thread(target=self._loop, name="descriptor-writer", daemon=True)

  def start(self) -> None:
    self._thread.start()

  def check(self) -> None:
    """Raises the error that ended the thread, if any."""
    if self._error:
      raise self._error[0]

  def put(self, item) -> None:
    """Queues (task, result), waiting for room; raises the thread's error if it stopped."""
    while True:
      self.check()
      try:
        self._queue.put(item, timeout=0.2)
        return
      except queue.Full:
        pass

  def close(self) -> None:
    """Lets the thread write what is queued and flush, and waits for it (no error raised)."""
    while self._thread.is_alive():
      try:
        self._queue.put(None, timeout=0.2)
        break
      except queue.Full:
        pass
    self._thread.join()

  def _written(self, written: list[str]) -> None:
    with self._lock:
      for image_id in written:
        self._pending.pop(image_id, None)
    self._on_written(written)

  def _lost(self, error: BaseException) -> None:
    with self._lock:
      lost = list(self._pending.values())
      self._pending.clear()
    self._on_lost(lost, error)

  def _call(self, write: Callable[[], list[str]]) -> None:
    """Runs one write; an image's error loses its output, a folder's error ends the thread."""
    try:
      written = write()
    except Exception as e:  # pylint: disable=broad-except
      if is_stop(e):
        raise  # Disk full, read-only...: no later write can succeed.
      self._lost(e)  # This image (or shard) only; the run goes on.
      return
    self._written(written)

  def _loop(self) -> None:
    try:
      while True:
        item = self._queue.get()
        if item is None:
          break
        task, result = item
        with self._lock:
          self._pending[task.image_id] = task
        self._call(lambda t=task, r=result: self._writer.write(t.image_id, r))
      self._call(self._writer.flush)
    except BaseException as e:  # pylint: disable=broad-except
      self._error.append(e)  # re-raised by the calling thread
