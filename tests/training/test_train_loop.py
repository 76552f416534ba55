"""The training loop's host side: no implicit transfers, metrics summed on the device, cadence, phase timing."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcls import tasks
from jaxcls.store import checkpoint
from jaxcls.core import parallel
from jaxcls.core import phases
from jaxcls.training import step_metrics
from jaxcls.training import loop as train
from jaxcls.core.errors import NonFiniteLossError


def metrics_lines(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_loop_runs_with_implicit_transfers_disallowed(make_config, tmp_path):
  """Between log points the steps make no implicit host <-> device copy (a per-step float() would be one)."""
  config = make_config(num_train_steps=6, log_every_steps=3, eval_every_steps=3, checkpoint_every_steps=3,
                       ema_decay=0.9, transfer_guard="disallow")
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
  train.train_and_evaluate(make_config(num_train_steps=8, log_every_steps=4, eval_every_steps=-1,
                                       checkpoint_every_steps=-1), str(tmp_path))
  lines = metrics_lines(tmp_path)
  train_lines = [l for l in lines if "train/loss" in l]
  assert [l["step"] for l in train_lines] == [4, 8]
  for line in train_lines:
    assert line["train/steps_per_sec"] > 0
    assert 0.0 <= line["train/data_wait_share"] <= 1.0
  # -1: evaluated and checkpointed only at the end.
  assert [l["step"] for l in lines if "eval/accuracy" in l] == [8]
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3, async_save=False, fingerprint={})
  assert ckpt.all_steps() == [8]
  ckpt.close()


def test_logged_train_loss_is_the_mean_of_the_window(make_config, tmp_path):
  """With one step per log line, the logged means are that step's values; with 3, their average."""
  one = tmp_path / "one"
  three = tmp_path / "three"
  train.train_and_evaluate(make_config(num_train_steps=6, log_every_steps=1), str(one))
  train.train_and_evaluate(make_config(num_train_steps=6, log_every_steps=3), str(three))
  per_step = {l["step"]: l["train/loss"] for l in metrics_lines(one) if "train/loss" in l}
  windows = {l["step"]: l["train/loss"] for l in metrics_lines(three) if "train/loss" in l}
  assert windows[3] == pytest.approx(np.mean([per_step[s] for s in (1, 2, 3)]), rel=1e-5)
  assert windows[6] == pytest.approx(np.mean([per_step[s] for s in (4, 5, 6)]), rel=1e-5)


@pytest.mark.slow
def test_non_finite_step_inside_a_window_is_found_and_named(make_config, tmp_path):
  """Checked only every 10 steps: the error names the first bad step and the range checked together; no
  checkpoint of a non-finite state is written and the state kept is the one before the bad step."""
  config = make_config(**{"optimizer.learning_rate": 1e30, "optimizer.warmup_steps": 4}, num_train_steps=20,
                       log_every_steps=10, eval_every_steps=-1, checkpoint_every_steps=-1)
  with pytest.raises(NonFiniteLossError, match=r"non-finite at step (\d+) \(steps 1-10 checked together; loss=") as e:
    train.train_and_evaluate(config, str(tmp_path))
  bad = int(str(e.value).split("at step ")[1].split()[0])
  assert 1 < bad <= 10
  assert "no usable checkpoint had been written yet" in str(e.value)
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3, async_save=False, fingerprint={})
  assert ckpt.all_steps() == []
  ckpt.close()


def test_window_sums_and_freezes_after_the_first_bad_step():
  mesh = parallel.make_mesh(jax.devices()[:1])
  names = ("loss", "grad_norm", "learning_rate")
  window = step_metrics.Window(names, mesh, start_step=0)
  add = jax.jit(step_metrics.add)
  losses = [1.0, 3.0, float("nan"), 5.0]
  for number, loss in enumerate(losses, start=1):
    metrics = {"loss": jnp.float32(loss), "grad_norm": jnp.float32(2.0), "learning_rate": jnp.float32(0.1)}
    finite = jnp.isfinite(metrics["loss"]) & (window.value["bad_step"] < 0)
    window.value = add(window.value, metrics, finite, jnp.int32(number))
  host = window.fetch()
  assert int(host["steps"]) == 2 and int(host["bad_step"]) == 3
  assert window.means() == pytest.approx({"loss": 2.0, "grad_norm": 2.0, "learning_rate": 0.1})
  with pytest.raises(NonFiniteLossError, match=r"at step 3 \(steps 1-4 checked together; loss=nan"):
    window.check(4, last_checkpoint=None)
  window.reset(5)
  assert int(window.fetch()["steps"]) == 0 and int(window.fetch()["bad_step"]) == -1
  window.check(5, last_checkpoint=None)  # an empty window is fine


def test_metric_names_come_from_the_task_without_a_model():
  multiclass = tasks.build({"type": "multiclass"}, 4)
  assert step_metrics.metric_names(multiclass, 4, (16,), np.int32) == ("loss", "grad_norm", "learning_rate",
                                                                       "accuracy")
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
