"""The training loop's host side: no implicit transfers, metrics summed on the device, cadence, phase timing."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcls import tasks
from jaxcls.core import parallel, phases
from jaxcls.core.errors import NonFiniteLossError
from jaxcls.evaluation import evaluators
from jaxcls.store import checkpoint
from jaxcls.training import loop as train
from jaxcls.training import step_metrics


def metrics_lines(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_loop_runs_with_implicit_transfers_disallowed(make_config, tmp_path):
  """Between log points the steps make no implicit host <-> device copy (a per-step float() would be one)."""
  config = make_config(
    num_train_steps=6,
    log_every_steps=3,
    eval_every_steps=3,
    checkpoint_every_steps=3,
    ema_decay=0.9,
    transfer_guard="disallow",
  )
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result["step"] == 6 and np.isfinite(result["loss"])


def test_transfer_guard_catches_an_implicit_transfer(make_config, tmp_path):
  """The guard is real: a train key left on one device must be copied to the others implicitly, and fails."""
  config = make_config(num_train_steps=3, transfer_guard="disallow")
  original = parallel.replicate
  calls = []

  def replicate_but_not_the_key(tree, mesh):
    calls.append(tree)
    return tree if len(calls) == 1 else original(tree, mesh)  # the first call places train_key

  parallel.replicate = replicate_but_not_the_key
  try:
    with pytest.raises(Exception, match="Disallowed host-to-device transfer|Disallowed device-to-device"):
      train.train_and_evaluate(config, str(tmp_path))
  finally:
    parallel.replicate = original


def test_metrics_jsonl_has_throughput_and_data_wait(make_config, tmp_path):
  train.train_and_evaluate(
    make_config(num_train_steps=8, log_every_steps=4, eval_every_steps=-1, checkpoint_every_steps=-1), str(tmp_path)
  )
  lines = metrics_lines(tmp_path)
  train_lines = [row for row in lines if "train/loss" in row]
  assert [row["step"] for row in train_lines] == [4, 8]
  for line in train_lines:
    assert line["train/steps_per_sec"] > 0
    assert 0.0 <= line["train/data_wait_share"] <= 1.0
  # -1: evaluated and checkpointed only at the end.
  assert [row["step"] for row in lines if "eval/accuracy" in row] == [8]
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3, async_save=False, fingerprint={})
  assert ckpt.all_steps() == [8]
  ckpt.close()


def test_logged_train_loss_is_the_mean_of_the_window(make_config, tmp_path):
  """With one step per log line, the logged means are that step's values; with 3, their average."""
  one = tmp_path / "one"
  three = tmp_path / "three"
  train.train_and_evaluate(make_config(num_train_steps=6, log_every_steps=1), str(one))
  train.train_and_evaluate(make_config(num_train_steps=6, log_every_steps=3), str(three))
  per_step = {row["step"]: row["train/loss"] for row in metrics_lines(one) if "train/loss" in row}
  windows = {row["step"]: row["train/loss"] for row in metrics_lines(three) if "train/loss" in row}
  assert windows[3] == pytest.approx(np.mean([per_step[s] for s in (1, 2, 3)]), rel=1e-5)
  assert windows[6] == pytest.approx(np.mean([per_step[s] for s in (4, 5, 6)]), rel=1e-5)


@pytest.mark.slow
def test_non_finite_step_inside_a_window_is_found_and_named(make_config, tmp_path):
  """Checked only every 10 steps: the error names the first bad step and the range checked together, and no
  checkpoint of a non-finite state is written."""
  config = make_config(
    **{"optimizer.learning_rate": 1e30, "optimizer.warmup_steps": 4},
    num_train_steps=20,
    log_every_steps=10,
    eval_every_steps=-1,
    checkpoint_every_steps=-1,
  )
  with pytest.raises(NonFiniteLossError, match=r"non-finite at step (\d+) \(steps 1-10 checked together; loss=") as e:
    train.train_and_evaluate(config, str(tmp_path))
  bad = int(str(e.value).split("at step ")[1].split()[0])
  assert 1 < bad <= 10
  assert "no usable checkpoint had been written yet" in str(e.value)
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3, async_save=False, fingerprint={})
  assert ckpt.all_steps() == []
  ckpt.close()


