"""`restore.read_variables` reads only the items a model needs: the same arrays as the whole train state's, without
touching the optimizer state's bytes (shown by destroying those bytes on disk: the partial read still works, the
full read fails)."""

import jax
import numpy as np
import pytest
from conftest import destroy_chunks

from jaxcls.core.errors import CheckpointError
from jaxcls.store import checkpoint, restore


def full_read(workdir: str, step: int, use_ema: bool = True) -> dict:
  """What read_variables returned before it read items alone: the whole state, then the model's part of it."""
  ckpt = checkpoint.Checkpointer(workdir, keep=1, async_save=False, fingerprint={})
  try:
    state = ckpt.read_state(step)
  finally:
    ckpt.close()
  params = state["ema_params"] if use_ema and state.get("ema_params") else state["params"]
  return {"params": jax.device_get(params), "batch_stats": jax.device_get(state.get("batch_stats") or {})}


def assert_same(a: dict, b: dict) -> None:
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert isinstance(x, np.ndarray) and x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(x, y)


def assert_full_read_fails_on(workdir, step: int, *prefixes: str) -> None:
  """The whole state's read fails on a destroyed chunk (one whose key starts with one of `prefixes`): one line
  naming the step, and the chain of causes names the chunk."""
  with pytest.raises(
    CheckpointError, match=rf"^Checkpoint step {step} in .* is damaged \(its arrays cannot be read"
  ) as raised:
    full_read(workdir, step)
  chain, error = [], raised.value
  while error is not None:
    chain.append(str(error))
    error = error.__cause__ or error.__context__
  assert any(f'Error reading "{p}' in text for text in chain for p in prefixes), chain


@pytest.fixture
def trained(digits_workdir) -> str:
  return digits_workdir


@pytest.fixture
def with_ema(tmp_path) -> str:
  """A checkpoint saved by jaxcls's Checkpointer with params, batch statistics, their moving average and an
  AdamW-shaped optimizer state, arrays large enough to be stored outside the b-tree node."""
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(3, 3, 8, 16)).astype(np.float32)
  params = {"Conv_0": {"kernel": kernel}, "head": {"bias": np.ones(4, np.float32)}}
  state = {
    "step": np.int32(7),
    "params": params,
    "batch_stats": {"BatchNorm_0": {"mean": rng.normal(size=(512,)).astype(np.float32)}},
    "ema_params": jax.tree.map(lambda p: p * 0.5, params),
    "opt_state": [{"mu": jax.tree.map(lambda p: p + 1, params), "nu": jax.tree.map(lambda p: p * p, params)}],
  }
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=1, async_save=False, fingerprint={"model": "x"})
  try:
    ckpt.save(7, state, {"next_batch": 7}, force=True)
  finally:
    ckpt.close()
  return str(tmp_path)


@pytest.mark.parametrize("use_ema", [True, False])
def test_a_partial_read_gives_the_arrays_of_the_full_read(trained, use_ema):
  assert_same(restore.read_variables(trained, 300, use_ema=use_ema), full_read(trained, 300, use_ema))


def test_the_moving_average_is_read_when_kept_and_the_params_when_not(with_ema):
  ema, raw = restore.read_variables(with_ema, 7), restore.read_variables(with_ema, 7, use_ema=False)
  assert_same(ema, full_read(with_ema, 7))
  assert_same(raw, full_read(with_ema, 7, use_ema=False))
  np.testing.assert_array_equal(ema["params"]["Conv_0"]["kernel"], raw["params"]["Conv_0"]["kernel"] * 0.5)


def test_the_optimizer_state_is_never_read(trained):
  before = restore.read_variables(trained, 300)
  assert destroy_chunks(trained, 300, "opt_state.") >= 2  # AdamW's mu and nu of the one large kernel
  assert_same(restore.read_variables(trained, 300), before)
  assert_full_read_fails_on(trained, 300, "opt_state.")


def test_with_a_moving_average_neither_the_optimizer_state_nor_the_raw_params_are_read(with_ema):
  before = restore.read_variables(with_ema, 7)
  assert destroy_chunks(with_ema, 7, "opt_state.") >= 2 and destroy_chunks(with_ema, 7, "params.") >= 1
  assert_same(restore.read_variables(with_ema, 7), before)
  with pytest.raises(CheckpointError, match=r"^Checkpoint step 7 in .* is damaged \(its arrays cannot be read"):
    restore.read_variables(with_ema, 7, use_ema=False)  # the raw params are read now, and fail
  assert_full_read_fails_on(with_ema, 7, "opt_state.", "params.")


def test_damaged_params_still_give_the_one_line_error_naming_the_step(trained):
  assert destroy_chunks(trained, 300, "params.") >= 1
  with pytest.raises(CheckpointError) as raised:
    restore.read_variables(trained, 300)
  message = str(raised.value)
  assert "\n" not in message and message.startswith("Checkpoint step 300 in ")
  assert "is damaged (its arrays cannot be read" in message and "corrupt_checkpoints/" in message
