"""effnet_gin.cli: gin file lookup, shortcut flags → bindings, precedence.

Each test parses real shipped `.gin` files with `cli.configure` and checks
what gin ended up holding (the conftest clears the config around every test),
so a binding the flags produce under a name gin resolves differently would be
caught, not just a string in a list.
"""
import json
import os
import shutil
import subprocess
import sys

import gin
import pytest

from effnet_gin import cli
from effnet_gin.data.sources import bigtable
from effnet_gin.data.sources import generated
from effnet_gin.data.sources import tfrecord

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOISE_SOURCE_BINDING = ("effnet_gin.data.build_dataset.source = "
                        "@effnet_gin.data.RandomNoiseSource()")


def selected_source():
  """The class `build_dataset.source` refers to in the parsed config."""
  reference = gin.query_parameter("effnet_gin.data.build_dataset.source")
  return reference.configurable.wrapped


def macro(name):
  """A macro's value, with a derived one (`@fn()`, e.g. TRAIN_STEPS) computed."""
  value = gin.query_parameter(f"{name}/macro.value")
  if isinstance(value, gin.config.ConfigurableReference) and value.evaluate:
    value = value.scoped_configurable_fn()
  return value


def write_gin(path, *lines):
  path.write_text("\n".join(lines) + "\n")
  return str(path)


# ---------------------------------------------------------------------------
# resolve_gin_file and shipped_gin_dir
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["b0_tpu.gin", "b0_tpu"])
def test_resolve_gin_file_finds_a_shipped_config_by_bare_name(name):
  resolved = cli.resolve_gin_file(name)
  assert resolved == os.path.join(cli.shipped_gin_dir(), "b0_tpu.gin")
  assert os.path.isfile(resolved)


def test_resolve_gin_file_accepts_an_existing_path(tmp_path):
  path = write_gin(tmp_path / "mine.gin", "TRAIN_STEPS = 3")
  assert cli.resolve_gin_file(path) == path


def test_missing_gin_file_lists_the_shipped_configs():
  with pytest.raises(FileNotFoundError) as error:
    cli.resolve_gin_file("b9_tpu.gin")
  message = str(error.value)
  assert "'b9_tpu.gin'" in message
  for shipped in ("b0_tpu.gin", "b7_tpu.gin", "demo.gin"):
    assert shipped in message


def test_a_missing_path_is_not_replaced_by_the_shipped_file_of_that_name(
    tmp_path):
  # A typo in a directory must not silently train the shipped config.
  with pytest.raises(FileNotFoundError, match="no_such_dir"):
    cli.resolve_gin_file(str(tmp_path / "no_such_dir" / "b0_tpu.gin"))


def test_shipped_gin_dir_holds_every_shipped_config():
  names = set(os.listdir(cli.shipped_gin_dir()))
  expected = {f"b{i}_tpu.gin" for i in range(8)} | {"demo.gin", "b0_cpu.gin"}
  assert expected <= names


# ---------------------------------------------------------------------------
# Shortcut flags
# ---------------------------------------------------------------------------


def test_tpu_zone_and_project_configure_the_strategy():
  cli.configure(["b0_tpu.gin"], tpu="my-tpu", zone="us-central1-b",
                project="my-project", data_dir="gs://bucket/imagenet")
  assert gin.query_parameter("effnet_gin.train.build_strategy.tpu") == "my-tpu"
  assert (gin.query_parameter("effnet_gin.train.build_strategy.zone") ==
          "us-central1-b")
  assert (gin.query_parameter("effnet_gin.train.build_strategy.project") ==
          "my-project")
  assert gin.query_parameter("effnet_gin.train.build_strategy.kind") == "tpu"


def test_without_flags_nothing_is_bound_beyond_the_files():
  assert not cli.shortcut_bindings()
  assert cli.configure(["b0_tpu.gin"]) == []
  with pytest.raises(ValueError):
    gin.query_parameter("effnet_gin.train.build_strategy.tpu")


def test_data_dir_sets_the_tfrecord_source_directory():
  cli.configure(["b0_tpu.gin"], data_dir="gs://bucket/imagenet")
  assert selected_source() is tfrecord.TFRecordSource
  assert (gin.query_parameter("effnet_gin.data.TFRecordSource.data_dir") ==
          "gs://bucket/imagenet")
  # The file's other TFRecordSource settings survive.
  assert gin.query_parameter("effnet_gin.data.TFRecordSource.label_offset") == 1