def test_window_sums_the_finite_steps_and_names_the_first_bad_one():
  mesh = parallel.make_mesh(jax.devices()[:1])
  names = ("loss", "grad_norm", "learning_rate")
  window = step_metrics.Window(names, mesh, start_step=0)
  add = jax.jit(step_metrics.add)
  losses = [1.0, 3.0, float("nan"), 5.0]
  for number, loss in enumerate(losses, start=1):
    metrics = {"loss": jnp.float32(loss), "grad_norm": jnp.float32(2.0), "learning_rate": jnp.float32(0.1)}
    window.value = add(window.value, metrics, jnp.isfinite(metrics["loss"]), jnp.int32(number))  # 5.0: not summed
  host = window.fetch()
  assert int(host["steps"]) == 2 and int(host["bad_step"]) == 3
  assert window.means() == pytest.approx({"loss": 2.0, "grad_norm": 2.0, "learning_rate": 0.1})
  with pytest.raises(NonFiniteLossError, match=r"at step 3 \(steps 1-4 checked together; loss=nan"):
    window.check(4, last_checkpoint=None)
  window.reset(5)
  assert int(window.fetch()["steps"]) == 0 and int(window.fetch()["bad_step"]) == -1
  window.check(5, last_checkpoint=None)  # an empty window is fine


def test_the_state_check_finds_any_non_finite_value_and_names_the_overflowing_step():
  """The step checks only its loss and gradient norm; an update that overflows (finite loss and gradient) is found
  by the check-point state check, which sees every parameter, statistic, moving average and optimizer value."""
  import optax  # pylint: disable=g-import-not-at-top

  from jaxcls.training import state as state_lib  # pylint: disable=g-import-not-at-top
  from jaxcls.training import steps  # pylint: disable=g-import-not-at-top

  mesh = parallel.make_mesh(jax.devices()[:1])
  params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
  good = state_lib.create({"params": params, "batch_stats": {"mean": jnp.zeros(2)}}, optax.adam(1e-3), True)
  check = steps.make_state_check(mesh)
  assert bool(check(good))
  for where in ("params", "batch_stats", "ema_params", "opt_state"):
    leaves, treedef = jax.tree.flatten(getattr(good, where))
    bad_leaves = [jnp.full_like(x, jnp.inf) if jnp.issubdtype(x.dtype, jnp.inexact) else x for x in leaves]
    assert not bool(check(good.replace(**{where: jax.tree.unflatten(treedef, bad_leaves)}))), where

  window = step_metrics.Window(("loss", "grad_norm", "learning_rate"), mesh, start_step=0)
  add = jax.jit(step_metrics.add)
  for number in (1, 2, 3):
    metrics = {"loss": jnp.float32(1.0), "grad_norm": jnp.float32(2.0), "learning_rate": jnp.float32(0.1)}
    window.value = add(window.value, metrics, jnp.asarray(True), jnp.int32(number))
  window.check(3, last_checkpoint=None, state_finite=check(good))  # all finite: no error
  with pytest.raises(NonFiniteLossError, match=r"at step 3 \(steps 1-3 checked together; the update overflowed"):
    window.check(3, last_checkpoint=None, state_finite=jnp.asarray(False))


def test_metric_names_come_from_the_task_without_a_model():
  multiclass = tasks.build({"type": "multiclass"}, 4)
  assert step_metrics.metric_names(multiclass, 4, (16,), np.int32) == ("loss", "grad_norm", "learning_rate", "accuracy")
  multilabel = tasks.build({"type": "multilabel"}, 5)
  assert "hamming_loss" in step_metrics.metric_names(multilabel, 5, (16, 5), np.float32)


