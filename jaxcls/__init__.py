"""jaxcls: train, evaluate and serve image classifiers with JAX and Flax.

Extensions without a fork: a model, task, augmentation, evaluator, writer or data source of your own registers
with `jaxcls.register_model(name)` (or `register_task`, `register_augmentation`, `register_evaluator`,
`register_writer`, `register_source`) in your own module, which `config.imports` names (docs/extensions.md).

Importing `jaxcls` stays cheap (it runs before every `python -m jaxcls.X`): each decorator imports its registry
on first use, through the module `__getattr__` below. Its one side effect is `core.cpu_threads`: with virtual CPU
devices on a machine with fewer cores, it gives XLA's CPU client enough threads (PJRT_NPROC) that a collective
step cannot hang.
"""

import importlib

from jaxcls.core import cpu_threads as _cpu_threads

__version__ = "0.1.0"

# Before any JAX backend starts: virtual CPU devices on few cores need more XLA client threads, or a collective
# step can hang (jaxcls/core/cpu_threads.py). Reads and sets environment variables only.
_cpu_threads.ensure_client_threads()

# public name -> (module holding the registry, registry attribute, the contract a registered object meets)
_DECORATORS = {
  "register_model": (
    "jaxcls.models",
    "MODELS",
    """Registers a model under `name` for `config.model.name`.

    The object is a flax linen Module class (or a function or `functools.partial` returning a Module) with the
    fields `num_classes: int` (the task's output count) and `dtype: Any = jnp.float32` (the computation dtype),
    both set by jaxcls, and `__call__(self, x, train: bool = False)`: x is a normalised float batch [B, H, W, C],
    the result is logits [B, num_classes]. Its other fields are the config's `model.*` keys (checked against the
    signature; give them defaults). Dropout uses the 'dropout' rng; batch norm keeps 'batch_stats'. Few-shot,
    k-NN and head replacement in fine-tuning find the head as the last `nn.Dense` directly under the module.

        @jaxcls.register_model("my_net")
        class MyNet(nn.Module):
          num_classes: int
          dtype: Any = jnp.float32
          @nn.compact
          def __call__(self, x, train: bool = False): ...
    """,
  ),
  "register_task": (
    "jaxcls.tasks",
    "TASKS",
    """Registers a task type under `name` for `config.task.type`.

    The object is a frozen dataclass subclassing `jaxcls.tasks.base.Task` (the Task protocol: loss, outputs and
    probabilities, decisions, metric sums and report sections, prediction rows, export outputs, attribution
    target), with a `num_classes: int` field. It is built as `cls(num_classes=K, **fields)` from the
    `config.task.*` keys it declares (others are ignored). Only `loss`, `probabilities`, `eval_sums` and
    `finalize` must be written; subclassing a built-in task (`jaxcls.tasks.multiclass.MultiClass`) and
    overriding one method is shorter still.
    """,
  ),
  "register_augmentation": (
    "jaxcls.data.augment.base",
    "AUGMENTATIONS",
    """Registers an augmentation op under
    `name` for `config.augment` ('my_op(strength=0.5)|flip_lr').

    The object is a factory `factory(**params) -> op`, called with the parameters written in the config (and
    `num_classes=K` if it declares that parameter). The op is a jittable `op(key, images, labels, mask) ->
    (images, labels)` over a whole batch: images uint8 [B, H, W, C] in and out, labels int [B] or soft float32
    [B, K]. `jaxcls.data.augment.base.per_example` lifts a per-image `fn(u, image)` to an op.
    """,
  ),
  "register_evaluator": (
    "jaxcls.evaluation.evaluators",
    "EVALUATORS",
    """Registers a periodic evaluator under
    `name` for `config.evaluators`.

    The object is a factory `factory(config, model, dataset, mesh, eval_every) -> evaluator`, or a subclass of
    `jaxcls.evaluation.evaluators.Evaluator` (built as `cls(context)`, seeing the task, eval step, workdir, ...,
    and able to write files at the end). The evaluator has
    `due(step, last_step) -> bool` and `__call__(params, batch_stats) -> {metric name: float}`, whose values the
    training loop writes as they are named (prefix them, e.g. 'mine/score'). `model` is the linen Module,
    `dataset` the run's `jaxcls.data.Dataset`, `mesh` the data mesh.
    """,
  ),
  "register_writer": (
    "jaxcls.training.writers",
    "WRITERS",
    """Registers a metric writer under `name` for
    `config.writers`.

    The object is a factory `factory(workdir, resume_step) -> writer`: workdir an `etils.epath.Path`,
    resume_step the step a run starts or resumes from (its later records should be dropped) or None. The writer
    subclasses `jaxcls.training.writers.Writer` and overrides what it records: `write_scalars(step, scalars)`,
    `write_texts`, `write_images`, `write_hparams`, `flush`, `close`. Only the main process gets one.
    """,
  ),
  "register_source": (
    "jaxcls.data",
    "SOURCES",
    """Registers a data source under `name` for
    `config.dataset.name`.

    The object is a loader `loader(config, *, process_index, process_count) -> jaxcls.data.Dataset`, reading the
    existing `config.dataset.*` keys (`path`, `image_size`, ...). The short way is to return
    `jaxcls.data.from_arrays(train_images, train_labels, eval_images, eval_labels, class_names=...,
    process_index=process_index, process_count=process_count)` with uint8 [N, H, W, C] images and int labels.
    """,
  ),
}

__all__ = ["__version__", *_DECORATORS]


def __getattr__(name: str):
  """`jaxcls.register_*`: imports that registry on first use, so `import jaxcls` imports neither jax nor flax."""
  if name not in _DECORATORS:
    raise AttributeError(f"module 'jaxcls' has no attribute {name!r}")
  module, attribute, doc = _DECORATORS[name]
  decorator = getattr(importlib.import_module(module), attribute).decorator(name, doc)
  globals()[name] = decorator
  return decorator


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_DECORATORS))
