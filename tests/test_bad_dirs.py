"""A model_dir or export_dir that cannot be written, or a data_dir without
shards, stops bin/trainer, bin/evaluator and bin/exporter with one line
before anything is built.

Read-only is a real read-only mount (root ignores permission bits): a tmpfs
remounted `ro`; without the permission to mount, those cases are skipped.
Every tool runs at once as a process; each must exit 1 with one line naming
the directory, without building a model (efficientnet.py logs its size
warning when it builds one) or taking the run lock.
"""
import subprocess

import pytest

import data_helpers
from trainer_helpers import script
from trainer_helpers import subprocess_env
from trainer_helpers import TINY_BINDINGS

# name: (tool, arguments, what the last line must start with).
_CASES = {
    "trainer_model_dir_is_a_file":
        ("trainer", ["--data_dir={data}", "--model_dir={file}"],
         "trainer: model_dir {file} is a file, not a directory"),
    "trainer_read_only_model_dir":
        ("trainer", ["--data_dir={data}", "--model_dir={ro}/run"],
         "trainer: model_dir {ro}/run is not writable ("),
    "trainer_no_train_shards":
        ("trainer", ["--data_dir={empty}", "--model_dir={tmp}/t1"],
         "trainer: no files match pattern 'train-*' in data_dir '{empty}' "
         "(the training split): check --data_dir"),
    "trainer_no_validation_shards_in_train_and_eval":
        ("trainer", ["--data_dir={train_only}", "--model_dir={tmp}/t2"],
         "trainer: no files match pattern 'validation-*' in data_dir "
         "'{train_only}' (the eval split)"),
    "evaluator_model_dir_is_a_file":
        ("evaluator", ["--data_dir={data}", "--model_dir={file}"],
         "evaluator: model_dir {file} is a file, not a directory"),
    "evaluator_read_only_model_dir":
        ("evaluator", ["--data_dir={data}", "--model_dir={ro}"],
         "evaluator: model_dir {ro} is not writable ("),
    "evaluator_no_validation_shards":
        ("evaluator", ["--data_dir={train_only}", "--model_dir={tmp}/e1"],
         "evaluator: no files match pattern 'validation-*' in data_dir "
         "'{train_only}' (the eval split)"),
    "evaluator_data_dir_missing":
        ("evaluator", ["--data_dir={tmp}/nowhere", "--model_dir={tmp}/e2"],
         "evaluator: data_dir does not exist: '{tmp}/nowhere'"),
    "exporter_export_dir_is_a_file":
        ("exporter", ["--model_dir={tmp}/x", "--export_dir={file}"],
         "exporter: export_dir {file} is a file, not a directory"),
    "exporter_read_only_export_dir":
        ("exporter", ["--model_dir={tmp}/x", "--export_dir={ro}/export"],
         "exporter: export_dir {ro} is not writable ("),
}


@pytest.fixture(scope="module")
def read_only_dir(tmp_path_factory):
  """A read-only tmpfs mount, or None when this machine cannot mount."""
  mount_point = tmp_path_factory.mktemp("read_only")
  mounted = subprocess.run(
      ["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs",
       str(mount_point)], capture_output=True, text=True, check=False)
  if mounted.returncode:
    yield None
    return
  try:
    yield mount_point
  finally:
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, read_only_dir):
  """Runs every case at once; {name: (returncode, stderr)} and the paths."""
  tmp = tmp_path_factory.mktemp("bad_dirs")
  data = data_helpers.write_imagenet_tfrecords(tmp / "data", num_train=16,
                                               num_eval=8, train_shards=1,
                                               eval_shards=1)["data_dir"]
  train_only = tmp / "train_only"
  data_helpers.write_imagenet_tfrecords(train_only, num_train=16, num_eval=8,
                                        train_shards=1, eval_shards=1)
  for path in train_only.glob("validation-*"):
    path.unlink()
  (tmp / "empty").mkdir()
  (tmp / "a_file").write_text("not a directory\n")
  paths = dict(tmp=tmp, data=data, train_only=train_only, empty=tmp / "empty",
               file=tmp / "a_file", ro=read_only_dir)
  started = {}
  for name, (tool, args, _) in _CASES.items():
    if read_only_dir is None and "{ro}" in " ".join(args):
      continue
    command = script(tool) + ["--gin_file=demo.gin"]
    command += [f"--gin_param={binding}" for binding in TINY_BINDINGS]
    command += [arg.format(**paths) for arg in args]
    started[name] = subprocess.Popen(command, env=subprocess_env(),
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
  results = {}
  for name, process in started.items():
    _, stderr = process.communicate(timeout=300)
    results[name] = (process.returncode, stderr)
  return paths, results


@pytest.mark.parametrize("name", sorted(_CASES))
def test_a_bad_directory_stops_the_tool_with_one_line_before_building(
    name, runs):
  paths, results = runs
  if name not in results:
    pytest.skip("cannot mount a read-only tmpfs here")
  tool, _, expected = _CASES[name]
  returncode, stderr = results[name]
  assert returncode == 1, stderr[-3000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  last = stderr.strip().splitlines()[-1]
  assert last.startswith(expected.format(**paths)), stderr[-3000:]
  assert len(last) < 400
  # Nothing was built or locked.
  assert "runs at 32x32 pixels" not in stderr
  assert "Holding the run lock" not in stderr
