"""Evaluators: the measurements of the model that the training loop runs, registered by name, listed in the config.

`config.evaluators` names them, in order (default `('classification',)`); each reads its own config section.
The loop knows only this contract, so a research extension adds an evaluator with `jaxcls.register_evaluator`
and never touches the loop:

- 'classification': the exact eval of the split with the task's metrics, logged as `eval/*`, and the final
  report (report.json, report.md, plots/). Every run has it: a list without it gets it first, so a config
  written as `evaluators = ('fewshot',)` keeps its report.
- 'fewshot': few-shot ridge and k-NN accuracies of the penultimate features (`config.fewshot`), `fewshot/*`.
- 'knn': only the k-NN accuracies of those features (`config.fewshot.knn_k`, `knn_metric`, `train_examples`),
  logged as `knn/*`.

A registered object is a factory `factory(config, model, dataset, mesh, eval_every) -> evaluator`, or an
`Evaluator` subclass, which is built as `cls(context)` and sees the whole `Context` (task, eval step, workdir...).
An evaluator has `due(step, last_step)` and `__call__(params, batch_stats) -> {metric name: float}`; subclasses of
`Evaluator` may also conclude at the last step and write files. What they return is logged as named and offered
to `config.best_metric`. This module imports no jax (the eval loop is imported when an evaluator runs), so
`jaxcls.register_evaluator` stays cheap.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

from absl import logging

from jaxcls.core import registry
from jaxcls.core.errors import ConfigError
from jaxcls.core.registry import Registry

EVALUATORS = Registry("evaluator")
REPORT = "classification"  # the evaluator that writes report.json: part of every run


@dataclasses.dataclass
class Context:
  """What the loop hands every evaluator: the run's parts, built once."""

  config: Any
  model: Any
  task: Any
  dataset: Any
  mesh: Any
  eval_every: int  # the loop's evaluation cadence (config.eval_every_steps resolved)
  batch_size: int  # the eval batch (config.eval_batch_size or batch_size)
  eval_step: Callable  # evaluation.loop.make_eval_step's (variables, batch) -> (sums, outputs)
  workdir: str = ""
  is_main: bool = True
  prefetch: int = 0  # batches copied to the devices ahead
  clock: Any = None  # a core.phases.PhaseClock charged for the final report's parts


@dataclasses.dataclass
class Final:
  """What an evaluator leaves at the end: its report (returned by training) and figures for the writers."""

  report: dict | None = None
  figures: list = dataclasses.field(default_factory=list)


class Evaluator:
  """The base of evaluators: runs every `every` steps and at the last step; `__call__` measures.

  `conclude` runs once after the last step while the devices are still in use (evaluate there if the last step
  was not evaluated; work started there in a background thread overlaps the checkpoints' close); `write` runs
  after training has closed its checkpoints and writes the files.
  """

  every: int = 0

  def due(self, step: int, last_step: int) -> bool:
    """Whether the loop should run this evaluator after `step`."""
    return self.every > 0 and (step % self.every == 0 or step == last_step)

  def __call__(self, params, batch_stats) -> dict[str, float]:
    """The metrics of these variables, named as they are logged ('mine/score')."""
    raise NotImplementedError

  def run(self, step: int, params, batch_stats) -> dict[str, float]:
    """`__call__` at `step` (subclasses that keep results per step override this)."""
    del step
    return self(params, batch_stats)

  def take_compile_seconds(self) -> float:
    """Seconds spent compiling inside the last run, charged to 'compile' instead of 'eval' (reported once)."""
    return 0.0

  def conclude(self, step: int, params, batch_stats) -> None:
    """Called once at the end of training, for the final step."""

  def write(self, step: int) -> Final:
    """The evaluator's final files (on the main process) and what the run returns."""
    del step
    return Final()


class _Plain(Evaluator):
  """A factory's evaluator that has only `due` and `__call__` (the shape of the public contract)."""

  def __init__(self, inner):
    self.inner = inner

  def due(self, step: int, last_step: int) -> bool:
    return bool(self.inner.due(step, last_step))

  def __call__(self, params, batch_stats) -> dict[str, float]:
    return self.inner(params, batch_stats)


def names(config) -> tuple[str, ...]:
  """The evaluators a config runs, in order: `config.evaluators`, with 'classification' first if not listed."""
  listed = registry.name_list(config.get("evaluators"))  # 'fewshot', 'a,b' or "('a', 'b')" from a command line
  if len(set(listed)) != len(listed):
    raise ConfigError(f"config.evaluators={tuple(listed)} names an evaluator twice; list each once.")
  return listed if REPORT in listed else (REPORT,) + listed


def check_names(config) -> tuple[str, ...]:
  """`names(config)`, each known (a misspelt evaluator fails at start-up, not after the data has loaded)."""
  listed = names(config)
  for name in listed:
    EVALUATORS.get(name)
  return listed


