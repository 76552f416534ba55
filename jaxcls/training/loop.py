"""The training loop: build everything from the config, step, evaluate, checkpoint, write.

Re-running the same command on the same workdir resumes from the latest checkpoint; a run killed at any moment
and resumed ends with the same parameters as one never interrupted, because every source of randomness and the
data order are functions of (seed, step).
"""

import contextlib
import gc
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from absl import logging

from jaxcls import data
from jaxcls.config import check as config_check
from jaxcls.core import compile_cache, compiled, parallel, paths, phases
from jaxcls.core.errors import ConfigError
from jaxcls.data import augment as augment_lib
from jaxcls.data import prefetch
from jaxcls.data.in_memory import SAMPLINGS
from jaxcls.evaluation import evaluators
from jaxcls.evaluation import loop as eval_loop
from jaxcls.store import checkpoint
from jaxcls.store import workdir as workdir_lib
from jaxcls.store.build import build_task_and_model
from jaxcls.training import optim, preemption, step_metrics, steps, transfer, writers
from jaxcls.training.state import eval_params

# Old names of what moved down a layer, for callers not yet moved (tests/conftest.py, tests/e2e/test_hostile.py):
# the eval loop is jaxcls.evaluation.loop, the skipped-files listing jaxcls.store.workdir.


def schedule_lengths(config, steps_per_epoch: int) -> tuple[int, int, int]:
  """(num_train_steps, eval_every, checkpoint_every) resolved from epochs or steps."""
  if config.num_train_steps > 0:
    total = int(config.num_train_steps)
  elif config.num_epochs > 0:
    total = int(math.ceil(config.num_epochs * steps_per_epoch))
  else:
    raise ConfigError("Set config.num_epochs or config.num_train_steps to a positive value.")

  def every(value: int) -> int:  # 0 = once per epoch, -1 = only at the end
    return value if value > 0 else (total if value < 0 else steps_per_epoch)

  return total, every(config.eval_every_steps), every(config.checkpoint_every_steps)


def with_sampling(dataset, sampling: str):
  """The dataset drawing training batches as `dataset.sampling` says ('balanced' needs an in-memory source)."""
  if sampling not in SAMPLINGS:
    raise ConfigError(f"config.dataset.sampling={sampling!r} is not valid; use one of {', '.join(SAMPLINGS)}.")
  if sampling == "uniform":
    return dataset
  if not hasattr(dataset, "with_sampling"):
    raise ConfigError(
      f"config.dataset.sampling={sampling!r} needs an in-memory source (digits, arrays, "
      f"synthetic, ...); {type(dataset).__name__} supports only 'uniform'."
    )
  return dataset.with_sampling(sampling)


def class_table(info: data.DatasetInfo, class_weights) -> str:
  """The training class counts as a table (one row per class), with the loss weights when they are on."""
  counts = info.train_class_counts
  if counts is None:
    return "Train class counts: unknown for this source."
  total = max(sum(counts), 1)
  weighted = not isinstance(class_weights, str)
  width = max([len("class")] + [len(n) for n in info.class_names])
  lines = [
    f"Train class counts ({len(counts)} classes, {total} examples; largest / smallest = "
    f"{max(counts) / max(min(counts), 1):.1f}):",
    f"  {'label':>5}  {'class':<{width}}  {'count':>8}  {'share':>6}" + ("  weight" if weighted else ""),
  ]
  for k, (name, count) in enumerate(zip(info.class_names, counts)):
    row = f"  {k:>5}  {name:<{width}}  {count:>8}  {count / total:>6.1%}"
    lines.append(row + (f"  {class_weights[k]:.3f}" if weighted else ""))
  return "\n".join(lines)


def prefetch_depth(setting: int) -> int:
  """config.prefetch_to_device resolved: -1 (auto) is 2 on accelerators and 0 on CPU.

  On a CPU the thread that copies batches ahead competes with the step for the same cores and the GIL, and the
  copy is only a memcpy, so it costs more than it hides; on GPU/TPU it overlaps the transfer with the step.
  """
  if setting >= 0:
    return int(setting)
  return 0 if jax.default_backend() == "cpu" else 2


