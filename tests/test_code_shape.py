"""The library stays easy to read: short modules and functions, gin at the top.

Limits from the project's style: no module in effnet_gin/ over 400 lines, no
function body (its docstring aside) over 60 lines, and gin imported only by
configurables.py and cli.py, the top.
"""
import ast
import os

import pytest

PACKAGE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "effnet_gin")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
GIN_MODULES = {"configurables.py", "cli.py"}


def _modules():
  for root, _, files in os.walk(PACKAGE):
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(root, name)
        yield os.path.relpath(path, PACKAGE), path


MODULES = dict(_modules())


def _body_lines(node):
  body = node.body
  if (body and isinstance(body[0], ast.Expr) and
      isinstance(body[0].value, ast.Constant) and
      isinstance(body[0].value.value, str)):
    body = body[1:]
  if not body:
    return 0
  return node.end_lineno - body[0].lineno + 1


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_short(name):
  with open(MODULES[name]) as f:
    lines = f.read().count("\n")
  assert lines <= MAX_MODULE_LINES, f"{name} has {lines} lines"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_functions_are_short(name):
  with open(MODULES[name]) as f:
    tree = ast.parse(f.read())
  long = [
      f"{node.name} (line {node.lineno}): {_body_lines(node)} lines"
      for node in ast.walk(tree)
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and
      _body_lines(node) > MAX_FUNCTION_LINES
  ]
  assert not long, f"{name}: {long}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_only_the_top_imports_gin(name):
  with open(MODULES[name]) as f:
    tree = ast.parse(f.read())
  imported = {
      alias.name.split(".")[0] for node in ast.walk(tree)
      if isinstance(node, ast.Import) for alias in node.names
  }
  imported |= {
      node.module.split(".")[0]
      for node in ast.walk(tree)
      if isinstance(node, ast.ImportFrom) and node.module
  }
  if os.path.basename(name) not in GIN_MODULES:
    assert "gin" not in imported, f"{name} imports gin"
