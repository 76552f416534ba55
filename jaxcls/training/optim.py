"""The optimizer and learning-rate schedule, built from `config.optimizer`.

One function, `build_optimizer`, so the training loop never touches optax directly and every run is described by
its config alone. Weight decay is decoupled (AdamW / SGDW) and skips biases and normalisation scales, which are
1-D: decaying them only hurts.

Muon (`name='muon'`, Keller Jordan's optimizer) orthogonalises the Nesterov momentum of each hidden weight matrix
by Newton-Schulz iterations (optax.contrib.scale_by_muon). It applies to every conv kernel, flattened to
[H*W*I, O], and every Dense kernel except the classification head's; the head, biases, normalisation parameters
and embeddings get the fallback optimizer (`muon_fallback`: AdamW or SGD with momentum), as Keller Jordan
prescribes: orthogonalised steps suit matrices that map features to features, not the logits or 1-D parameters.
"""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxcls.core.errors import ConfigError
from jaxcls.core.registry import did_you_mean

Schedule = Callable[[Any], Any]

OPTIMIZERS = ("sgd", "adamw", "muon")
SCHEDULES = ("cosine", "linear", "step", "constant")
MUON_FALLBACKS = ("adamw", "sgd")


def decay_mask(params: Any) -> Any:
  """True for leaves that get weight decay: kernels and embeddings (ndim > 1), not biases or scales."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def _fail_unless(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def _check(opt_config: Any, num_train_steps: int) -> None:
  """Rejects values that would otherwise train silently badly or crash deep inside optax."""
  c = opt_config
  _fail_unless(num_train_steps > 0, f"num_train_steps={num_train_steps} must be a positive number of steps.")
  if c.name not in OPTIMIZERS:
    raise ConfigError(
      f"Unknown config.optimizer.name {c.name!r}.{did_you_mean(c.name, OPTIMIZERS)} Known: {', '.join(OPTIMIZERS)}."
    )
  if c.schedule not in SCHEDULES:
    raise ConfigError(
      f"Unknown config.optimizer.schedule {c.schedule!r}.{did_you_mean(c.schedule, SCHEDULES)} "
      f"Known: {', '.join(SCHEDULES)}."
    )
  for key in ("learning_rate", "weight_decay", "end_learning_rate_factor", "step_factor", "grad_clip_norm"):
    value = getattr(c, key)
    _fail_unless(value >= 0, f"config.optimizer.{key}={value} must be >= 0.")
  for key in ("momentum", "b1", "b2"):
    value = getattr(c, key)
    _fail_unless(0 <= value < 1, f"config.optimizer.{key}={value} must be in [0, 1).")
  _fail_unless(c.eps > 0, f"config.optimizer.eps={c.eps} must be > 0.")
  factor = c.get("backbone_lr_factor", 1.0)
  _fail_unless(
    factor >= 0,
    f"config.optimizer.backbone_lr_factor={factor} must be >= 0 (0 freezes the backbone, "
    "1 trains it at the full rate).",
  )
  _fail_unless(
    0 <= c.warmup_steps < num_train_steps,
    f"config.optimizer.warmup_steps={c.warmup_steps} must be >= 0 and smaller than the "
    f"{num_train_steps} training steps.",
  )
  if c.name == "muon":
    _check_muon(c)
  if c.schedule == "step":
    bounds = tuple(c.step_boundaries or ())
    _fail_unless(
      all(0 < b < 1 for b in bounds),
      f"config.optimizer.step_boundaries={bounds} must be fractions of training strictly between 0 and 1.",
    )
    _fail_unless(
      all(a < b for a, b in zip(bounds, bounds[1:])),
      f"config.optimizer.step_boundaries={bounds} must be strictly increasing.",
    )


def _check_muon(c: Any) -> None:
  momentum = c.get("muon_momentum", 0.95)
  _fail_unless(0 <= momentum < 1, f"config.optimizer.muon_momentum={momentum} must be in [0, 1).")
  ns_steps = c.get("muon_ns_steps", 5)
  _fail_unless(
    isinstance(ns_steps, int) and not isinstance(ns_steps, bool) and ns_steps >= 1,
    f"config.optimizer.muon_ns_steps={ns_steps!r} must be a whole number of Newton-Schulz steps >= 1 "
    "(5 is usual; airbench uses 3).",
  )
  fallback = c.get("muon_fallback", "adamw")
  if fallback not in MUON_FALLBACKS:
    hint = did_you_mean(str(fallback), MUON_FALLBACKS)
    raise ConfigError(f"Unknown config.optimizer.muon_fallback {fallback!r}.{hint} Known: {', '.join(MUON_FALLBACKS)}.")
  rate = c.get("muon_fallback_learning_rate", None)
  _fail_unless(
    rate is None or rate >= 0,
    f"config.optimizer.muon_fallback_learning_rate={rate} must be >= 0, or None to use learning_rate.",
  )


def _decay(opt_config: Any, num_train_steps: int, peak: float) -> Schedule:
  """The post-warmup schedule; it receives the step counted from the end of warmup."""
  c = opt_config
  warmup = c.warmup_steps
  steps = num_train_steps - warmup
  if c.schedule == "cosine":
    return optax.cosine_decay_schedule(peak, steps, alpha=c.end_learning_rate_factor)
  if c.schedule == "linear":
    return optax.linear_schedule(peak, peak * c.end_learning_rate_factor, steps)
  if c.schedule == "step":
    # Boundaries are absolute (fractions of all steps); two that round to the same step both apply.
    scales = {}
    for fraction in c.step_boundaries or ():
      boundary = int(round(fraction * num_train_steps))
      scales[boundary] = scales.get(boundary, 1.0) * c.step_factor
    absolute = optax.piecewise_constant_schedule(peak, scales)
    return lambda step: absolute(step + warmup)
  return optax.constant_schedule(peak)


def build_schedule(opt_config: Any, num_train_steps: int, *, peak: float | None = None) -> Schedule:
  """Linear warmup from 0 to the peak over `warmup_steps`, then the configured decay to the end.

  `peak` defaults to `learning_rate`; Muon's fallback part passes its own, so both parts share one shape.
  """
  _check(opt_config, num_train_steps)
  peak = opt_config.learning_rate if peak is None else peak
  decay = _decay(opt_config, num_train_steps, peak)
  warmup = opt_config.warmup_steps
  if warmup == 0:
    return decay
  ramp = optax.linear_schedule(0.0, peak, warmup)
  return optax.join_schedules([ramp, decay], [warmup])


def param_labels(is_head: Callable[[tuple[str, ...]], bool]) -> Callable[[Any], Any]:
  """params -> the same tree of 'head' / 'backbone' labels, for `optax.multi_transform`."""

  def labels(params):
    return jax.tree_util.tree_map_with_path(
      lambda path, _: "head" if is_head(_path_names(path)) else "backbone", params
    )

  return labels


def _path_names(path) -> tuple[str, ...]:
  return tuple(str(getattr(p, "key", p)) for p in path)


class Rates(NamedTuple):
  """The learning-rate schedules of one parameter group: Muon's (or the only one) and Muon's fallback's."""

  main: Schedule
  fallback: Schedule


