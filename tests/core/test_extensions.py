"""Extensions without a fork: the README's own model, in a module outside the package, trained and evaluated by name.

The module's source is read from README.md's "Extensions" section, so the example users copy is the one tested.
"""

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO, subprocess_env, tiny_config

from jaxcls.config import check as config_check
from jaxcls.core import extensions
from jaxcls.core.errors import ConfigError


def readme_module() -> str:
  """The first Python block of README.md's "## Extensions" section: the user's my_models.py."""
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  section = readme.split("\n## Extensions\n", 1)[1].split("\n## ", 1)[0]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def readme_command() -> list[str]:
  """The README's training command, as argv after `python -m`."""
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    section = f.read().split("\n## Extensions\n", 1)[1].split("\n## ", 1)[0]
  block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
  return block.split("\n")[0].replace("\\", "").split()[2:] + block.split("\n")[1].split()


@pytest.fixture(scope="module", autouse=True)
def registries_as_they_were():
  """What these tests register (my_net, the docs' six) is dropped afterwards: other test modules list the known
  names of a registry and must see jaxcls's own only."""
  from jaxcls import data, models, tasks  # pylint: disable=g-import-not-at-top
  from jaxcls.data.augment import base as augment_base  # pylint: disable=g-import-not-at-top
  from jaxcls.evaluation import evaluators  # pylint: disable=g-import-not-at-top
  from jaxcls.training import writers  # pylint: disable=g-import-not-at-top

  kinds = (models.MODELS, tasks.TASKS, augment_base.AUGMENTATIONS, evaluators.EVALUATORS, writers.WRITERS, data.SOURCES)
  saved = [dict(registry._entries) for registry in kinds]  # pylint: disable=protected-access
  yield
  for registry, entries in zip(kinds, saved):
    registry._entries.clear()  # pylint: disable=protected-access
    registry._entries.update(entries)  # pylint: disable=protected-access


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
  """A folder outside the package holding my_models.py, as the current folder (a user runs from it).

  sys.path and sys.modules are restored afterwards, so the module is imported afresh by each test.
  """
  (tmp_path / "my_models.py").write_text(readme_module())
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", os.getcwd())])
  yield tmp_path
  sys.modules.pop("my_models", None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir of my_net trained in process by name, from a module found in the current folder."""
  folder = tmp_path_factory.mktemp("user")
  (folder / "my_models.py").write_text(readme_module())
  workdir = folder / "run"
  config = tiny_config(
    **{"model.name": "my_net"}, imports="my_models", num_train_steps=4, eval_every_steps=-1, checkpoint_every_steps=-1
  )
  from jaxcls.training import loop  # pylint: disable=g-import-not-at-top

  with pytest.MonkeyPatch.context() as patch:
    patch.chdir(folder)
    patch.setattr(sys, "path", list(sys.path))  # the current folder that import_extensions appends goes again
    report = loop.train_and_evaluate(config, str(workdir))
  sys.modules.pop("my_models", None)
  return folder, workdir, report


def test_readme_model_trains_by_name_and_config_json_records_the_imports(trained):
  _, workdir, report = trained
  saved = json.loads((workdir / "config.json").read_text())
  assert extensions.import_names(saved) == ("my_models",)
  assert saved["model"] == {"name": "my_net", "widths": [8, 16], "dropout": 0.1}
  assert report["step"] == 4 and report["num_examples"] == 100
  assert 0.0 <= report["accuracy"] <= 1.0


def test_fine_tuning_from_the_workdir_starts_from_its_weights(trained, tmp_path, monkeypatch):
  """init_from the my_net workdir (restore reads its config.json, importing my_models): at learning rate 0 the
  fine-tuned parameters are the source's exactly."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from jaxcls.store import restore  # pylint: disable=g-import-not-at-top
  from jaxcls.training import loop  # pylint: disable=g-import-not-at-top

  folder, workdir, _ = trained
  monkeypatch.chdir(folder)
  monkeypatch.setattr(sys, "path", list(sys.path))
  config = tiny_config(
    **{"model.name": "my_net", "optimizer.learning_rate": 0.0},
    imports="my_models",
    init_from=str(workdir),
    num_train_steps=3,
    eval_every_steps=-1,
    checkpoint_every_steps=-1,
  )
  try:
    loop.train_and_evaluate(config, str(tmp_path / "tuned"))
    old, new = (restore.restore(str(w)).variables["params"] for w in (workdir, tmp_path / "tuned"))
  finally:
    sys.modules.pop("my_models", None)
  for a, b in zip(jax.tree_util.tree_leaves(old), jax.tree_util.tree_leaves(new), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_fresh_processes_evaluate_predict_and_export_the_workdir_importing_from_config_json(trained, python):
  """No --config and no import in the commands: the module must come from config.json's imports."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top

  folder, workdir, report = trained

  def run(*argv):
    proc = subprocess.run(
      [python, "-m", *argv], env=subprocess_env(2), cwd=folder, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout

  out = run("jaxcls.evaluate", "--workdir", str(workdir), "--output_dir", str(folder / "eval"))
  assert "my_net at step 4 on the test split: num_examples 100" in out
  assert json.loads((folder / "eval" / "report.json").read_text())["accuracy"] == report["accuracy"]
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / "new.png")
  assert re.match(
    r".*new\.png: class_\d \d\.\d{4}, ", run("jaxcls.predict", "--workdir", str(workdir), str(folder / "new.png"))
  )
  run("jaxcls.export", "--workdir", str(workdir), "--output", str(folder / "exported"), "--platforms", "cpu")
  assert json.loads((folder / "exported" / "model.json").read_text())["model"] == "my_net"
  # From another folder the module is not on the path: one line naming it and the fixes, exit 2.
  elsewhere = subprocess.run(
    [python, "-m", "jaxcls.evaluate", "--workdir", str(workdir)],
    env=subprocess_env(2),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert elsewhere.returncode == 2, elsewhere.stderr[-3000:]
  assert re.search(
    r"^jaxcls: error: config.imports names the module 'my_models', which Python cannot find.*"
    r"PYTHONPATH",
    elsewhere.stderr,
    re.M,
  ), elsewhere.stderr[-3000:]


def test_readme_command_trains_my_net_on_the_default_config(tmp_path, python):
  """The README's command line as written (a few steps): default.py's simple_cnn arguments give way to MyNet's."""
  (tmp_path / "my_models.py").write_text(readme_module())
  argv = readme_command()
  assert argv[:2] == ["jaxcls.main", "--config"] and "--config.imports=my_models" in argv
  argv = [os.path.join(REPO, a) if a == "configs/default.py" else a for a in argv]
  argv = [str(tmp_path / "run") if a == "/tmp/my-net" else a for a in argv]
  proc = subprocess.run(
    [
      python,
      "-m",
      *argv,
      "--config.num_train_steps=3",
      "--config.optimizer.warmup_steps=1",
      "--config.eval_every_steps=-1",
      "--config.checkpoint_every_steps=-1",
    ],
    env=subprocess_env(2),
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  saved = json.loads((tmp_path / "run" / "config.json").read_text())
  assert saved["model"]["name"] == "my_net" and "widths" not in saved["model"]  # MyNet's own default widths
  assert "model arguments" in proc.stderr and "widths=(32, 64, 128)" in proc.stderr  # the one warning line


def docs_modules() -> dict[str, str]:
  """docs/extensions.md's Python blocks: {'lab_config.py': the config file, 'lab.py': the other blocks joined}."""
  with open(os.path.join(REPO, "docs", "extensions.md"), encoding="utf-8") as f:
    blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
  config = [b for b in blocks if b.startswith('"""lab_config.py')]
  return {"lab_config.py": config[0], "lab.py": "\n\n".join(b for b in blocks if b not in config)}


def test_every_kind_in_the_docs_works_in_one_run(tmp_path, monkeypatch):
  """docs/extensions.md's model, task, augmentation, evaluator, writer and source, picked by its config file."""
  for name, text in docs_modules().items():
    (tmp_path / name).write_text(text)
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, "path", list(sys.path))
  spec = importlib.util.spec_from_file_location("lab_config", tmp_path / "lab_config.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.num_train_steps, config.eval_every_steps, config.checkpoint_every_steps = 4, -1, -1
  config.batch_size, config.async_checkpointing, config.optimizer.warmup_steps = 16, False, 1
  from jaxcls.training import loop  # pylint: disable=g-import-not-at-top

  try:
    report = loop.train_and_evaluate(config, str(tmp_path / "run"))
  finally:
    sys.modules.pop("lab", None)
  assert report["num_examples"] == 60 and report["task"] == "confident" and report["model"] == "tiny_mlp"
  assert json.loads((tmp_path / "run" / "classes.json").read_text()) == ["horizontal", "vertical"]
  rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert any("weights/global_norm" in row for row in rows), rows[-3:]
  csv = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
  assert any(line.startswith("4,train/loss,") for line in csv)
  assert any(line.startswith("4,weights/global_norm,") for line in csv)


def test_a_py_file_and_its_module_name_are_one_module(user_folder):
  by_file = extensions.import_extensions((str(user_folder / "my_models.py"),))
  by_name = extensions.import_extensions("my_models")  # the current folder, though not on sys.path
  assert by_file == by_name and by_name[0].__file__ == str(user_folder / "my_models.py")
  from jaxcls import models  # pylint: disable=g-import-not-at-top

  model = models.build({"name": "my_net", "widths": (4,)}, num_classes=3)
  assert type(model).__name__ == "MyNet" and model.num_classes == 3 and model.widths == (4,)


def test_a_missing_module_names_itself_the_folder_and_the_fixes(user_folder):
  config = tiny_config(imports=("my_modles",))
  with pytest.raises(
    ConfigError,
    match=r"config.imports names the module 'my_modles', which Python cannot find "
    r".*current folder .*PYTHONPATH.*--config.imports=/path/to/my_modles.py",
  ):
    config_check.validate(config)
  with pytest.raises(
    ConfigError,
    match=r"the file 'nowhere/my_models.py', which does not exist \(relative paths "
    r"start at the current folder",
  ):
    extensions.import_extensions(("nowhere/my_models.py",))
  with pytest.raises(ConfigError, match=r"'my models', which is neither a module name"):
    extensions.import_extensions(("my models",))


def test_a_missing_dependency_of_the_module_is_named(user_folder):
  (user_folder / "needs_more.py").write_text("import jaxcls_no_such_dependency\n")
  with pytest.raises(
    ConfigError,
    match=r"'needs_more', which imports 'jaxcls_no_such_dependency', and that is not "
    r"installed",
  ):
    extensions.import_extensions(("needs_more",))
  assert "needs_more" not in sys.modules


def test_an_unknown_name_after_the_import_lists_the_known_ones_with_the_new_one(user_folder):
  from jaxcls import models  # pylint: disable=g-import-not-at-top

  config_check.validate(tiny_config(imports="my_models"))
  with pytest.raises(
    ConfigError,
    match=r"Unknown model 'my_nte'\. Did you mean 'my_net'\? Known: .*my_net.*"
    r"simple_cnn.*config.imports",
  ):
    models.build({"name": "my_nte"}, num_classes=3)


def test_a_taken_name_is_refused_and_a_reloaded_module_re_registers(user_folder):
  import jaxcls  # pylint: disable=g-import-not-at-top

  module = extensions.import_extensions("my_models")[0]
  importlib.reload(module)  # a researcher editing the module in a notebook
  (user_folder / "clash.py").write_text("import jaxcls\n\n@jaxcls.register_model('simple_cnn')\nclass Mine:\n  pass\n")
  with pytest.raises(
    ConfigError,
    match=r"model 'simple_cnn' is already registered \(by jaxcls.models.simple_cnn\); "
    r"register Mine of clash under another name",
  ):
    extensions.import_extensions("clash")
  assert "clash" not in sys.modules
  assert jaxcls.register_model.__name__ == "register_model" and "num_classes" in jaxcls.register_model.__doc__


def test_every_public_decorator_registers_in_its_registry():
  import jaxcls  # pylint: disable=g-import-not-at-top
  from jaxcls import data, models, tasks  # pylint: disable=g-import-not-at-top
  from jaxcls.data.augment import base as augment_base  # pylint: disable=g-import-not-at-top
  from jaxcls.evaluation import evaluators  # pylint: disable=g-import-not-at-top
  from jaxcls.training import writers  # pylint: disable=g-import-not-at-top

  for name, registry in (
    ("register_model", models.MODELS),
    ("register_task", tasks.TASKS),
    ("register_augmentation", augment_base.AUGMENTATIONS),
    ("register_evaluator", evaluators.EVALUATORS),
    ("register_writer", writers.WRITERS),
    ("register_source", data.SOURCES),
  ):
    assert name in jaxcls.__all__ and name in dir(jaxcls)

    def thing():
      """A stand-in that is never built: only where it is filed is checked."""

    thing.__qualname__ = f"thing_{name}"
    assert getattr(jaxcls, name)(f"h4_test_{name}")(thing) is thing
    assert registry.get(f"h4_test_{name}") is thing
    registry._entries.pop(f"h4_test_{name}")  # pylint: disable=protected-access  (leave the registry as it was)
  with pytest.raises(AttributeError, match="no attribute 'register_modle'"):
    getattr(jaxcls, "register_modle")  # noqa: B009


def test_import_jaxcls_imports_no_registry(python):
  """`import jaxcls` runs before every command: the decorators must not pull in jax or flax until used (its one
  import is core.cpu_threads, which reads the environment before any backend starts)."""
  out = subprocess.run(
    [
      python,
      "-c",
      "import sys, jaxcls; print(sorted(m for m in sys.modules if m.split('.')[0] "
      "in ('jax', 'flax', 'ml_collections') or m.startswith('jaxcls.')))",
    ],
    env=subprocess_env(1),
    capture_output=True,
    text=True,
    timeout=60,
    check=True,
  ).stdout
  assert out.strip() == "['jaxcls.core', 'jaxcls.core.cpu_threads']"
