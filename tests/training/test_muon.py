"""Muon (config.optimizer.name='muon'): which leaves it orthogonalises, its update against a numpy reference, the
near-orthogonality of Newton-Schulz, parameter groups and clipping, config errors, and a tiny model that learns,
is deterministic and resumes exactly."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import Interrupted, InterruptedAt, logged_losses, saved_state, tiny_config
from jax.experimental.compilation_cache import compilation_cache

from jaxcls import data, models
from jaxcls.config.base import get_base_config
from jaxcls.core.errors import ConfigError
from jaxcls.models import torchvision as convert
from jaxcls.training import loop as train
from jaxcls.training import optim, transfer

CACHE_SETTINGS = (
  "jax_compilation_cache_dir",
  "jax_persistent_cache_min_compile_time_secs",
  "jax_persistent_cache_min_entry_size_bytes",
)
NS_COEFFS = (3.4445, -4.7750, 2.0315)  # optax.contrib's (and Keller Jordan's) quintic Newton-Schulz coefficients


def _config(**overrides):
  c = get_base_config().optimizer
  c.name = "muon"
  for key, value in overrides.items():
    setattr(c, key, value)
  return c


def _head_of(model_config, image_shape):
  head = transfer.find_head(model_config, 10, image_shape)
  params = convert.abstract_variables(models.build(model_config, 10), image_shape)["params"]
  return params, lambda path: transfer.in_head(path, head)


def _labels(params, is_head):
  flat = jax.tree_util.tree_leaves_with_path(optim.muon_labels(params, is_head))
  shapes = {"/".join(str(k.key) for k in p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(params)}
  return {"/".join(str(k.key) for k in p): label for p, label in flat}, shapes


# Which leaves get Muon.


def test_resnet_convs_get_muon_and_the_head_does_not():
  params, is_head = _head_of({"name": "resnet18", "width": 4, "stem": "small"}, (8, 8, 3))
  labels, shapes = _labels(params, is_head)
  muon = sorted(k for k, v in labels.items() if v == "muon")
  # The stem, 16 block convs and 3 downsampling projections; the head ('fc') and all norms and biases fall back.
  assert len(muon) == 20 and all(len(shapes[k]) == 4 and k.endswith("/kernel") for k in muon)
  assert labels["fc/kernel"] == labels["fc/bias"] == "fallback"
  assert all(labels[k] == "fallback" for k in labels if "norm" in k.lower() or "bn" in k.lower())
  assert {len(shapes[k]) for k, v in labels.items() if v == "fallback"} == {1, 2}  # 1-D, and the 2-D head kernel


def test_vit_hidden_dense_and_patch_conv_get_muon_but_not_head_or_embeddings():
  params, is_head = _head_of({"name": "vit_ti16", "patch_size": 4}, (8, 8, 3))  # shapes only: nothing is run
  labels, shapes = _labels(params, is_head)
  muon = {k for k, v in labels.items() if v == "muon"}
  per_layer = {"self_attention/in_proj/kernel", "self_attention/out_proj/kernel"}
  for i in range(12):
    mlp = {k for k in shapes if k.startswith(f"encoder_layer_{i}/mlp") and k.endswith("kernel")}
    assert len(mlp) == 2 and mlp <= muon
    assert {f"encoder_layer_{i}/{k}" for k in per_layer} <= muon
  assert "conv_proj/kernel" in muon and len(muon) == 1 + 12 * 4
  for name in ("head/kernel", "head/bias", "class_token", "pos_embedding", "ln/scale", "conv_proj/bias"):
    assert labels[name] == "fallback", name


# One update against a numpy reference.


def _newton_schulz(g, steps):
  """The quintic iteration on a matrix, wide side last, after scaling to Frobenius norm 1 (float64)."""
  x = g.T if g.shape[0] > g.shape[1] else g
  x = x / (np.linalg.norm(x) + 1e-8)
  a, b, c = NS_COEFFS
  for _ in range(steps):
    s = x @ x.T
    x = a * x + (b * s + c * s @ s) @ x
  return x.T if g.shape[0] > g.shape[1] else x


def _params(rng):
  return {
    "conv": {
      "kernel": rng.normal(size=(3, 3, 4, 8)).astype(np.float32),
      "bias": rng.normal(size=(8,)).astype(np.float32),
    },
    "wide": {"kernel": rng.normal(size=(4, 16)).astype(np.float32)},  # fan_out > fan_in: scaled by sqrt(4)
    "head": {"kernel": rng.normal(size=(8, 3)).astype(np.float32), "bias": rng.normal(size=(3,)).astype(np.float32)},
  }


def _is_head(path):
  return path[0] == "head"


def _run(tx, grads_list, params):
  params = jax.tree.map(jnp.asarray, params)
  state = tx.init(params)
  for grads in grads_list:
    updates, state = jax.jit(tx.update)(grads, state, params)
    params = optax.apply_updates(params, updates)
  return jax.tree.map(np.asarray, params)


@pytest.mark.parametrize("normalize", [False, True])
def test_two_muon_steps_match_numpy(normalize):
  lr, fallback_lr, beta, momentum, wd, ns_steps = 0.1, 0.05, 0.9, 0.8, 0.02, 5
  c = _config(
    schedule="constant",
    learning_rate=lr,
    muon_momentum=beta,
    muon_ns_steps=ns_steps,
    muon_fallback="sgd",
    muon_fallback_learning_rate=fallback_lr,
    momentum=momentum,
    nesterov=True,
    weight_decay=wd,
    muon_normalize_weights=normalize,
  )
  tx, schedule = optim.build_optimizer(c, 100, is_head=_is_head)
  assert float(schedule(3)) == pytest.approx(lr)
  rng = np.random.default_rng(0)
  params = _params(rng)
  grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params) for _ in range(2)]
  got = _run(tx, grads, params)

  want = jax.tree.map(np.float64, params)
  mu = {k: np.zeros_like(want[k]["kernel"]) for k in ("conv", "wide")}  # Muon: bias-corrected EMA of gradients
  trace = jax.tree.map(np.zeros_like, want)  # SGD fallback: optax.trace, g + momentum * trace
  for t, g in enumerate(grads, start=1):
    g = jax.tree.map(np.float64, g)
    for module in ("conv", "wide"):
      p, grad = want[module]["kernel"], g[module]["kernel"]
      mu[module] = beta * mu[module] + (1 - beta) * grad
      nesterov = beta * mu[module] / (1 - beta ** (t + 1)) + (1 - beta) * grad / (1 - beta**t)
      matrix = nesterov.reshape(-1, p.shape[-1])  # [H*W*I, O]
      fan_in, fan_out = matrix.shape
      ortho = _newton_schulz(matrix, ns_steps).reshape(p.shape) * np.sqrt(max(1.0, fan_out / fan_in))
      start = p * np.sqrt(fan_out) / np.linalg.norm(p) if normalize else p
      want[module]["kernel"] = start - lr * (ortho + wd * p)
    for module, name in (("conv", "bias"), ("head", "kernel"), ("head", "bias")):
      p, grad = want[module][name], g[module][name]
      trace[module][name] = grad + momentum * trace[module][name]
      step = grad + momentum * trace[module][name] + (wd * p if p.ndim > 1 else 0.0)
      want[module][name] = p - fallback_lr * step
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), got, want)


def test_adamw_fallback_matches_optax_adamw_on_the_other_leaves():
  c = _config(
    schedule="constant",
    learning_rate=0.1,
    muon_fallback="adamw",
    muon_fallback_learning_rate=0.01,
    b1=0.8,
    b2=0.95,
    eps=1e-6,
    weight_decay=0.3,
  )
  tx, _ = optim.build_optimizer(c, 100, is_head=_is_head)
  rng = np.random.default_rng(1)
  params = _params(rng)
  grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params) for _ in range(3)]
  got = _run(tx, grads, params)
  ref = _run(optax.adamw(0.01, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.3, mask=optim.decay_mask), grads, params)
  for module, name in (("conv", "bias"), ("head", "kernel"), ("head", "bias")):
    np.testing.assert_allclose(got[module][name], ref[module][name], rtol=1e-6)
  assert not np.allclose(got["conv"]["kernel"], ref["conv"]["kernel"], rtol=1e-3)


def test_newton_schulz_leaves_singular_values_near_one():
  """Muon only approximately orthogonalises: singular values land in a band around 1, not on it."""
  c = _config(schedule="constant", learning_rate=1.0, muon_momentum=0.0, nesterov=False, weight_decay=0.0)
  tx, _ = optim.build_optimizer(c, 10, is_head=_is_head)
  rng = np.random.default_rng(2)
  params = _params(rng)
  grad = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
  grad["conv"]["kernel"] *= np.linspace(0.2, 3.0, 8, dtype=np.float32)  # badly conditioned on purpose
  updates, _ = jax.jit(tx.update)(grad, tx.init(params), params)
  before = np.linalg.svd(grad["conv"]["kernel"].reshape(36, 8), compute_uv=False)
  after = np.linalg.svd(np.asarray(updates["conv"]["kernel"]).reshape(36, 8), compute_uv=False)
  assert before.max() / before.min() > 5
  assert 0.5 < after.min() and after.max() < 1.5, after  # Keller Jordan's documented band for this quintic
  assert after.max() / after.min() < 2


# Parameter groups and clipping.


def _updates(c, grads, params):
  tx, _ = optim.build_optimizer(c, 10, is_head=_is_head)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  return jax.tree.map(np.asarray, updates)


def test_backbone_factor_and_clipping_apply_to_both_parts():
  settings = dict(
    schedule="constant",
    learning_rate=0.1,
    muon_fallback="sgd",
    muon_fallback_learning_rate=0.05,
    weight_decay=0.01,
    muon_ns_steps=2,
  )
  rng = np.random.default_rng(3)
  params = _params(rng)
  grads = jax.tree.map(lambda p: 10 * rng.normal(size=p.shape).astype(np.float32), params)
  # Clipping the global norm to 1 must equal handing in the gradients scaled down to norm 1.
  scaled = jax.tree.map(lambda g: g / float(optax.tree.norm(grads)), grads)
  plain = _updates(_config(**settings), scaled, params)
  clipped = _updates(_config(**settings, grad_clip_norm=1.0), grads, params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), clipped, plain)
  # With the backbone at half the rate (clipped outside the groups): Muon and fallback backbone leaves move half as
  # far, the head as far.
  half = _updates(_config(**settings, grad_clip_norm=1.0, backbone_lr_factor=0.5), grads, params)
  for module, name in (("conv", "kernel"), ("wide", "kernel"), ("conv", "bias")):
    np.testing.assert_allclose(half[module][name], 0.5 * plain[module][name], rtol=1e-5, atol=1e-7)
  for name in ("kernel", "bias"):
    np.testing.assert_allclose(half["head"][name], plain["head"][name], rtol=1e-5, atol=1e-7)
  frozen = _updates(_config(**settings, grad_clip_norm=1e6, backbone_lr_factor=0.0), scaled, params)
  assert not np.any(frozen["conv"]["kernel"]) and not np.any(frozen["wide"]["kernel"])
  np.testing.assert_allclose(frozen["head"]["kernel"], plain["head"]["kernel"], rtol=1e-5, atol=1e-7)


# Errors.


@pytest.mark.parametrize(
  "overrides, fragment",
  [
    ({"muon_momentum": 1.0}, "muon_momentum=1.0"),
    ({"muon_ns_steps": 0}, "muon_ns_steps=0"),
    ({"muon_fallback": "adam"}, "Did you mean 'adamw'"),
    ({"muon_fallback_learning_rate": -1.0}, "muon_fallback_learning_rate=-1.0"),
    ({"name": "muom"}, "Did you mean 'muon'"),
  ],
)
def test_bad_muon_config_raises(overrides, fragment):
  with pytest.raises(ConfigError, match="config.optimizer") as info:
    optim.build_optimizer(_config(**overrides), 10, is_head=_is_head)
  assert fragment in str(info.value)


def test_muon_needs_the_head():
  with pytest.raises(ConfigError, match="name='muon' needs the head"):
    optim.build_optimizer(_config(), 10)


# Training: a tiny CNN learns, and an interrupted run resumes exactly (the same config gives the same result).


@pytest.fixture(scope="module")
def muon_runs(tmp_path_factory):
  """One uninterrupted 16-step Muon run, and the same run preempted after its step-8 checkpoint and resumed.

  The three runs share a persistent compilation cache (the second and third read the first's train step), turned
  off again afterwards so that other tests in this process compile as before.
  """
  root = tmp_path_factory.mktemp("muon")
  config = tiny_config(
    **{
      "optimizer.name": "muon",
      "optimizer.learning_rate": 0.05,
      "optimizer.muon_fallback_learning_rate": 0.01,
      "optimizer.warmup_steps": 2,
      "model.dropout": 0.0,
      "augment": "",
      "num_train_steps": 16,
      "eval_every_steps": 16,
      "compilation_cache_dir": str(root / "cache"),
    }
  )
  full, resumed, one = str(root / "full"), str(root / "resumed"), jax.devices()[:1]
  saved = {k: getattr(jax.config, k) for k in CACHE_SETTINGS}
  try:
    report = train.train_and_evaluate(config, full, devices=one)
    with pytest.raises(Interrupted):
      train.train_and_evaluate(config, resumed, dataset=InterruptedAt(data.build(config), 9), devices=one)
    assert not os.path.exists(os.path.join(resumed, "report.json"))
    resumed_report = train.train_and_evaluate(config, resumed, devices=one)
  finally:
    compilation_cache.reset_cache()
    for key, value in saved.items():
      jax.config.update(key, value)
  return report, resumed_report, full, resumed


@pytest.mark.slow
def test_tiny_cnn_learns_with_muon(muon_runs):
  report, _, full, _ = muon_runs
  losses = logged_losses(full)
  assert sorted(losses) == list(range(1, 17))
  assert np.mean([losses[s] for s in (14, 15, 16)]) < 0.8 * np.mean([losses[s] for s in (1, 2, 3)]), losses
  assert report["step"] == 16 and np.isfinite(report["loss"])
  with open(os.path.join(full, "config.json")) as f:
    assert json.load(f)["optimizer"]["name"] == "muon"


@pytest.mark.slow
def test_muon_resume_continues_exactly(muon_runs):
  report, resumed_report, full, resumed = muon_runs
  a, b = saved_state(full, 16), saved_state(resumed, 16)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
  assert logged_losses(full) == pytest.approx(logged_losses(resumed), rel=1e-6)
  assert resumed_report["loss"] == pytest.approx(report["loss"], rel=1e-6)
