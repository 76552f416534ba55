"""`config.imports`: a researcher's own modules, imported before anything is built, so what they register is named.

A model, task, augmentation, evaluator, writer or data source of one's own lives in one's own module and registers
with `jaxcls.register_model(name)` (or the others). Importing that module is what fills the registry, so the
config names the modules (`config.imports`) and every entry point imports them first: training through
`config.check.validate`, and evaluate, predict, export and fine-tuning through `store.restore.load_config`, which
reads them from the workdir's config.json. Nothing here imports jax: a config is checked before jax loads.

An entry is a module name on the Python path (`my_models`, `lab.models`) or a .py file (`./my_models.py`). The
current folder counts as on the path, as it does for `python -m jaxcls.main`, even in a process started another
way (a script elsewhere, a notebook, a subprocess with its own sys.path).
"""

import importlib
import importlib.util
import os
import sys
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from jaxcls.core.errors import ConfigError
from jaxcls.core.registry import name_list


def import_names(config: Mapping[str, Any] | Any) -> tuple[str, ...]:
  """The entries of `config.imports` (a tuple, 'a,b' or "('a', 'b')"); () for a config without the key."""
  value = config.get("imports", ()) if hasattr(config, "get") else config
  return name_list(value)


def import_extensions(config: Mapping[str, Any] | Any) -> list[ModuleType]:
  """Imports every module `config.imports` names (a config, or the value itself), in order; returns them.

  Importing twice is free (Python keeps the module), so each entry point may call this without coordinating.
  A module that cannot be found, or that needs a package that is missing, raises one-line ConfigError; an error
  inside the module's own code keeps its traceback, which points at the researcher's line.
  """
  return [_import_one(entry) for entry in import_names(config)]


def _is_file(entry: str) -> bool:
  return entry.endswith(".py") or "/" in entry or os.sep in entry


def _import_one(entry: str) -> ModuleType:
  if _is_file(entry):
    return _import_file(entry)
  if not all(part.isidentifier() for part in entry.split(".")):
    raise ConfigError(
      f"config.imports names {entry!r}, which is neither a module name (such as my_models or "
      "lab.models) nor a .py file; give one of those."
    )
  try:
    return importlib.import_module(entry)
  except ModuleNotFoundError as e:
    if not _is_this_module(e, entry):
      raise _missing_dependency(entry, e) from None
    if _cwd_on_path() or not _in_cwd(entry):
      raise _not_found(entry) from None
  sys.path.append(os.getcwd())  # appended, so the current folder never shadows an installed package
  try:
    return importlib.import_module(entry)
  except ModuleNotFoundError as e:
    if _is_this_module(e, entry):
      raise _not_found(entry) from None
    raise _missing_dependency(entry, e) from None


def _import_file(entry: str) -> ModuleType:
  """A .py file imported as the module named by its stem, so that `my_models.py` and `my_models` are one module."""
  if entry.startswith("gs://") or "://" in entry:
    raise ConfigError(
      f"config.imports names {entry!r}; modules are imported from local files only. Copy it "
      "next to your config and name it there."
    )
  path = os.path.realpath(os.path.expanduser(entry))
  if not path.endswith(".py") or not os.path.isfile(path):
    what = "does not exist" if not os.path.exists(path) else "is not a .py file"
    raise ConfigError(
      f"config.imports names the file {entry!r}, which {what} (relative paths start at the "
      f"current folder, {os.getcwd()}); give the path of your module's .py file."
    )
  name = os.path.splitext(os.path.basename(path))[0]
  if not name.isidentifier():
    raise ConfigError(
      f"config.imports names the file {entry!r}, whose name {name!r} is not a Python module "
      "name; rename it to letters, digits and underscores (e.g. my_models.py)."
    )
  loaded = sys.modules.get(name)
  if loaded is not None:
    where = getattr(loaded, "__file__", None)
    if where and os.path.realpath(where) == path:
      return loaded
    raise ConfigError(
      f"config.imports names the file {entry!r}, but a different module {name!r} is already "
      f"imported (from {where or 'a built-in'}); rename your file."
    )
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  try:
    spec.loader.exec_module(module)
  except ModuleNotFoundError as e:
    del sys.modules[name]
    raise _missing_dependency(entry, e) from None
  except BaseException:
    del sys.modules[name]
    raise
  return module


def _is_this_module(error: ModuleNotFoundError, entry: str) -> bool:
  """Whether `entry` itself (or a package above it) is what was not found, rather than something it imports."""
  missing = error.name or ""
  return entry == missing or entry.startswith(missing + ".")


def _cwd_on_path() -> bool:
  cwd = os.path.realpath(os.getcwd())
  return any(os.path.realpath(p or ".") == cwd for p in sys.path)


def _in_cwd(entry: str) -> bool:
  top = os.path.join(os.getcwd(), entry.split(".")[0])
  return os.path.isfile(top + ".py") or os.path.isdir(top)


def _not_found(entry: str) -> ConfigError:
  return ConfigError(
    f"config.imports names the module {entry!r}, which Python cannot find (searched: the current folder "
    f"{os.getcwd()} and sys.path); run from the folder that holds {entry.split('.')[0]}.py, add that folder to "
    f"PYTHONPATH, or give the file itself, e.g. --config.imports=/path/to/{entry.split('.')[-1]}.py."
  )


def _missing_dependency(entry: str, error: ModuleNotFoundError) -> ConfigError:
  return ConfigError(
    f"config.imports names {entry!r}, which imports {error.name!r}, and that is not installed "
    f"({error}); install it, or remove that import from your module."
  )