def test_data_dir_selects_tfrecords_even_when_a_file_named_another_source(
    tmp_path):
  fake = write_gin(tmp_path / "fake.gin", NOISE_SOURCE_BINDING)
  cli.configure(["demo.gin", fake])
  assert selected_source() is generated.RandomNoiseSource  # Later files win...
  gin.clear_config()
  cli.configure(["demo.gin", fake], data_dir="/data/imagenet")
  assert selected_source() is tfrecord.TFRecordSource  # ...flags more.
  assert (gin.query_parameter("effnet_gin.data.TFRecordSource.data_dir") ==
          "/data/imagenet")


def test_bigtable_instance_selects_bigtable_with_the_tpu_project():
  cli.configure(["b0_tpu.gin"], project="tpu-project",
                bigtable_instance="my-instance")
  assert selected_source() is bigtable.BigtableSource
  assert (gin.query_parameter("effnet_gin.data.BigtableSource.project") ==
          "tpu-project")
  assert (gin.query_parameter("effnet_gin.data.BigtableSource.instance") ==
          "my-instance")
  with pytest.raises(ValueError):  # The source's own default table applies.
    gin.query_parameter("effnet_gin.data.BigtableSource.table")


def test_explicit_bigtable_project_and_table_win():
  cli.configure(["b0_tpu.gin"], project="tpu-project",
                bigtable_project="data-project",
                bigtable_instance="my-instance", bigtable_table="imagenet_v2")
  assert selected_source() is bigtable.BigtableSource
  assert (gin.query_parameter("effnet_gin.data.BigtableSource.project") ==
          "data-project")
  assert (gin.query_parameter("effnet_gin.data.BigtableSource.table") ==
          "imagenet_v2")
  # --project still names the TPU's project.
  assert (gin.query_parameter("effnet_gin.train.build_strategy.project") ==
          "tpu-project")


def test_data_dir_and_bigtable_instance_together_are_rejected():
  with pytest.raises(ValueError, match="'/data'.*'my-instance'"):
    cli.configure(["b0_tpu.gin"], project="p", data_dir="/data",
                  bigtable_instance="my-instance")


def test_bigtable_instance_without_any_project_is_rejected():
  with pytest.raises(ValueError, match="--bigtable_project or --project"):
    cli.shortcut_bindings(bigtable_instance="my-instance")


@pytest.mark.parametrize("flag", ["bigtable_project", "bigtable_table"])
def test_bigtable_settings_without_an_instance_are_rejected(flag):
  with pytest.raises(ValueError, match="--bigtable_instance"):
    cli.shortcut_bindings(**{flag: "x"})


def test_batch_size_and_steps_flags_override_the_file_macros():
  cli.configure(["b0_tpu.gin"])
  assert (macro("TRAIN_BATCH_SIZE"), macro("TRAIN_STEPS")) == (2048, 218949)
  gin.clear_config()
  cli.configure(["b0_tpu.gin"], train_batch_size=64, train_steps=10)
  assert (macro("TRAIN_BATCH_SIZE"), macro("TRAIN_STEPS")) == (64, 10)


@pytest.mark.parametrize("flag,value", [("train_batch_size", 0),
                                        ("train_steps", -3)])
def test_non_positive_sizes_are_rejected(flag, value):
  with pytest.raises(ValueError, match=f"--{flag} must be positive, got "
                     f"{value}"):
    cli.configure(["b0_tpu.gin"], **{flag: value})


# ---------------------------------------------------------------------------
# Precedence and validation in configure
# ---------------------------------------------------------------------------


def test_gin_params_win_over_shortcut_flags():
  cli.configure(["demo.gin"], data_dir="/from/flag", train_steps=5, gin_params=[
      "TRAIN_STEPS = 7",
      "effnet_gin.data.TFRecordSource.data_dir = '/from/param'"
  ])
  assert macro("TRAIN_STEPS") == 7
  assert (gin.query_parameter("effnet_gin.data.TFRecordSource.data_dir") ==
          "/from/param")