TRANSFER_GUARDS = ("allow", "log", "disallow")


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  dataset: Any = None,
  devices: Sequence[jax.Device] | None = None,
  clock: phases.PhaseClock | None = None,
) -> dict[str, Any]:
  """Trains (or resumes) as the config says and returns the final evaluation report.

  Args:
    config: a config built on `jaxcls.config.base.get_base_config()`.
    workdir: where checkpoints, metrics, the resolved config and the report go.
    dataset: optionally, the user's own data (see `jaxcls.data.from_iterators`) instead of
      `config.dataset`.
    devices: the devices of the data mesh (default: all devices of all processes).
    clock: where the wall time of each phase is charged (`main --profile` logs its table); default: a new one.
  """
  config_check.validate(config)
  writers.writer_names(config.writers)  # a misspelt writer fails now, not after the data has loaded
  evaluators.check_names(config)  # and so does a misspelt evaluator
  clock = clock if clock is not None else phases.PhaseClock()
  # Process 0 holds DIR/lock.json throughout (a second run on the workdir fails fast); released on any exit.
  with workdir_lib.locked(workdir, is_main=parallel.is_main_process(), num_processes=jax.process_count()):
    return _train_and_evaluate(config, workdir, dataset=dataset, devices=devices, clock=clock)


class _Cadence:
  """When the loop logs and checkpoints: every N steps, at the end, and by wall clock if asked (each evaluator
  says itself when it is due; the classification report runs every `eval_every`)."""

  def __init__(self, config, num_train_steps: int, steps_per_epoch: int, ckpt_every: int):
    self.total = num_train_steps
    self.log_every = config.log_every_steps or steps_per_epoch  # 0 = once per epoch
    self.ckpt_every = ckpt_every
    self.ckpt_every_secs = float(config.checkpoint_every_secs)
    self.last_ckpt_time = time.monotonic()

  def log(self, done: int) -> bool:
    return done % self.log_every == 0 or done == self.total

  def checkpoint(self, done: int) -> bool:
    by_clock = self.ckpt_every_secs > 0 and time.monotonic() - self.last_ckpt_time >= self.ckpt_every_secs
    return done % self.ckpt_every == 0 or done == self.total or by_clock


