"""The training progress a person watches: a live bar on a terminal, plain lines at a steady interval elsewhere.

Both show the step, the epoch, the last logged loss, images per second and the time left. The ETA is the steps
left over the mean rate since the clock started (after the first step, so compilation is not counted), pauses
for evaluation and checkpoints included, since those pauses come again before the end. Images per second are
measured over the last `window_secs`, so they follow the current speed. Every time comes from `clock`, so tests
pass a fake one.
"""

import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from absl import logging


def format_secs(secs: float) -> str:
  """'1h02m', '3m07s', '0m05s'."""
  secs = max(0, int(round(secs)))
  hours, rest = divmod(secs, 3600)
  return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
  """Call `progress(step)` after every step and `progress.note(step, scalars)` with the logged train scalars.

  On a terminal (`stream.isatty()`, stderr by default) a tqdm bar is redrawn at most every `refresh_secs`;
  otherwise a `Progress:` log line comes `first_secs` after the clock starts, then every `every_secs` on a steady
  grid, and at the last step.
  """

  def __init__(
    self,
    num_train_steps: int,
    *,
    batch_size: int | None = None,
    steps_per_epoch: int | None = None,
    stream: TextIO | None = None,
    interactive: bool | None = None,
    every_secs: float = 10.0,
    first_secs: float = 5.0,
    refresh_secs: float = 0.1,
    window_secs: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
  ):
    self.num_train_steps = int(num_train_steps or 0)
    self.batch_size = batch_size
    self.steps_per_epoch = steps_per_epoch
    self._stream = stream if stream is not None else sys.stderr
    if interactive is None:
      interactive = bool(getattr(self._stream, "isatty", lambda: False)())
    self.interactive = interactive
    self._every_secs = every_secs
    self._first_secs = first_secs
    self._refresh_secs = refresh_secs
    self._window_secs = window_secs
    self._clock = clock
    self._start: tuple[int, float] | None = None
    self._recent: deque[tuple[int, float]] = deque()
    self._next_due = 0.0
    self._loss: float | None = None
    self._bar = None
    self._filter = None
    self._final: tuple[int, float] | None = None  # the last step and its time, until its loss is noted
    self.lines: list[str] = []  # the plain lines logged so far (what a log file shows)

  # --- What is shown. ---

  def note(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Keeps the loss the loop just logged (the bar never fetches values from the devices itself); the last
    step's line, held back by `__call__`, is logged with it."""
    for key in ("train/loss", "loss"):
      if key in scalars:
        self._loss = float(scalars[key])
        if self._final is not None and step >= self._final[0]:
          self._log_final()
        return

  def _log_final(self) -> None:
    step, t = self._final
    self._final = None
    if self.interactive:
      self._draw(step, t)
      self._close_bar()
      return
    text = self.line(step, t)
    self.lines.append(text)
    logging.info("%s", text)

  def rates(self, step: int, t: float) -> tuple[float, float]:
    """(steps/s over the recent window, mean steps/s since the clock started)."""
    start_step, start_t = self._start
    mean = (step - start_step) / max(t - start_t, 1e-9)
    old_step, old_t = self._recent[0]
    recent = (step - old_step) / (t - old_t) if t > old_t and step > old_step else mean
    return recent, mean

  def eta(self, step: int, t: float) -> float | None:
    """Seconds left at the mean rate since the clock started; None before any step is timed or without a length."""
    if self._start is None or self.num_train_steps <= 0 or step <= self._start[0]:
      return None
    _, mean = self.rates(step, t)
    return (self.num_train_steps - step) / max(mean, 1e-9)

  def fields(self, step: int, t: float) -> list[str]:
    """The parts of a line: 'step 300/659', 'epoch 5/10', 'loss 0.312', '1,234 img/s', 'ETA 0m29s'."""
    parts = [f"step {step}/{self.num_train_steps}" if self.num_train_steps > 0 else f"step {step}"]
    if self.steps_per_epoch:
      epochs = math.ceil(self.num_train_steps / self.steps_per_epoch) if self.num_train_steps > 0 else 0
      epoch = max(1, math.ceil(step / self.steps_per_epoch))
      parts.append(f"epoch {min(epoch, epochs) if epochs else epoch}" + (f"/{epochs}" if epochs else ""))
    if self._loss is not None:
      parts.append(f"loss {self._loss:.4g}")
    if self._start is not None and step > self._start[0]:
      recent, _ = self.rates(step, t)
      parts.append(f"{recent * self.batch_size:,.0f} img/s" if self.batch_size else f"{recent:.1f} steps/s")
    eta = self.eta(step, t)
    if eta is not None:
      parts.append(f"ETA {format_secs(eta)}")
    return parts

  def line(self, step: int, t: float) -> str:
    """'Progress: step 300/659 (45.5%), epoch 5/10, loss 0.312, 1,234 img/s, 0m24s elapsed, ETA 0m29s'."""
    parts = self.fields(step, t)
    if self.num_train_steps > 0:
      parts[0] += f" ({100 * step / self.num_train_steps:.1f}%)"
    elapsed = format_secs(t - self._start[1]) + " elapsed"
    parts.insert(len(parts) - (1 if parts[-1].startswith("ETA") else 0), elapsed)
    return "Progress: " + ", ".join(parts)

  # --- When it is shown. ---

  def __call__(self, step: int, t: float | None = None) -> bool:
    """Call after every step; returns whether it drew the bar or logged a line."""
    t = self._clock() if t is None else t
    if self._start is None:  # the first call only starts the clock: compilation is not counted
      self._start = (step, t)
      self._recent.append((step, t))
      self._next_due = t + (self._refresh_secs if self.interactive else self._first_secs)
      if self.interactive:
        self._draw(step, t)
      return self.interactive
    self._recent.append((step, t))
    while len(self._recent) > 2 and self._recent[1][1] <= t - self._window_secs:
      self._recent.popleft()
    last = self.num_train_steps > 0 and step >= self.num_train_steps
    if last:  # the last line waits for the loss the loop logs at this step (the bar is drawn at once too)
      self._final = (step, t)
      if self.interactive:
        self._draw(step, t)
      return self.interactive
    if not last and t < self._next_due:
      return False
    interval = self._refresh_secs if self.interactive else self._every_secs
    while self._next_due <= t:  # a steady grid: a long eval pause does not shift the later lines
      self._next_due += interval
    if self.interactive:
      self._draw(step, t)
    else:
      text = self.line(step, t)
      self.lines.append(text)
      logging.info("%s", text)
    return True

  def _draw(self, step: int, t: float) -> None:
    if self._bar is None:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top

      try:
        columns, rows = os.get_terminal_size(self._stream.fileno())
      except (AttributeError, OSError, ValueError):
        columns, rows = 0, 0
      # A terminal that does not say its size (a fresh pty, `script`) gets 120 columns and 24 rows: tqdm would
      # draw nothing at all at width 0, and hides every bar at height 0.
      self._bar = tqdm(
        total=self.num_train_steps or None,
        initial=step,
        file=self._stream,
        ncols=None if columns > 0 else 120,
        dynamic_ncols=columns > 0,
        nrows=rows if rows > 0 else 24,
        mininterval=0,
        leave=True,
        desc="  ".join(self.fields(step, t)),
        bar_format="{percentage:3.0f}%|{bar}| {desc}" if self.num_train_steps > 0 else "{desc}",
      )
      self._filter = _ClearBar(self._bar)
      logging.get_absl_handler().addFilter(self._filter)
    self._bar.n = step
    self._bar.set_description_str("  ".join(self.fields(step, t)), refresh=False)
    self._bar.refresh()

  def close(self) -> None:
    """Leaves the bar's last state on the terminal and gives log lines their own lines again (or logs the last
    line, if no loss came for it)."""
    if self._final is not None:
      self._log_final()
    self._close_bar()

  def _close_bar(self) -> None:
    if self._bar is not None:
      self._bar.close()
      logging.get_absl_handler().removeFilter(self._filter)
      self._bar = None


class _ClearBar:
  """A log filter that wipes the bar's line before a log line is written, so the two never share a line (the
  next step draws the bar again below it)."""

  def __init__(self, bar):
    self._bar = bar

  def filter(self, record) -> bool:
    del record
    self._bar.clear()
    return True


class NoProgress:
  """The progress of non-main processes: nothing to show."""

  def __call__(self, step: int, t: float | None = None) -> bool:
    """Nothing to draw on a non-main process, so False (no bar drawn, no line logged)."""
    return False

  def note(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Ignores the scalars: there is no bar to show them on."""
    pass

  def close(self) -> None:
    """Nothing to close."""
    pass
