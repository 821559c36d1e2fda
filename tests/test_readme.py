"""README's "From Python, without gin" example runs as it stands.

The snippet is taken from README.md, its /tmp paths moved into the test's
temporary directory, and run in a fresh interpreter: a README that names a
moved module or a changed argument fails here.
"""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python_snippet(section):
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    text = f.read()
  start = text.index(f"## {section}")
  match = re.search(r"```python\n(.*?)```", text[start:], re.DOTALL)
  assert match, f"README's section {section!r} has no python block"
  return match.group(1)


def test_the_python_example_trains_evaluates_and_exports(tmp_path):
  snippet = _python_snippet("From Python, without gin")
  assert "/tmp/effnet_py" in snippet
  code = snippet.replace("/tmp/effnet_py", str(tmp_path / "effnet_py"))
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
  completed = subprocess.run([sys.executable, "-c", code], cwd=tmp_path,
                             env=env, capture_output=True, text=True,
                             timeout=600)
  assert completed.returncode == 0, completed.stderr[-3000:]
  run = tmp_path / "effnet_py"
  assert (run / "ckpt-2.index").exists()
  assert (run / "eval" / "results.jsonl").read_text().count("\n") == 1
  assert (run / "run.json").read_text().strip() == '{"train_steps": 2}'
  assert (tmp_path / "effnet_py_serving" / "saved_model.pb").exists()