def build_all(config, context: Context) -> list[Evaluator]:
  """The evaluators `names(config)` gives, built in order for this run."""
  built = []
  for name in names(config):
    entry = EVALUATORS.get(name)
    if isinstance(entry, type) and issubclass(entry, Evaluator):
      built.append(entry(context))
    else:
      evaluator = entry(config, context.model, context.dataset, context.mesh, context.eval_every)
      built.append(evaluator if isinstance(evaluator, Evaluator) else _Plain(evaluator))
  return built


@EVALUATORS.register(REPORT)
class Classification(Evaluator):
  """The exact eval of the split (`evaluation.loop.evaluate`), logged as `eval/*`, and the final report."""

  def __init__(self, context: Context):
    self.context = context
    self.every = context.eval_every
    self._last = None  # (step, result, outputs) of the latest evaluation
    self._compile_charged = False
    self._final = None  # (step, report, loop.Drawing): the final report and its figures, drawing since `conclude`
    if context.is_main:  # matplotlib's imports while XLA compiles, not when the figures are wanted
      from jaxcls.evaluation import loop  # pylint: disable=g-import-not-at-top

      loop.preload_plots()

  def run(self, step: int, params, batch_stats) -> dict[str, float]:
    """Evaluates the split and keeps (step, result, outputs), so `conclude` and `write` reuse the last evaluation."""
    from jaxcls.evaluation import loop  # pylint: disable=g-import-not-at-top

    c = self.context
    result, outputs = loop.evaluate(
      c.eval_step, {"params": params, "batch_stats": batch_stats}, c.dataset, c.task, c.batch_size, c.mesh, c.prefetch
    )
    self._last = (int(step), result, outputs)
    return loop.scalars(result, "eval/")

  def __call__(self, params, batch_stats) -> dict[str, float]:
    """An evaluation outside the training steps (kept as step -1, so `conclude` evaluates again)."""
    return self.run(-1, params, batch_stats)

  def take_compile_seconds(self) -> float:
    """The eval step's ahead-of-time compile seconds, the first time only (0.0 afterwards or when unknown)."""
    seconds = getattr(self.context.eval_step, "compile_seconds", None)  # a step compiled ahead knows it
    if not seconds or self._compile_charged:
      return 0.0
    self._compile_charged = True
    return float(seconds)

  def conclude(self, step: int, params, batch_stats) -> None:
    """Evaluates the final step unless it was evaluated last (a finished workdir re-run trains nothing), then starts
    drawing the report's figures in a background thread (the main process), which `write` waits for."""
    from jaxcls.evaluation import loop  # pylint: disable=g-import-not-at-top

    if self._last is None or self._last[0] != step:  # a finished workdir re-run: nothing trained, report again
      self.run(step, params, batch_stats)
    if self.context.is_main:  # metrics.jsonl has its last line: the loop wrote the final eval before this
      c, (_, result, outputs) = self.context, self._last
      report = loop.final_report(step, c.config, result)
      drawing = loop.start_plots(
        c.workdir, report, outputs, c.dataset.info.class_names, dataset=c.dataset, batch_size=c.batch_size, task=c.task
      )
      self._final = (int(step), report, drawing)

  def write(self, step: int) -> Final:
    """The final report of the last evaluation: its files and plots written on the main process, its metrics logged."""
    from jaxcls.evaluation import loop  # pylint: disable=g-import-not-at-top

    c = self.context
    _, result, outputs = self._last
    drawing = None
    if self._final is not None and self._final[0] == step:  # the figures `conclude` started
      _, report, drawing = self._final
    else:
      report = loop.final_report(step, c.config, result)
    self._final = None
    figures = []
    if c.is_main:
      figures = loop.write_report(
        c.workdir,
        report,
        outputs,
        c.dataset.info.class_names,
        dataset=c.dataset,
        batch_size=c.batch_size,
        clock=c.clock,
        task=c.task,
        drawing=drawing,
      )
    logging.info(
      "Final %s metrics at step %d: loss %.6f, accuracy %.6f.",
      report["split"],
      report["step"],
      result["loss"],
      result["accuracy"],
    )
    return Final(report=report, figures=figures)


@EVALUATORS.register("fewshot")
def _fewshot(config, model, dataset, mesh, eval_every: int):
  """Few-shot ridge and k-NN accuracies of the penultimate features (evaluation/fewshot.py, config.fewshot)."""
  from jaxcls.evaluation import fewshot  # pylint: disable=g-import-not-at-top

  return fewshot.build_evaluator(config, model, dataset, mesh, eval_every)


@EVALUATORS.register("knn")
def _knn(config, model, dataset, mesh, eval_every: int):
  """k-NN accuracies only, of the same features and cached training examples as 'fewshot' (config.fewshot)."""
  from jaxcls.evaluation import fewshot  # pylint: disable=g-import-not-at-top

  return fewshot.build_evaluator(config, model, dataset, mesh, eval_every, knn_only=True)
