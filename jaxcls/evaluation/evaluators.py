"""Periodic evaluators: extra measurements of the model during training, registered by name, picked in the config.

`config.evaluators = ('fewshot',)` turns evaluators on by name; each reads its own config section
(`config.fewshot`). A new evaluator is one factory registered here,
`factory(config, model, dataset, mesh, eval_every) -> evaluator`, whose evaluator has `due(step, last_step)` and
`__call__(params, batch_stats) -> {metric name: float}`; the training loop logs what it returns.
"""

from typing import Any

from jaxcls.core.errors import ConfigError
from jaxcls.core import registry
from jaxcls.core.registry import Registry

EVALUATORS = Registry("evaluator")


def build_all(config, model, dataset, mesh, eval_every: int) -> list[Any]:
  """The evaluators `config.evaluators` names, in order (none by default)."""
  names = registry.name_list(config.get("evaluators"))  # 'fewshot', 'a,b' or "('a', 'b')" from a command line
  if len(set(names)) != len(names):
    raise ConfigError(f"config.evaluators={tuple(names)} names an evaluator twice; list each once.")
  return [EVALUATORS.get(name)(config, model, dataset, mesh, eval_every) for name in names]


@EVALUATORS.register("fewshot")
def _fewshot(config, model, dataset, mesh, eval_every: int):
  """Few-shot ridge and k-NN accuracies of the penultimate features (jaxcls/fewshot.py, config.fewshot)."""
  from jaxcls.evaluation import fewshot  # pylint: disable=g-import-not-at-top  (also a command: imported when used)
  return fewshot.build_evaluator(config, model, dataset, mesh, eval_every)