def test_a_gin_param_source_overrides_bigtable_instance():
  # Why the Bigtable end-to-end test drops the tiny RandomNoiseSource bindings.
  cli.configure(["demo.gin"], bigtable_project="p", bigtable_instance="i",
                gin_params=[NOISE_SOURCE_BINDING])
  assert selected_source() is generated.RandomNoiseSource


def test_later_gin_params_win_over_earlier_ones():
  cli.configure(["demo.gin"], gin_params=["TRAIN_STEPS = 7", "TRAIN_STEPS = 8"])
  assert macro("TRAIN_STEPS") == 8


def test_configure_returns_the_applied_bindings_and_locks_the_config():
  bindings = cli.configure(["demo.gin"], train_steps=5,
                           gin_params=["STEPS_PER_LOOP = 1"])
  assert bindings == ["TRAIN_STEPS = 5", "STEPS_PER_LOOP = 1"]
  assert gin.config_is_locked()


@pytest.mark.parametrize("binding,named", [
    ("effnet_gin.train.train.trian_steps = 3", "trian_steps"),
    ("effnet_gin.train.trainer.train_steps = 3", "effnet_gin.train.trainer"),
])
def test_unknown_names_in_gin_params_are_rejected(binding, named):
  with pytest.raises(ValueError, match=named):
    cli.configure(["demo.gin"], gin_params=[binding])


def test_unknown_names_in_gin_files_are_rejected(tmp_path):
  typo = write_gin(tmp_path / "typo.gin",
                   "effnet_gin.model.build_model.widht_coefficient = 0.5")
  with pytest.raises(ValueError, match="widht_coefficient"):
    cli.configure(["demo.gin", typo])


def test_configure_needs_a_gin_file():
  with pytest.raises(ValueError, match="--gin_file"):
    cli.configure([])


# ---------------------------------------------------------------------------
# After `pip install .`
# ---------------------------------------------------------------------------

_INSTALLED_PROBE = """
import json
import gin
import effnet_gin
from effnet_gin import cli
cli.configure(["b0_tpu"], data_dir="/data")
print(json.dumps({
    "package": effnet_gin.__file__,
    "shipped": cli.shipped_gin_dir(),
    "resolved": cli.resolve_gin_file("b0_tpu.gin"),
    "train_steps": gin.query_parameter(
        "TRAIN_STEPS/macro.value").scoped_configurable_fn(),
}))
"""


def _copy_source_tree(destination):
  """Copies what `pip install .` needs, so the build never writes into REPO."""
  ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
  for directory in ("effnet_gin", "gin_configs", "bin"):
    shutil.copytree(os.path.join(REPO, directory),
                    os.path.join(destination, directory), ignore=ignore)
  for name in ("setup.py", "README.md"):
    shutil.copy(os.path.join(REPO, name), destination)


def test_installed_package_finds_its_shipped_configs(tmp_path):
  source, target, elsewhere = (tmp_path / "src", tmp_path / "site",
                               tmp_path / "cwd")
  elsewhere.mkdir()
  _copy_source_tree(source)
  # No build isolation: the installed setuptools builds it, without network.
  install = subprocess.run([
      sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
      "--no-build-isolation", "--no-index", "--target",
      str(target),
      str(source)
  ], capture_output=True, text=True, timeout=120, check=False)
  assert install.returncode == 0, install.stderr[-3000:]

  env = dict(os.environ, PYTHONPATH=str(target), TF_CPP_MIN_LOG_LEVEL="2")
  probe = subprocess.run([sys.executable, "-c", _INSTALLED_PROBE],
                         cwd=str(elsewhere), env=env, capture_output=True,
                         text=True, timeout=120, check=False)
  assert probe.returncode == 0, probe.stderr[-3000:]
  found = json.loads(probe.stdout.strip().splitlines()[-1])
  installed_configs = str(target / "effnet_gin" / "gin_configs")
  assert found["package"].startswith(str(target))
  assert os.path.realpath(
      found["shipped"]) == os.path.realpath(installed_configs)
  assert found["resolved"] == os.path.join(found["shipped"], "b0_tpu.gin")
  assert os.path.isfile(found["resolved"])
  # b0_tpu.gin's includes resolved from the installed package too.
  assert found["train_steps"] == 218949