def _scaled(rates: Rates, factor: float) -> Rates:
  return Rates(*(lambda step, r=r: factor * r(step) for r in rates))


def build_optimizer(
  opt_config: Any, num_train_steps: int, *, is_head: Callable[[tuple[str, ...]], bool] | None = None
) -> tuple[optax.GradientTransformation, Schedule]:
  """The optax transformation and its learning-rate schedule (returned too, so the loop can log the rate).

  With `backbone_lr_factor` != 1, `is_head(path)` splits the parameters into two groups (optax.multi_transform):
  the head trains with the schedule, the backbone with the schedule times the factor. A factor of 0 freezes the
  backbone outright (optax.set_to_zero: no gradient step, no weight decay, no momentum state), and the gradient
  clipping norm is then measured over the head alone, the parameters that train.

  Muon needs `is_head` whatever the factor, to keep the head out of its orthogonalised updates. The schedule
  returned (and logged) is Muon's; the fallback's has the same shape with `muon_fallback_learning_rate` as peak.
  """
  c = opt_config
  schedule = build_schedule(c, num_train_steps)
  fallback_peak = c.get("muon_fallback_learning_rate", None) if c.name == "muon" else None
  rates = Rates(schedule, schedule if fallback_peak is None else build_schedule(c, num_train_steps, peak=fallback_peak))
  factor = float(c.get("backbone_lr_factor", 1.0))
  if is_head is None and (factor != 1.0 or c.name == "muon"):
    needs = f"config.optimizer.backbone_lr_factor={factor}" if factor != 1.0 else "config.optimizer.name='muon'"
    raise ConfigError(
      f"{needs} needs the head's parameters to be known (jaxcls.training.transfer finds them); pass "
      "is_head to build_optimizer."
    )
  if factor == 1.0:
    return _single_group(c, rates, is_head, clip=True), schedule
  labels = param_labels(is_head)
  if factor == 0.0:
    groups = {"head": _single_group(c, rates, is_head, clip=True), "backbone": optax.set_to_zero()}
    return optax.multi_transform(groups, labels), schedule
  groups = {
    "head": _single_group(c, rates, is_head, clip=False),
    "backbone": _single_group(c, _scaled(rates, factor), is_head, clip=False),
  }
  parts = [optax.clip_by_global_norm(c.grad_clip_norm)] if c.grad_clip_norm > 0 else []
  return optax.chain(*parts, optax.multi_transform(groups, labels)), schedule


