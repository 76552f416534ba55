"""Tests of jaxcls.training.optim: schedule values, the decay mask, SGDW and AdamW updates, clipping, config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcls.config.base import get_base_config
from jaxcls.core.errors import ConfigError
from jaxcls.training import optim


def _config(**overrides):
  c = get_base_config().optimizer
  for key, value in overrides.items():
    setattr(c, key, value)
  return c


def _lr(schedule, step):
  return float(schedule(step))


def _params():
  return {
    "dense": {"kernel": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "bias": jnp.array([0.1, -0.2])},
    "norm": {"scale": jnp.array([1.0, 1.0])},
  }


def _grads(seed):
  return jax.tree.map(lambda p: jax.random.normal(jax.random.key(seed), p.shape), _params())


def _run(tx, grads_list, params):
  state = tx.init(params)
  for grads in grads_list:
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params


# Schedules.


def test_cosine_with_warmup():
  _, lr = optim.build_optimizer(_config(schedule="cosine", learning_rate=0.4, warmup_steps=10), 110)
  assert _lr(lr, 0) == 0.0
  assert _lr(lr, 5) == pytest.approx(0.2)
  assert _lr(lr, 10) == pytest.approx(0.4)
  assert _lr(lr, 60) == pytest.approx(0.2)  # half way through the decay
  assert _lr(lr, 110) == pytest.approx(0.0, abs=1e-7)


def test_cosine_end_factor():
  _, lr = optim.build_optimizer(_config(schedule="cosine", learning_rate=1.0, end_learning_rate_factor=0.1), 100)
  assert _lr(lr, 0) == pytest.approx(1.0)
  assert _lr(lr, 50) == pytest.approx(0.55)
  assert _lr(lr, 100) == pytest.approx(0.1)
  assert _lr(lr, 1000) == pytest.approx(0.1)


def test_linear_with_warmup():
  _, lr = optim.build_optimizer(
    _config(schedule="linear", learning_rate=1.0, warmup_steps=20, end_learning_rate_factor=0.2), 120
  )
  assert _lr(lr, 0) == 0.0
  assert _lr(lr, 20) == pytest.approx(1.0)
  assert _lr(lr, 70) == pytest.approx(0.6)
  assert _lr(lr, 120) == pytest.approx(0.2)


def test_step_boundaries_are_fractions_of_all_steps():
  _, lr = optim.build_optimizer(
    _config(schedule="step", learning_rate=1.0, warmup_steps=10, step_boundaries=(0.5, 0.75), step_factor=0.1), 100
  )
  assert _lr(lr, 5) == pytest.approx(0.5)
  assert _lr(lr, 10) == pytest.approx(1.0)
  assert _lr(lr, 49) == pytest.approx(1.0)
  assert _lr(lr, 50) == pytest.approx(0.1)
  assert _lr(lr, 74) == pytest.approx(0.1)
  assert _lr(lr, 75) == pytest.approx(0.01)
  assert _lr(lr, 100) == pytest.approx(0.01)


def test_constant_with_warmup():
  _, lr = optim.build_optimizer(_config(schedule="constant", learning_rate=0.3, warmup_steps=3), 10)
  assert [round(_lr(lr, s), 6) for s in (0, 1, 3, 9, 50)] == [0.0, 0.1, 0.3, 0.3, 0.3]


def test_schedule_is_jittable():
  _, lr = optim.build_optimizer(_config(warmup_steps=5), 50)
  assert float(jax.jit(lr)(jnp.int32(5))) == pytest.approx(0.1)


# Weight decay mask.


def test_mask_excludes_1d_leaves():
  mask = optim.decay_mask(_params())
  assert mask == {"dense": {"kernel": True, "bias": False}, "norm": {"scale": False}}


# Updates.


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_matches_hand_computation(nesterov):
  lr, mom, wd = 0.5, 0.9, 0.1
  tx, _ = optim.build_optimizer(
    _config(name="sgd", schedule="constant", learning_rate=lr, momentum=mom, nesterov=nesterov, weight_decay=wd), 100
  )
  g1, g2 = _grads(1), _grads(2)
  got = _run(tx, [g1, g2], _params())

  want = jax.tree.map(np.asarray, _params())
  trace = jax.tree.map(np.zeros_like, want)
  for g in (g1, g2):
    new = {}
    for module, leaves in want.items():
      new[module] = {}
      for name, p in leaves.items():
        trace[module][name] = np.asarray(g[module][name]) + mom * trace[module][name]
        step = np.asarray(g[module][name]) + mom * trace[module][name] if nesterov else trace[module][name]
        if p.ndim > 1:
          step = step + wd * p  # decoupled: after momentum, not accumulated
        new[module][name] = p - lr * step
    want = new
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)


def test_sgd_without_momentum_or_decay_is_plain_sgd():
  tx, _ = optim.build_optimizer(_config(schedule="constant", learning_rate=0.1, momentum=0.0, weight_decay=0.0), 10)
  g = _grads(3)
  got = _run(tx, [g], _params())
  jax.tree.map(lambda a, p, d: np.testing.assert_allclose(a, p - 0.1 * d, rtol=1e-6), got, _params(), g)


def test_adamw_matches_optax_with_mask():
  tx, _ = optim.build_optimizer(
    _config(name="adamw", schedule="constant", learning_rate=1e-2, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.3), 100
  )
  ref = optax.adamw(1e-2, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.3, mask=optim.decay_mask)
  grads = [_grads(i) for i in range(3)]
  got, want = _run(tx, grads, _params()), _run(ref, grads, _params())
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)
  # The bias and scale are not decayed: with zero gradients only the kernel moves.
  zero = jax.tree.map(jnp.zeros_like, _params())
  moved = _run(tx, [zero], _params())
  assert not np.allclose(moved["dense"]["kernel"], _params()["dense"]["kernel"])
  np.testing.assert_array_equal(moved["dense"]["bias"], _params()["dense"]["bias"])
  np.testing.assert_array_equal(moved["norm"]["scale"], _params()["norm"]["scale"])


def test_clipping_limits_the_update():
  config = _config(schedule="constant", learning_rate=1.0, momentum=0.0, weight_decay=0.0, grad_clip_norm=0.5)
  tx, _ = optim.build_optimizer(config, 10)
  params = _params()
  grads = jax.tree.map(lambda p: 100.0 * jnp.ones_like(p), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(optax.tree.norm(updates)) == pytest.approx(0.5, rel=1e-5)
  small = jax.tree.map(lambda p: 0.01 * jnp.ones_like(p), params)
  updates, _ = tx.update(small, tx.init(params), params)
  assert float(optax.tree.norm(updates)) == pytest.approx(float(optax.tree.norm(small)), rel=1e-5)


def test_optimizer_jits():
  tx, _ = optim.build_optimizer(_config(warmup_steps=2, grad_clip_norm=1.0), 10)
  params = _params()
  state = tx.init(params)
  updates, _ = jax.jit(tx.update)(_grads(0), state, params)
  assert jax.tree.structure(updates) == jax.tree.structure(params)


# Errors.


@pytest.mark.parametrize(
  "overrides, num_steps, fragment",
  [
    ({"name": "adam"}, 10, "'adamw'"),
    ({"schedule": "cosin"}, 10, "'cosine'"),
    ({"learning_rate": -0.1}, 10, "learning_rate=-0.1"),
    ({"weight_decay": -1e-4}, 10, "weight_decay"),
    ({"momentum": 1.5}, 10, "momentum=1.5"),
    ({"grad_clip_norm": -1.0}, 10, "grad_clip_norm"),
    ({"warmup_steps": 10}, 10, "warmup_steps=10"),
    ({"warmup_steps": -1}, 10, "warmup_steps=-1"),
    ({"schedule": "step", "step_boundaries": (0.75, 0.5)}, 10, "strictly increasing"),
    ({"schedule": "step", "step_boundaries": (0.5, 1.5)}, 10, "between 0 and 1"),
    ({}, 0, "num_train_steps=0"),
  ],
)
def test_bad_config_raises(overrides, num_steps, fragment):
  with pytest.raises(ConfigError) as info:
    optim.build_optimizer(_config(**overrides), num_steps)
  assert fragment in str(info.value)


# Parameter groups: a backbone trained at a fraction of the rate, or frozen.


def _is_head(path):
  return path[0] == "dense"


def _deltas(tx, grads_list):
  final = _run(tx, grads_list, _params())
  return jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), final, _params())


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_frozen_backbone_gets_no_update_no_decay_and_no_state(name):
  settings = dict(name=name, schedule="constant", learning_rate=0.1, weight_decay=0.5, momentum=0.9)
  frozen, _ = optim.build_optimizer(_config(**settings, backbone_lr_factor=0.0), 10, is_head=_is_head)
  plain, _ = optim.build_optimizer(_config(**settings), 10)
  grads = [_grads(i) for i in range(3)]
  got = _run(frozen, grads, _params())
  np.testing.assert_array_equal(got["norm"]["scale"], _params()["norm"]["scale"])
  want = _run(plain, [{"dense": g["dense"]} for g in grads], {"dense": _params()["dense"]})
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got["dense"], want["dense"])
  # Zero gradients: weight decay alone would move a kernel, but not a frozen one.
  params = {"dense": _params()["dense"], "conv": {"kernel": jnp.ones((2, 2))}}
  zero = jax.tree.map(jnp.zeros_like, params)
  state = frozen.init(params)
  updates, state = frozen.update(zero, state, params)
  np.testing.assert_array_equal(updates["conv"]["kernel"], 0.0)
  assert np.abs(np.asarray(updates["dense"]["kernel"])).max() > 0
  # Momentum / moments are kept for the head only.
  head_only = sum(np.size(x) for x in jax.tree.leaves(plain.init({"dense": params["dense"]})))
  assert sum(np.size(x) for x in jax.tree.leaves(state)) == head_only


@pytest.mark.parametrize("name, momentum", [("sgd", 0.9), ("sgd", 0.0), ("adamw", 0.9)])
def test_backbone_updates_scale_with_the_factor(name, momentum):
  settings = dict(name=name, schedule="cosine", learning_rate=0.2, weight_decay=0.1, momentum=momentum, warmup_steps=1)
  scaled, schedule = optim.build_optimizer(_config(**settings, backbone_lr_factor=0.25), 10, is_head=_is_head)
  plain, plain_schedule = optim.build_optimizer(_config(**settings), 10)
  grads = [_grads(i) for i in range(3)]
  got, full = _deltas(scaled, grads), _deltas(plain, grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), got["dense"], full["dense"])
  np.testing.assert_allclose(got["norm"]["scale"], 0.25 * full["norm"]["scale"], rtol=1e-5)
  assert float(schedule(3)) == float(plain_schedule(3))  # the logged rate is the head's


def test_clipping_counts_only_trained_parameters():
  config = dict(schedule="constant", learning_rate=1.0, momentum=0.0, weight_decay=0.0, grad_clip_norm=1.0)
  params = _params()
  grads = {
    "dense": jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params["dense"]),
    "norm": {"scale": jnp.full((2,), 100.0)},
  }
  frozen, _ = optim.build_optimizer(_config(**config, backbone_lr_factor=0.0), 10, is_head=_is_head)
  updates, _ = frozen.update(grads, frozen.init(params), params)
  np.testing.assert_allclose(updates["dense"]["kernel"], -0.1, rtol=1e-6)  # under the norm: not clipped
  scaled, _ = optim.build_optimizer(_config(**config, backbone_lr_factor=0.5), 10, is_head=_is_head)
  updates, _ = scaled.update(grads, scaled.init(params), params)
  total = float(optax.tree.norm(grads))
  np.testing.assert_allclose(updates["dense"]["kernel"], -0.1 / total, rtol=1e-5)  # clipped with the backbone
  np.testing.assert_allclose(updates["norm"]["scale"], -0.5 * 100.0 / total, rtol=1e-5)


def test_param_labels_and_group_errors():
  assert optim.param_labels(_is_head)(_params()) == {
    "dense": {"kernel": "head", "bias": "head"},
    "norm": {"scale": "backbone"},
  }
  with pytest.raises(ConfigError, match="backbone_lr_factor=-0.5 must be >= 0"):
    optim.build_optimizer(_config(backbone_lr_factor=-0.5), 10, is_head=_is_head)
  with pytest.raises(ConfigError, match="needs the head's parameters"):
    optim.build_optimizer(_config(backbone_lr_factor=0.5), 10)
