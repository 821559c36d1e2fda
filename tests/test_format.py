"""The tree keeps one style: yapf's (.style.yapf) and double quotes.

A change formatted by hand another way fails here; run
`yapf -i -p -r effnet_gin tests bench` and `yapf -i bin/*` to fix it.
"""
import io
import os
import subprocess
import sys
import tokenize

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python_files():
  found = []
  for folder in ("effnet_gin", "tests", "bench", "bin"):
    for root, _, files in os.walk(os.path.join(ROOT, folder)):
      for name in sorted(files):
        path = os.path.join(root, name)
        if name.endswith(".py") or folder == "bin":
          found.append(path)
  return found


FILES = _python_files()


def test_every_python_file_is_formatted_with_yapf():
  completed = subprocess.run([
      sys.executable, "-m", "yapf", "--diff", "--parallel",
      f"--style={os.path.join(ROOT, '.style.yapf')}", *FILES
  ], capture_output=True, text=True, timeout=600)
  assert completed.returncode == 0, (
      "not formatted with yapf (run yapf -i on them):\n" +
      completed.stdout[-3000:] + completed.stderr[-1000:])


def _single_quoted(path):
  with open(path, encoding="utf-8") as f:
    tokens = tokenize.generate_tokens(io.StringIO(f.read()).readline)
    for token in tokens:
      if token.type != tokenize.STRING:
        continue
      literal = token.string.lstrip("rRbBuUfF")
      if literal.startswith("'") and not literal.startswith("'''") and (
          '"' not in literal):
        yield f"{os.path.relpath(path, ROOT)}:{token.start[0]}: {token.string}"


@pytest.mark.parametrize("path", FILES,
                         ids=[os.path.relpath(p, ROOT) for p in FILES])
def test_strings_use_double_quotes(path):
  single = list(_single_quoted(path))
  assert not single, "single-quoted strings:\n" + "\n".join(single[:10])