def _train_and_evaluate(config, workdir, *, dataset, devices, clock) -> dict[str, Any]:
  compile_cache.enable(config.compilation_cache_dir)
  config = transfer.with_weights_preprocessing(config)  # hf-hub:/torchvision: weights' mean, std, size, crop
  if config.dtype not in steps.DTYPES:
    raise ConfigError(f"config.dtype={config.dtype!r} is not valid; use one of {', '.join(steps.DTYPES)}.")
  workdir = os.fspath(paths.makedirs(workdir, "workdir"))  # absolute local path or gs:// URL, never ./gs:
  mesh = parallel.make_mesh(devices)
  is_main = parallel.is_main_process()
  eval_batch_size = config.eval_batch_size or config.batch_size
  parallel.check_batch_size(config.batch_size, mesh)
  parallel.check_batch_size(eval_batch_size, mesh, "eval_batch_size")
  depth = prefetch_depth(config.prefetch_to_device)
  if config.transfer_guard not in TRANSFER_GUARDS:
    raise ConfigError(
      f"config.transfer_guard={config.transfer_guard!r} is not valid; use one of {', '.join(TRANSFER_GUARDS)}."
    )

  with clock.phase("data"):
    if not config.dataset.cache_dir and not paths.is_remote(workdir):  # a folder source's decoded-array cache
      # lives with a local run; with a gs:// workdir it stays on the local disk (the source's default folder)
      config = ml_collections.ConfigDict(config.to_dict())
      config.dataset.cache_dir = workdir_lib.cache_dir(workdir)
    dataset = dataset if dataset is not None else data.build(config)
    workdir_lib.write_skipped_files(workdir, dataset, is_main)
    dataset = with_sampling(dataset, config.dataset.sampling)
  info = dataset.info
  task, model, task_config = build_task_and_model(config, info)
  steps_per_epoch = dataset.steps_per_epoch(config.batch_size)
  num_train_steps, eval_every, ckpt_every = schedule_lengths(config, steps_per_epoch)
  cadence = _Cadence(config, num_train_steps, steps_per_epoch, ckpt_every)
  resolved = workdir_lib.resolved_config(config, info, num_train_steps)
  rerun = workdir_lib.check_rerun(workdir, resolved, allow=config.allow_config_change)  # before any restore
  plan = transfer.Plan(config, task.num_outputs, info.image_shape, info.class_names)
  tx, schedule = optim.build_optimizer(config.optimizer, num_train_steps, is_head=plan.is_head)
  augment = augment_lib.build(config.augment, info.num_classes)

  # Initialisation draws with the 'rbg' generator: on CPU, XLA compiles a threefry-based init of even a small
  # CNN in ~10 s, rbg in ~1 s. Steps use threefry, whose draws do not depend on how the batch is sharded.
  init_key = jax.random.key(config.seed, impl="rbg")
  train_key = parallel.replicate(jax.random.fold_in(jax.random.PRNGKey(config.seed), 1), mesh)
  init = steps.make_init(
    model, tx, image_shape=info.image_shape, dtype=config.dtype, use_ema=config.ema_decay > 0, mesh=mesh
  )
  norm = dict(mean=info.mean, std=info.std, dtype=config.dtype, mesh=mesh)
  eval_step = compiled.CompiledOnFirstCall(
    eval_loop.make_eval_step(model, task, tta=config.eval_tta, **norm),
    "Eval step (forward)",
    eval_batch_size / mesh.size,
  )
  context = evaluators.Context(
    config=config,
    model=model,
    task=task,
    dataset=dataset,
    mesh=mesh,
    eval_every=eval_every,
    batch_size=eval_batch_size,
    eval_step=eval_step,
    workdir=workdir,
    is_main=is_main,
    prefetch=depth,
    clock=clock,
  )
  listed = evaluators.build_all(config, context)  # config.evaluators: the classification report first by default

  with clock.phase("init"):
    ckpt = checkpoint.Checkpointer(
      workdir,
      keep=config.keep_checkpoints,
      async_save=config.async_checkpointing,
      fingerprint=dict(checkpoint.fingerprint(config, info.num_classes, info.image_shape), **plan.fingerprint()),
      best_metric=config.best_metric,
      best_mode=config.best_mode,
    )
    resumed = ckpt.restore_latest(  # the newest intact step: damaged ones are moved aside, with a warning
      lambda: checkpoint.abstract_with_shardings(jax.eval_shape(init, init_key), parallel.replicated(mesh))
    )
    last_saved = ckpt.latest_step()
    if resumed is None:
      state = plan.load_into(init(init_key), tx, mesh)
      start_step = 0
    else:
      state, _ = resumed
      start_step = int(parallel.to_host(state.step))
      logging.info(
        "Resuming from step %d of %d%s.",
        start_step,
        num_train_steps,
        " (config.init_from is not read again)" if config.init_from else "",
      )
    jax.block_until_ready(state)

  writer = writers.create_writer(workdir, is_main=is_main, resume_step=start_step, names=config.writers, config=config)
  if is_main:
    workdir_lib.write_run_files(workdir, resolved, info.class_names, rerun)  # config.json, classes.json, history
    params = parallel.to_host(state.params)
    logging.info(
      "Model %s, %d parameters:\n%s",
      config.model.name,
      sum(x.size for x in jax.tree.leaves(params)),
      writers.parameter_overview(params),
    )
    logging.info(
      "Data: %d train / %d eval examples, %d classes, images %s, %s sampling.",
      info.num_train,
      info.num_eval,
      info.num_classes,
      info.image_shape,
      config.dataset.sampling,
    )
    logging.info("%s", class_table(info, task_config["class_weights"]))
    if start_step == 0:
      writer.write_hparams(resolved.to_dict())

  progress = writers.create_progress(
    num_train_steps, writer, is_main=is_main, batch_size=config.batch_size, steps_per_epoch=steps_per_epoch
  )
  # Host batches go to the devices `depth` steps ahead; the read-ahead ones are dropped at the end, and a resumed
  # run restarts the stream at its checkpoint step, so exact resume does not depend on them.
  host_batches = dataset.train_batches(config.batch_size, start_step=start_step, seed=config.seed)
  first_batch = next(host_batches)
  chunk_steps = prefetch.steps_per_chunk(first_batch)  # steps whose batches cross to the devices in one transfer
  train_step = compiled.CompiledOnFirstCall(
    steps.make_train_step(
      plan.train_model(model),
      task,
      tx,
      schedule,
      augment,
      ema_decay=config.ema_decay,
      steps_per_chunk=chunk_steps,
      **norm,
    ),
    "Train step (forward, backward, update)",
    config.batch_size / mesh.size,
  )
  window = step_metrics.Window(
    step_metrics.metric_names(task, task.num_outputs, first_batch["label"].shape, first_batch["label"].dtype),
    mesh,
    start_step,
  )
  # A source's own chunks, unless the dataset only forwards train_chunks to another object (a wrapper with
  # batches of its own, whose train_batches the forwarded chunks would bypass).
  own = getattr(getattr(dataset, "train_chunks", None), "__self__", None) is dataset and chunk_steps > 1
  host_chunks = (
    dataset.train_chunks(config.batch_size, chunk_steps, start_step=start_step, seed=config.seed) if own else None
  )
  if host_chunks is None:  # the source has no faster way than stacking its batches
    host_chunks = prefetch.chunks(host_batches, chunk_steps, start_step, first=first_batch)
  else:
    host_batches.close()  # in-memory arrays: a lazy generator that has read nothing more
  batches = prefetch.to_device(host_chunks, mesh, depth, stacked=True)
  state_check = steps.make_state_check(mesh)  # the whole state's finiteness, at check points only
  stop = preemption.Watcher(ckpt)  # SIGTERM/SIGINT: finish the step, save it, raise Preempted; handlers put back
  chunk = None
  guarded = config.transfer_guard != "allow"
  # The set-up's objects (modules, data, compiled programs: ~300k) sit out the garbage collector's full passes
  # while the steps run; each such pass would take 0.2-0.3 s of a 2-core CPU. Put back (and collectable) at the end.
  gc.freeze()
  try:
    meter = _Throughput(clock)
    for step in range(start_step, num_train_steps):
      if chunk is None or step % chunk_steps == 0:  # step s trains on row s % chunk_steps of its chunk
        t0 = time.perf_counter()
        chunk = next(batches)
        meter.data_wait(time.perf_counter() - t0)
      done = step + 1
      if guarded and step != start_step:  # the first call compiles and may place constants: not guarded
        with jax.transfer_guard(config.transfer_guard):
          state, window.value = train_step(state, window.value, chunk, train_key)
      else:
        state, window.value = train_step(state, window.value, chunk, train_key)
      if step == start_step:
        jax.block_until_ready(window.value)
        clock.add("compile", train_step.compile_seconds or 0.0)
        logging.info("First step (compilation included) took %.1f s.", time.perf_counter() - t0)
        if train_step.flops_per_example and is_main:
          writer.write_scalars(done, {"cost/train_gflop_per_example": train_step.flops_per_example / 1e9})
        meter.restart(done)
      progress(done)
      log, save_now = cadence.log(done), cadence.checkpoint(done)
      due = [e for e in listed if e.due(done, num_train_steps)]
      if log or save_now or due:
        # A check point: the one blocking fetch since the last one, and the only place non-finite steps are seen.
        window.check(done, last_saved, ckpt, state_check(state))
        meter.steps_done(done)
        if log:
          scalars = {f"train/{k}": v for k, v in window.means().items()}
          scalars.update(meter.scalars())
          writer.write_scalars(done, scalars)
          window.reset(done + 1)
        for evaluator in due:
          with meter.paused("eval"):
            measured = evaluator.run(done, eval_params(state), state.batch_stats)
          compiling = evaluator.take_compile_seconds()  # compilation inside an evaluation counts as compile
          if compiling:
            clock.add("eval", -compiling)
            clock.add("compile", compiling)
          writer.write_scalars(done, measured)
          ckpt.note_evaluation(done, measured)  # ranks this step's checkpoint by config.best_metric
        if save_now or ckpt.is_new_best(done):  # best: saved off cadence
          with meter.paused("checkpoints"):
            ckpt.save(done, state, {"next_batch": done}, force=True)
          last_saved = done
          cadence.last_ckpt_time = time.monotonic()
        meter.restart(done)
      if stop.reached(done):  # after any eval or save of this step; a flag read, or JAX's multi-process sync point
        window.check(done, last_saved, ckpt, state_check(state))  # a second check of a checked window: cheap
        with meter.paused("checkpoints"):
          stop.save_and_raise(ckpt, done, state, {"next_batch": done}, already_saved=last_saved == done)
    last_step = int(parallel.to_host(state.step))
    # A finished workdir re-run trains nothing: its evaluators run here. The report evaluator starts drawing its
    # figures in a background thread here, overlapping the checkpoints' close below; its `write` waits ('plots').
    with clock.phase("eval"):
      for evaluator in listed:
        evaluator.conclude(last_step, eval_params(state), state.batch_stats)
  finally:
    gc.unfreeze()
    workdir_lib.write_skipped_files(workdir, dataset, is_main)  # streaming sources find bad files as they go
    batches.close()
    try:
      with clock.phase("checkpoints"):
        ckpt.close()  # waits for the last save
    finally:
      stop.close()  # only now: a signal during the final evaluation or save lets them finish (below)
    writer.flush()
  # Signalled after the last step: every checkpoint is complete; stop before the report (the re-run writes it).
  if stop.signal_name is not None:
    raise preemption.Preempted(last_step, ckpt.directory, stop.signal_name)

  final_report = {}
  for evaluator in listed:  # after the checkpoints are closed: the files of each evaluator, the report first
    final = evaluator.write(last_step)
    if final.report is not None and not final_report:
      final_report = final.report
    if is_main and final.figures:
      with clock.phase("report"):
        writers.write_figures(writer, last_step, final.figures)
  writer.close()
  return final_report


