"""The built-in data sources are imported on first lookup: `import jaxcls.data` imports none of them (nor jax), yet
every built-in name is listed and resolves, an unknown name lists them all, and one's own source registers as
before."""

import json
import subprocess

import pytest
from conftest import REPO, subprocess_env

from jaxcls.core.errors import ConfigError

BUILTIN = ["arrays", "digits", "folder", "idx", "synthetic", "tfds"]
SOURCE_MODULES = [f"jaxcls.data.sources.{m}" for m in ("arrays", "digits", "folder", "idx", "synthetic", "tfds_source")]


def fresh(code: str, python: str) -> dict:
  """Runs `code` in a new interpreter (nothing imported yet) and returns the JSON it prints last."""
  proc = subprocess.run(
    [python, "-c", code], capture_output=True, text=True, env=subprocess_env(), cwd=REPO, timeout=300
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_jaxcls_data_imports_no_source_and_no_jax(python):
  seen = fresh(
    "import json, sys\n"
    "import jaxcls.data as data\n"
    "loaded = sorted(m for m in sys.modules if m.startswith('jaxcls.data.sources'))\n"
    "names = data.SOURCES.names()\n"
    "print(json.dumps({'loaded': loaded, 'names': names, 'jax': 'jax' in sys.modules,\n"
    "  'tf': 'tensorflow' in sys.modules, 'contains': all(n in data.SOURCES for n in names),\n"
    "  'after_listing': sorted(m for m in sys.modules if m.startswith('jaxcls.data.sources'))}))",
    python,
  )
  assert seen["loaded"] == [] and seen["after_listing"] == []  # listing and `in` import nothing either
  assert seen["names"] == BUILTIN and seen["contains"]
  assert not seen["jax"] and not seen["tf"]


@pytest.mark.parametrize("name", BUILTIN)
def test_every_builtin_name_resolves_to_its_modules_loader(name, python):
  seen = fresh(
    "import json, sys\n"
    "import jaxcls.data as data\n"
    f"loader = data.SOURCES.get({name!r})\n"
    "print(json.dumps({'module': loader.__module__, 'qualname': loader.__qualname__,\n"
    "  'loaded': sorted(m for m in sys.modules if m in " + repr(SOURCE_MODULES) + ")}))",
    python,
  )
  module = SOURCE_MODULES[BUILTIN.index(name)]
  assert seen["module"] == module and seen["qualname"] == "load"
  assert seen["loaded"] == [module], seen  # the other sources stay unimported


def test_an_unknown_name_gets_one_line_listing_every_name_without_importing_them(python):
  seen = fresh(
    "import json, sys\n"
    "import jaxcls.data as data\n"
    "from jaxcls.core.errors import ConfigError\n"
    "try:\n"
    "  data.SOURCES.get('foldr')\n"
    "except ConfigError as e:\n"
    "  message = str(e)\n"
    "print(json.dumps({'message': message,\n"
    "  'loaded': sorted(m for m in sys.modules if m.startswith('jaxcls.data.sources'))}))",
    python,
  )
  assert "\n" not in seen["message"] and seen["loaded"] == []
  assert seen["message"].startswith("Unknown dataset 'foldr'. Did you mean 'folder'? Known: ")
  assert "Known: " + ", ".join(BUILTIN) + ". (One of your own?" in seen["message"]


def test_sources_resolve_in_this_process_too():
  """In-process (other tests may have imported some sources already): every name resolves, in `names()` order."""
  from jaxcls import data  # pylint: disable=g-import-not-at-top

  assert set(BUILTIN) <= set(data.SOURCES.names())
  for name in BUILTIN:
    assert data.SOURCES.get(name).__module__ == SOURCE_MODULES[BUILTIN.index(name)]
  with pytest.raises(
    ConfigError, match=r"^Unknown dataset 'nope'\. Known: arrays, digits, folder, idx, synthetic, tfds"
  ):
    data.SOURCES.get("nope")


def test_a_dropped_entry_of_an_imported_builtin_is_filed_again():
  """A registry emptied and refilled (as tests/core/test_extensions.py does) finds its built-ins again, although
  their modules are imported already and will not register a second time."""
  from jaxcls import data  # pylint: disable=g-import-not-at-top
  from jaxcls.data.sources import digits  # pylint: disable=g-import-not-at-top

  saved = dict(data.SOURCES._entries)  # pylint: disable=protected-access
  try:
    data.SOURCES._entries.pop("digits", None)  # pylint: disable=protected-access
    assert "digits" in data.SOURCES and data.SOURCES.get("digits") is digits.load
  finally:
    data.SOURCES._entries.clear()  # pylint: disable=protected-access
    data.SOURCES._entries.update(saved)  # pylint: disable=protected-access


USER_MODULE = '''
import jaxcls

@jaxcls.register_source("my_source")
def load(config, *, process_index, process_count):
  """A source of one's own."""
  return None


def clash():
  @jaxcls.register_source("tfds")
  def load(config, *, process_index, process_count):
    """Takes a built-in's name: refused although the tfds module was never imported."""
'''


def test_ones_own_source_registers_and_a_builtin_name_is_refused_at_registration(tmp_path, python):
  (tmp_path / "my_sources.py").write_text(USER_MODULE)
  code = (
    "import json, sys\n"
    f"sys.path.insert(0, {str(tmp_path)!r})\n"
    "import jaxcls.data as data, my_sources\n"
    "from jaxcls.core.errors import ConfigError\n"
    "found = data.SOURCES.get('my_source') is my_sources.load\n"
    "try:\n"
    "  my_sources.clash()\n"
    "  message = None\n"
    "except ConfigError as e:\n"
    "  message = str(e)\n"
    "print(json.dumps({'found': found, 'names': data.SOURCES.names(), 'message': message,\n"
    "  'tfds': data.SOURCES.get('tfds').__module__}))"
  )
  seen = fresh(code, python)
  assert seen["found"] and seen["names"] == sorted(BUILTIN + ["my_source"])
  assert seen["message"] and seen["message"].startswith("dataset 'tfds' is already registered (by jaxcls.data.sources")
  assert seen["tfds"] == "jaxcls.data.sources.tfds_source"
