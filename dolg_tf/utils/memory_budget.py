"""A byte budget shared by threads: memory in flight is bounded by bytes, not by item counts.

    budget = memory_budget.ByteBudget(2**30)
    ticket = budget.ticket()        # in submission order (one per item)
    ticket.acquire(estimate)        # in a worker: waits until `estimate` fits
    ticket.charge(result.nbytes)    # keep only what the result still holds
    ticket.release()                # once the consumer is done with it

Tickets are served in the order they were made (first come, first served),
so a large item is never starved by small ones, and a consumer that takes
items in submission order never waits for an item stuck behind later ones.
An item larger than the whole budget is refused at once (`TooLarge`), never
waited for; `close` wakes every waiter (they raise `Closed`), so a pool can
always be shut down.

Pure Python (threading only): no TensorFlow, nothing else of dolg_tf.
"""

import threading


class TooLarge(ValueError):
  """An item needs more bytes than the whole budget."""


class Closed(RuntimeError):
  """The budget was closed while an item waited for room (the run is ending)."""


class ByteBudget:
  """At most `capacity` bytes acquired at any time, granted in ticket order."""

  def __init__(self, capacity: int):
    """Raises ValueError if `capacity` is not positive."""
    if capacity < 1:
      raise ValueError(f"the byte budget must be positive, got {capacity}")
    self.capacity = int(capacity)
    self._cond = threading.Condition()
    self._used = 0
    self._issued = 0  # tickets made
    self._turn = 0  # the first ticket that has neither acquired nor given up its turn
    self._passed = set()  # later tickets that did
    self._head_need = None  # bytes the ticket whose turn it is waits for
    self._closed = False

  @property
  def used(self) -> int:
    """Bytes charged now."""
    with self._cond:
      return self._used

  def stalled(self) -> bool:
    """Whether the ticket whose turn it is waits for bytes others hold."""
    with self._cond:
      return self._head_need is not None and self._used + self._head_need > self.capacity

  def ticket(self) -> "Ticket":
    """A new ticket, served after every ticket made before it."""
    with self._cond:
      number = self._issued
      self._issued += 1
    return Ticket(self, number)

  def close(self) -> None:
    """Wakes every waiter; they raise Closed. Charges can still be released."""
    with self._cond:
      self._closed = True
      self._cond.notify_all()

  def _acquire(self, ticket: "Ticket", nbytes: int) -> None:
    with self._cond:
      if ticket.passed:
        raise RuntimeError("a ticket acquires at most once")
      if nbytes > self.capacity:
        self._pass(ticket)
        raise TooLarge(
          f"needs about {nbytes} bytes, more than the whole memory budget of {self.capacity} bytes"
        )
      while not self._closed:
        if self._turn == ticket.number:
          if self._used + nbytes <= self.capacity:
            break
          self._head_need = nbytes
        self._cond.wait()
      if self._turn == ticket.number:
        self._head_need = None
      if self._closed:
        self._pass(ticket)
        raise Closed("the memory budget was closed")
      self._used += nbytes
      ticket.held = nbytes
      self._pass(ticket)

  def _charge(self, ticket: "Ticket", nbytes: int) -> None:
    with self._cond:
      self._used += nbytes - ticket.held
      ticket.held = nbytes
      self._pass(ticket)

  def _pass(self, ticket: "Ticket") -> None:
    """`ticket` has its bytes or gave up its turn: the next one may go (lock held)."""
    if not ticket.passed:
      ticket.passed = True
      self._passed.add(ticket.number)
      while self._turn in self._passed:
        self._passed.discard(self._turn)
        self._turn += 1
    self._cond.notify_all()


class Ticket:
  """One item's place in a ByteBudget and the bytes it holds.

  Attributes:
    number: its place in the order of service.
    held: bytes it holds.
    passed: whether it acquired or gave up its turn.
  """

  def __init__(self, budget: ByteBudget, number: int):
    self._budget = budget
    self.number = number
    self.held = 0
    self.passed = False

  def acquire(self, nbytes: int) -> None:
    """Waits for this ticket's turn and for `nbytes` to fit, then holds them.

    Raises:
      TooLarge: `nbytes` exceeds the whole budget (raised at once).
      Closed: the budget was closed.
      RuntimeError: the ticket already acquired or was released.
    """
    self._budget._acquire(self, int(nbytes))  # pylint: disable=protected-access

  def charge(self, nbytes: int) -> None:
    """Holds exactly `nbytes` from now on, without waiting (e.g. what a result keeps).

    Growing may exceed the budget: use it for what is already in memory.
    """
    self._budget._charge(self, int(nbytes))  # pylint: disable=protected-access

  def release(self) -> None:
    """Returns every byte held and gives up the turn; idempotent."""
    self.charge(0)