def test_prefetch_is_off_on_cpu_by_default():
  assert train.prefetch_depth(-1) == (0 if jax.default_backend() == "cpu" else 2)
  assert train.prefetch_depth(3) == 3 and train.prefetch_depth(0) == 0


def test_phase_table_adds_up_to_the_wall_time():
  clock = phases.PhaseClock(start=100.0)
  clock.add("steps", 5.0)
  clock.add("imports", 1.0)
  clock.add("custom", 0.5)
  with clock.phase("eval"):
    pass
  rows = clock.rows(end=110.0)
  names = [r[0] for r in rows]
  assert names[:3] == ["imports", "steps", "eval"] and names[-3:] == ["custom", "other", "total"]
  assert sum(r[1] for r in rows[:-1]) == pytest.approx(10.0)
  assert rows[-1] == ("total", 10.0, 1.0)
  table = clock.table(end=110.0)
  assert "steps" in table and "50.0%" in table


# --- Evaluators: the loop runs the list the config names -----------------------------------------------------------


class _ParamNorm(evaluators.Evaluator):
  """A research extension's evaluator, defined in the test alone: the squared norm of the parameters, every 3
  steps, and a file of its own at the end."""

  def __init__(self, context):
    self.context, self.every, self.seen = context, 3, []

  def run(self, step, params, batch_stats):
    self.seen.append(step)
    return {"toy/param_sq": float(sum(np.sum(np.square(x)) for x in jax.tree.leaves(parallel.to_host(params))))}

  def write(self, step):
    if self.context.is_main:
      with open(f"{self.context.workdir}/toy.json", "w") as f:
        json.dump({"step": step, "seen": self.seen}, f)
    return evaluators.Final()


evaluators.EVALUATORS.register("test_param_norm")(_ParamNorm)


class _Counter:
  """The public factory contract's shape: `due` and `__call__(params, batch_stats)` only, no base class."""

  def due(self, step, last_step):
    return step == last_step

  def __call__(self, params, batch_stats):
    return {"toy/leaves": float(len(jax.tree.leaves(params)))}


evaluators.EVALUATORS.register("test_counter")(lambda config, model, dataset, mesh, eval_every: _Counter())


def test_an_evaluator_of_ones_own_runs_without_touching_the_loop(make_config, tmp_path):
  config = make_config(
    num_train_steps=7,
    log_every_steps=7,
    eval_every_steps=-1,
    checkpoint_every_steps=-1,
    evaluators="test_param_norm,test_counter",
    best_metric="toy/param_sq",
    best_mode="min",
  )
  result = train.train_and_evaluate(config, str(tmp_path))
  lines = metrics_lines(tmp_path)
  assert [row["step"] for row in lines if "toy/param_sq" in row] == [3, 6, 7]
  assert [row["step"] for row in lines if "toy/leaves" in row] == [7]
  assert [row["step"] for row in lines if "eval/accuracy" in row] == [7]  # the report comes first, unlisted
  assert json.loads((tmp_path / "toy.json").read_text()) == {"step": 7, "seen": [3, 6, 7]}
  assert result["step"] == 7 and json.loads((tmp_path / "report.json").read_text())["accuracy"] == result["accuracy"]
  # Its metric ranks the kept checkpoints like any evaluation's: the best step was saved off the cadence.
  from jaxcls.store import restore

  logged = {row["step"]: row["toy/param_sq"] for row in lines if "toy/param_sq" in row}
  kept = restore.checkpoint_steps(str(tmp_path))
  assert min(logged, key=logged.get) in kept
  assert restore.best_step(str(tmp_path)) == min(logged, key=logged.get)


def test_default_evaluators_are_the_report():
  from jaxcls.config import base as config_base

  assert evaluators.names(config_base.get_base_config()) == ("classification",)
  assert evaluators.names(config_base.get_base_config().copy_and_resolve_references()) == ("classification",)
