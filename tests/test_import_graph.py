"""The package's layering: imports point down, never in a circle.

From the bottom up: model/ and data/ (the network and the input pipeline),
distribute.py, checkpoints/ (weights on disk), evaluation/ and serving/, then
train/, and at the top configurables.py and cli.py. Each folder may import
only what lies below it, and every project import sits at the top of its
module, where a reader finds a module's dependencies at once.
"""
import ast
import os

import pytest

PACKAGE_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "effnet_gin")

# The top: the gin wiring and the command line (only bin/ imports them).
TOP = ("configurables", "cli", "command_line", "config_errors", "gin_paths",
       "reference_flags", "reference_sources")
# What each part of the package must not import.
FORBIDDEN = {
    "model": ("data", "distribute", "checkpoints", "evaluation", "serving",
              "train", *TOP),
    "data": ("model", "distribute", "checkpoints", "evaluation", "serving",
             "train", *TOP),
    "distribute": ("checkpoints", "evaluation", "serving", "train", *TOP),
    "checkpoints": ("evaluation", "serving", "train", *TOP),
    "evaluation": ("serving", "train", *TOP),
    "serving": ("train", *TOP),
    "train": ("serving", *TOP),
    "configurables": ("cli", "command_line", "config_errors", "gin_paths",
                      "reference_flags"),
}


def _module_name(path):
  relative = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))
  parts = relative[:-len(".py")].split(os.sep)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _modules():
  found = {}
  for root, _, files in os.walk(PACKAGE_DIR):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(root, name)
        found[_module_name(path)] = path
  return found


MODULES = _modules()


def _project_imports(node):
  """Yields the effnet_gin modules an import statement loads."""
  if isinstance(node, ast.Import):
    for alias in node.names:
      if alias.name.startswith("effnet_gin"):
        yield alias.name
  elif isinstance(node, ast.ImportFrom) and node.module and (
      node.module.startswith("effnet_gin")):
    for alias in node.names:
      candidate = f"{node.module}.{alias.name}"
      yield candidate if candidate in MODULES else node.module


def _imports(path, top_level_only):
  with open(path) as f:
    tree = ast.parse(f.read())
  nodes = tree.body if top_level_only else ast.walk(tree)
  return {name for node in nodes for name in _project_imports(node)}


def _part(module):
  """The layer a module belongs to: `train` for effnet_gin.train.trainer."""
  return module.split(".")[1] if "." in module else "effnet_gin"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_project_import_inside_a_function(module):
  everywhere = _imports(MODULES[module], top_level_only=False)
  at_the_top = _imports(MODULES[module], top_level_only=True)
  assert everywhere == at_the_top, (
      f"{module} imports {sorted(everywhere - at_the_top)} below its top")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
  forbidden = FORBIDDEN.get(_part(module), ())
  wrong = sorted(name for name in _imports(MODULES[module], True)
                 if _part(name) in forbidden)
  assert not wrong, f"{module} ({_part(module)}/) imports {wrong}"


def test_no_import_circles():
  graph = {
      module: {name for name in _imports(path, False) if name in MODULES}
      for module, path in MODULES.items()
  }
  state = {}
  cycles = []

  def visit(module, stack):
    state[module] = "open"
    stack.append(module)
    for name in sorted(graph[module]):
      if state.get(name) == "open":
        cycles.append(" -> ".join(stack[stack.index(name):] + [name]))
      elif name not in state:
        visit(name, stack)
    stack.pop()
    state[module] = "done"

  for module in sorted(graph):
    if module not in state:
      visit(module, [])
  assert not cycles, "import circles:\n" + "\n".join(cycles)