class _Throughput:
  """Steady steps per second and the data-wait share between check points, with eval and checkpoints left out.

  The interval runs from one check point's end to the next one's fetch, so the device time of every step in it
  is counted (the fetch waits for the last step) and the time spent evaluating or saving is not.
  """

  def __init__(self, clock: phases.PhaseClock):
    self._clock = clock
    self._start_step = None
    self._start_time = None
    self._steps = 0
    self._seconds = 0.0
    self._wait = 0.0
    self._pending_wait = 0.0

  def data_wait(self, seconds: float) -> None:
    self._pending_wait += seconds

  def restart(self, done: int) -> None:
    """The clock of the next interval starts now, after step `done`."""
    self._start_step, self._start_time = done, time.perf_counter()
    self._pending_wait = 0.0

  def steps_done(self, done: int) -> None:
    """Closes the interval at step `done` (call right after the check point's fetch)."""
    if self._start_time is None:
      return
    seconds = time.perf_counter() - self._start_time
    self._steps += done - self._start_step
    self._seconds += seconds
    self._wait += self._pending_wait
    self._clock.add("steps", seconds - self._pending_wait)
    self._clock.add("data", self._pending_wait)
    self._start_time = None
    self._pending_wait = 0.0

  def scalars(self) -> dict[str, float]:
    """`train/steps_per_sec` and `train/data_wait_share` since the last log (empty before any steady step)."""
    if not self._steps or self._seconds <= 0:
      return {}
    out = {"train/steps_per_sec": self._steps / self._seconds, "train/data_wait_share": self._wait / self._seconds}
    self._steps, self._seconds, self._wait = 0, 0.0, 0.0
    return out

  @contextlib.contextmanager
  def paused(self, phase: str):
    """Charges the block to `phase` (eval, checkpoints), outside every steps interval."""
    with self._clock.phase(phase):
      yield
