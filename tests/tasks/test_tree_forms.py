"""Class trees in the {parent: [children]} form, and errors that name the forms a tree may take (defect 5)."""

import json

import pytest

from jaxcls import tasks
from jaxcls.core.errors import ConfigError
from jaxcls.tasks import tree as tree_lib

NAMES = ("cat", "dog", "owl", "sedan", "coupe")
PARENTS = {
  "cat": "mammal",
  "dog": "mammal",
  "owl": "bird",
  "sedan": "car",
  "coupe": "car",
  "mammal": "animal",
  "bird": "animal",
  "car": "vehicle",
  "animal": None,
}
CHILDREN = {
  "animal": ["mammal", "bird"],
  "vehicle": ["car"],
  "mammal": ["cat", "dog"],
  "bird": ["owl"],
  "car": ["sedan", "coupe"],
}


def _check_example_tree(tree):
  assert tree.level_names == (("animal", "vehicle"), ("mammal", "bird", "car"), NAMES)
  assert tree.paths == ((0, 0, 0), (0, 0, 1), (0, 1, 2), (1, 2, 3), (1, 2, 4))


def test_parent_to_children_mappings_flat_nested_and_from_a_json_file(tmp_path):
  """{parent: [children]}, the form most tree files use, was refused with a message about missing leaves."""
  _check_example_tree(tree_lib.parse(PARENTS, NAMES))
  _check_example_tree(tree_lib.parse(CHILDREN, NAMES))
  nested = {"animal": {"mammal": ["cat", "dog"], "bird": ["owl"]}, "vehicle": {"car": {"sedan": None, "coupe": []}}}
  _check_example_tree(tree_lib.parse(nested, NAMES))
  path = tmp_path / "children.json"
  path.write_text(json.dumps(CHILDREN))
  task = tasks.build({"type": "hierarchical", "tree": str(path), "class_names": NAMES}, 5)
  _check_example_tree(task.tree)
  assert task.num_outputs == 2 + 3 + 5


def test_bad_trees_in_either_form_name_both_forms():
  with pytest.raises(ConfigError, match=r"two parents \('mammal' and 'bird'\)"):
    tree_lib.parse({**CHILDREN, "bird": ["owl", "cat"]}, NAMES)
  with pytest.raises(ConfigError, match="write the whole tree in one form"):
    tree_lib.parse({**CHILDREN, "bird": "owl"}, NAMES)
  for wrong in ({**CHILDREN, "bird": ["eagle"]}, {**PARENTS, "eagle": "bird", "owl": "animal"}):
    with pytest.raises(ConfigError, match=r"unknown \['eagle'\].*\{child: parent\}.*\{parent: \[children\]\}"):
      tree_lib.parse(wrong, NAMES)
  with pytest.raises(ConfigError, match=r"\{child: parent\}.*\{parent: \[children\]\}"):
    tree_lib.parse(3, NAMES)


def test_flat_class_folders_for_a_hierarchical_task_name_class_depth():
  with pytest.raises(ConfigError, match="set dataset.class_depth=2 so that coarse/fine/ folders are the classes"):
    tasks.build({"type": "hierarchical", "tree": "folders", "class_names": ("animal", "vehicle")}, 2)