def _single_group(
  c: Any, rates: Rates, is_head: Callable[[tuple[str, ...]], bool] | None, *, clip: bool
) -> optax.GradientTransformation:
  """Clipping (optional), then the configured optimizer with its decoupled, masked weight decay."""
  parts = []
  if clip and c.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(c.grad_clip_norm))
  if c.name == "muon":
    fallback = _adamw(c, rates.fallback) if c.get("muon_fallback", "adamw") == "adamw" else _sgdw(c, rates.fallback)
    parts.append(
      optax.multi_transform(
        {"muon": _muon(c, rates.main), "fallback": fallback}, lambda params: muon_labels(params, is_head)
      )
    )
  elif c.name == "adamw":
    parts.append(_adamw(c, rates.main))
  else:
    parts.append(_sgdw(c, rates.main))
  return optax.chain(*parts)


def _adamw(c: Any, schedule: Schedule) -> optax.GradientTransformation:
  return optax.adamw(schedule, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay, mask=decay_mask)


def _sgdw(c: Any, schedule: Schedule) -> optax.GradientTransformation:
  """SGDW: the decay is added after momentum, so it is not accumulated, and scaled by the rate with the gradient."""
  parts = []
  if c.momentum > 0:
    parts.append(optax.trace(decay=c.momentum, nesterov=c.nesterov))
  if c.weight_decay > 0:
    parts.append(optax.add_decayed_weights(c.weight_decay, mask=decay_mask))
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts)


# Muon.


def is_muon_leaf(path: tuple[str, ...], leaf: Any, is_head: Callable[[tuple[str, ...]], bool] | None) -> bool:
  """Hidden weight matrices: conv and Dense kernels (ndim >= 2) outside the head."""
  return bool(path) and path[-1] == "kernel" and leaf.ndim >= 2 and not (is_head is not None and is_head(path))


def muon_labels(params: Any, is_head: Callable[[tuple[str, ...]], bool] | None) -> Any:
  """params -> the same tree of 'muon' / 'fallback' labels (`is_head(path)` marks the classification head)."""
  return jax.tree_util.tree_map_with_path(
    lambda path, leaf: "muon" if is_muon_leaf(_path_names(path), leaf, is_head) else "fallback", params
  )


def muon_dimension_numbers(params: Any) -> Any:
  """How each Muon leaf is seen as a matrix: a kernel [..., I, O] (flax's conv and Dense layout) as [prod(...)*I, O].

  Called on the Muon part only (other leaves are masked out), so every leaf here is a kernel.
  """
  return jax.tree.map(
    lambda x: optax.contrib.MuonDimensionNumbers(reduction_axis=tuple(range(x.ndim - 1)), output_axis=x.ndim - 1),
    params,
  )


def scale_by_muon_shape() -> optax.GradientTransformation:
  """Scales each orthogonalised [fan_in, fan_out] update by sqrt(max(1, fan_out / fan_in)), as Keller Jordan's Muon
  and optax.contrib.muon do, so a layer that widens its input gets per-element steps as large as a square one's."""

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u: u * math.sqrt(max(1.0, u.shape[-1] / math.prod(u.shape[:-1]))), updates), state

  return optax.GradientTransformation(optax.init_empty_state, update)


def normalize_muon_weights() -> optax.GradientTransformation:
  """airbench94_muon's weight normalisation: each kernel is rescaled to Frobenius norm sqrt(O) before its step.

  Added after the learning rate, as `p * (sqrt(O) / |p| - 1)`, so the new weight is `p * sqrt(O) / |p| - lr * u`.
  With batch norm after every conv the scale is irrelevant to the function but fixes the effective step size.
  """

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("normalize_muon_weights needs the parameters; pass them to the optimizer's update.")

    def add(u, p):
      p = p.astype(jnp.float32)
      target = math.sqrt(p.shape[-1])
      return (u + p * (target / jnp.maximum(jnp.linalg.norm(p), 1e-12) - 1.0)).astype(u.dtype)

    return jax.tree.map(add, updates, params), state

  return optax.GradientTransformation(optax.init_empty_state, update)


def _muon(c: Any, schedule: Schedule) -> optax.GradientTransformation:
  """Nesterov momentum, Newton-Schulz orthogonalisation, width scaling, decoupled masked decay, the rate."""
  parts = [
    optax.contrib.scale_by_muon(
      ns_steps=c.get("muon_ns_steps", 5),
      beta=c.get("muon_momentum", 0.95),
      nesterov=c.nesterov,
      weight_dimension_numbers=muon_dimension_numbers,
    ),
    scale_by_muon_shape(),
  ]
  if c.weight_decay > 0:
    parts.append(optax.add_decayed_weights(c.weight_decay, mask=decay_mask))
  parts.append(optax.scale_by_learning_rate(schedule))
  if c.get("muon_normalize_weights", False):
    parts.append(normalize_muon_weights())
  return optax.chain(*parts)
