"""Where a run's wall time went: a clock that sums the seconds of named phases, and the table `--profile` logs.

The training loop charges its parts (data, init, compile, steps, eval, checkpoints, plots) as it goes; what no
phase claimed is shown as 'other', so the rows always add up to the wall time since the clock started. With
asynchronous dispatch a phase is charged the host time until its results are needed: the steps' device time
appears where the loop waits for it (at log points), which is why the loop fetches only there.

Work done in a background thread (the report's figures, drawn while the checkpoints close) is charged as the
main thread's wait for it, so the rows still add up; its own duration is noted with `overlapped` and shown under
the table, outside the sum.
"""

import contextlib
import time
from collections.abc import Iterator

# The order rows are shown in; phases not listed here follow in the order they were first charged.
ORDER = ("imports", "data", "init", "compile", "steps", "eval", "checkpoints", "plots", "report")


class PhaseClock:
  """Seconds per phase since `start` (time.perf_counter() units; default: now)."""

  def __init__(self, start: float | None = None):
    self.start = time.perf_counter() if start is None else start
    self.seconds: dict[str, float] = {}
    self.background: dict[str, float] = {}  # seconds of each phase's work done off the main thread

  def add(self, phase: str, seconds: float) -> None:
    """Charges `seconds` to `phase`, on top of what it has; a negative value takes seconds back (the loop moves an
    evaluation's compile time from 'eval' to 'compile' so), never below 0."""
    self.seconds[phase] = max(self.seconds.get(phase, 0.0) + float(seconds), 0.0)

  def overlapped(self, phase: str, seconds: float) -> None:
    """Notes `seconds` of `phase` done in a background thread; `add` charges only the main thread's wait for it."""
    self.background[phase] = self.background.get(phase, 0.0) + max(float(seconds), 0.0)

  @contextlib.contextmanager
  def phase(self, name: str) -> Iterator[None]:
    """Charges the time inside the block to `name`."""
    begin = time.perf_counter()
    try:
      yield
    finally:
      self.add(name, time.perf_counter() - begin)

  def rows(self, end: float | None = None) -> list[tuple[str, float, float]]:
    """(phase, seconds, share of the wall time) in ORDER, then 'other' and 'total'."""
    wall = max((time.perf_counter() if end is None else end) - self.start, 1e-9)
    names = [n for n in ORDER if n in self.seconds] + [n for n in self.seconds if n not in ORDER]
    rows = [(n, self.seconds[n], self.seconds[n] / wall) for n in names]
    other = wall - sum(self.seconds.values())
    if other > 0.0005:
      rows.append(("other", other, other / wall))
    rows.append(("total", wall, 1.0))
    return rows

  def table(self, end: float | None = None) -> str:
    """The rows as an aligned text table, for the log."""
    rows = self.rows(end)
    width = max(len(name) for name, _, _ in rows)
    lines = [f"{'phase':<{width}}  {'seconds':>8}  {'share':>6}"]
    lines += [f"{name:<{width}}  {secs:>8.2f}  {share:>6.1%}" for name, secs, share in rows]
    if self.background:  # what ran beside the rows above: not in the total, which is wall time
      done = ", ".join(f"{name} {secs:.2f} s" for name, secs in self.background.items())
      lines.append(f"(in background threads, overlapping the rows above: {done}; each row is the wait for it)")
    return "\n".join(lines)
