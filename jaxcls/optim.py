"""The optimizer and learning-rate schedule, built from `config.optimizer`.

One function, `build_optimizer`, so the training loop never touches optax directly and every run is described by
its config alone. Weight decay is decoupled (AdamW / SGDW) and skips biases and normalisation scales, which are
1-D: decaying them only hurts.
"""

from typing import Any, Callable

import jax
import optax

from jaxcls.errors import ConfigError
from jaxcls.registry import did_you_mean

Schedule = Callable[[Any], Any]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "linear", "step", "constant")


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
    raise ConfigError(f"Unknown config.optimizer.name {c.name!r}.{did_you_mean(c.name, OPTIMIZERS)} "
                      f"Known: {', '.join(OPTIMIZERS)}.")
  if c.schedule not in SCHEDULES:
    raise ConfigError(f"Unknown config.optimizer.schedule {c.schedule!r}.{did_you_mean(c.schedule, SCHEDULES)} "
                      f"Known: {', '.join(SCHEDULES)}.")
  for key in ("learning_rate", "weight_decay", "end_learning_rate_factor", "step_factor", "grad_clip_norm"):
    value = getattr(c, key)
    _fail_unless(value >= 0, f"config.optimizer.{key}={value} must be >= 0.")
  for key in ("momentum", "b1", "b2"):
    value = getattr(c, key)
    _fail_unless(0 <= value < 1, f"config.optimizer.{key}={value} must be in [0, 1).")
  _fail_unless(c.eps > 0, f"config.optimizer.eps={c.eps} must be > 0.")
  factor = c.get("backbone_lr_factor", 1.0)
  _fail_unless(factor >= 0, f"config.optimizer.backbone_lr_factor={factor} must be >= 0 (0 freezes the backbone, "
                            "1 trains it at the full rate).")
  _fail_unless(0 <= c.warmup_steps < num_train_steps,
               f"config.optimizer.warmup_steps={c.warmup_steps} must be >= 0 and smaller than the "
               f"{num_train_steps} training steps.")
  if c.schedule == "step":
    bounds = tuple(c.step_boundaries or ())
    _fail_unless(all(0 < b < 1 for b in bounds),
                 f"config.optimizer.step_boundaries={bounds} must be fractions of training strictly between 0 "
                 f"and 1.")
    _fail_unless(all(a < b for a, b in zip(bounds, bounds[1:])),
                 f"config.optimizer.step_boundaries={bounds} must be strictly increasing.")


def _decay(opt_config: Any, num_train_steps: int) -> Schedule:
  """The post-warmup schedule; it receives the step counted from the end of warmup."""
  c = opt_config
  peak = c.learning_rate
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


def build_schedule(opt_config: Any, num_train_steps: int) -> Schedule:
  """Linear warmup from 0 to the peak over `warmup_steps`, then the configured decay to the end."""
  _check(opt_config, num_train_steps)
  decay = _decay(opt_config, num_train_steps)
  warmup = opt_config.warmup_steps
  if warmup == 0:
    return decay
  ramp = optax.linear_schedule(0.0, opt_config.learning_rate, warmup)
  return optax.join_schedules([ramp, decay], [warmup])


def param_labels(is_head: Callable[[tuple[str, ...]], bool]) -> Callable[[Any], Any]:
  """params -> the same tree of 'head' / 'backbone' labels, for `optax.multi_transform`."""
  def labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "head" if is_head(tuple(str(getattr(p, "key", p)) for p in path)) else "backbone", params)
  return labels


def build_optimizer(opt_config: Any, num_train_steps: int, *,
                    is_head: Callable[[tuple[str, ...]], bool] | None = None
                    ) -> tuple[optax.GradientTransformation, Schedule]:
  """The optax transformation and its learning-rate schedule (returned too, so the loop can log the rate).

  With `backbone_lr_factor` != 1, `is_head(path)` splits the parameters into two groups (optax.multi_transform):
  the head trains with the schedule, the backbone with the schedule times the factor. A factor of 0 freezes the
  backbone outright (optax.set_to_zero: no gradient step, no weight decay, no momentum state), and the gradient
  clipping norm is then measured over the head alone, the parameters that train.
  """
  c = opt_config
  schedule = build_schedule(c, num_train_steps)
  factor = float(c.get("backbone_lr_factor", 1.0))
  if factor == 1.0:
    return _single_group(c, schedule, clip=True), schedule
  if is_head is None:
    raise ConfigError(f"config.optimizer.backbone_lr_factor={factor} needs the head's parameters to be known "
                      "(jaxcls.transfer finds them); pass is_head to build_optimizer.")
  labels = param_labels(is_head)
  if factor == 0.0:
    groups = {"head": _single_group(c, schedule, clip=True), "backbone": optax.set_to_zero()}
    return optax.multi_transform(groups, labels), schedule
  backbone_schedule = lambda step: factor * schedule(step)
  groups = {"head": _single_group(c, schedule, clip=False),
            "backbone": _single_group(c, backbone_schedule, clip=False)}
  parts = [optax.clip_by_global_norm(c.grad_clip_norm)] if c.grad_clip_norm > 0 else []
  return optax.chain(*parts, optax.multi_transform(groups, labels)), schedule


def _single_group(c: Any, schedule: Schedule, *, clip: bool) -> optax.GradientTransformation:
  """Clipping (optional), then the configured optimizer with its decoupled, masked weight decay at `schedule`."""
  parts = []
  if clip and c.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(c.grad_clip_norm))
  if c.name == "adamw":
    parts.append(optax.adamw(schedule, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay,
                             mask=decay_mask))
  else:
    # SGDW: the decay is added after momentum, so it is not accumulated, and scaled by the rate with the gradient.
    if c.momentum > 0:
      parts.append(optax.trace(decay=c.momentum, nesterov=c.nesterov))
    if c.weight_decay > 0:
      parts.append(optax.add_decayed_weights(c.weight_decay, mask=decay_mask))
    parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts)
