"""Configuration mistakes end a bin/ tool with one line a person can act on.

The in-process tests check what `cli.configure` decides per tool; the
subprocess tests run the bin/ scripts as a user does and assert the exit
status and the one line on stderr: no traceback, no dump of the gin config.
"""
import json
import os
import subprocess
import sys

import gin
import pytest

from effnet_gin import cli
from effnet_gin import config_errors
from effnet_gin import gin_paths
from effnet_gin.data import pipeline as data_pipeline
from effnet_gin.data.writers import fake_imagenet
from trainer_helpers import BIN
from trainer_helpers import script
from trainer_helpers import subprocess_env

# ---------------------------------------------------------------------------
# In process: what each tool requires.
# ---------------------------------------------------------------------------

FINETUNE = ["b0_cpu.gin", "finetune.gin"]


def test_the_trainer_needs_init_checkpoint_and_says_where_it_is_used():
  with pytest.raises(config_errors.ConfigError) as error:
    cli.configure(FINETUNE, data_dir="/data", role="train", needs_input=True)
  message = str(error.value)
  assert message.startswith("INIT_CHECKPOINT (a model_dir, ckpt-N, or a "
                            "reference checkpoint directly) is used")
  assert "finetune.gin:" in message and "%INIT_CHECKPOINT" in message


@pytest.mark.parametrize("role", ["evaluate", "export", "predict"])
def test_other_tools_do_not_need_what_only_the_trainer_uses(role):
  cli.configure(FINETUNE, data_dir="/data", role=role,
                needs_input=role == "evaluate")
  assert gin.query_parameter("INIT_CHECKPOINT/macro.value") is None


def test_a_trainer_only_required_value_is_waived_for_the_evaluator(tmp_path):
  overlay = tmp_path / "overlay.gin"
  overlay.write_text("effnet_gin.train.train.seed = %gin.REQUIRED\n")
  cli.configure(["b0_cpu.gin", str(overlay)], data_dir="/d", role="evaluate")
  with pytest.raises(ValueError, match="seed"):
    gin.clear_config()
    cli.configure(["b0_cpu.gin", str(overlay)], data_dir="/d", role="train")


def test_an_addition_alone_names_a_base_config():
  with pytest.raises(config_errors.ConfigError) as error:
    cli.configure(["finetune.gin"], data_dir="/data", role="evaluate")
  assert str(error.value).startswith(
      "effnet_gin.train.evaluate needs eval_batch_size and image_size, which "
      "no --gin_file binds; finetune.gin is an addition: give it after a "
      "base config such as b0_cpu.gin (base configs: b0_cpu.gin, ")


def test_no_input_source_is_named_before_anything_is_built(tmp_path):
  own = tmp_path / "own.gin"
  own.write_text("include 'train_reference.gin'\ninclude 'model_b0.gin'\n"
                 "NUM_CLASSES = 10\nNUM_TRAIN_IMAGES = 64\n"
                 "NUM_EVAL_IMAGES = 16\n")
  with pytest.raises(config_errors.ConfigError, match="--data_dir=DIR"):
    cli.configure([str(own)], role="train", needs_input=True)


def test_base_configs_are_the_shipped_files_no_other_includes():
  files = config_errors.ConfigFiles(gin_paths.read_text,
                                    gin_paths.resolve_include)
  bases = config_errors.base_configs(files, gin_paths.shipped_paths(),
                                     "effnet_gin.train.train.train_steps")
  assert {"b0_cpu.gin", "b0_tpu.gin", "b7_tpu.gin", "demo.gin"} <= set(bases)
  assert not {"train_reference.gin", "finetune.gin", "smoke.gin"} & set(bases)


@pytest.mark.parametrize("binding,expected", [
    ("effnet_gin.train.train.trian_steps = 3",
     "in 'effnet_gin.train.train.trian_steps = 3' (a flag or --gin_param): "
     "Configurable 'effnet_gin.train.train' doesn't have a parameter named "
     "'trian_steps'; did you mean 'train_steps'?"),
    ("build_model.widht_coefficient = 0.5",
     "in 'build_model.widht_coefficient = 0.5' (a flag or --gin_param): "
     "Configurable 'build_model' doesn't have a parameter named "
     "'widht_coefficient'; did you mean 'width_coefficient'?"),
    ("effnet_gin.data.build_dataset.source = @TFRecordSorce()",
     "in 'effnet_gin.data.build_dataset.source = @TFRecordSorce()' (a flag or "
     "--gin_param): No configurable matching reference '@TFRecordSorce()'; "
     "did you mean 'effnet_gin.data.TFRecordSource'?"),
    ("TRAIN_STEPS = (3",
     "gin cannot parse a binding: EOF in multi-line statement (a bracket or "
     "quote left open?)"),
])
def test_an_unknown_or_broken_binding_is_told_in_one_line(binding, expected):
  with pytest.raises(cli.CONFIG_ERRORS) as error:
    cli.configure(["demo.gin"], [binding], role="train")
  assert cli.explain(error.value) == expected


def test_a_syntax_error_in_a_file_names_file_and_line(tmp_path):
  broken = tmp_path / "broken.gin"
  broken.write_text("include 'demo.gin'\nTRAIN_STEPS = 3 +\n")
  with pytest.raises(cli.CONFIG_ERRORS) as error:
    cli.configure([str(broken)], role="train")
  assert cli.explain(error.value).startswith(f"{broken}:2: ")


def test_a_misspelt_gin_file_name_gets_the_closest_shipped_name():
  with pytest.raises(FileNotFoundError) as error:
    cli.resolve_gin_file("b0_cpu_v2.gin")
  assert str(error.value).startswith(
      "gin file 'b0_cpu_v2.gin' is neither an existing path nor a shipped "
      "config; did you mean 'b0_cpu.gin'? (shipped configs, in ")


@pytest.mark.parametrize("word,candidates,expected", [
    ("trian_steps", ["train_steps", "eval_steps"], "train_steps"),
    ("b0_tpu_v2.gin", ["b0_tpu.gin", "b0_cpu.gin"], "b0_tpu.gin"),
    ("zzz", ["train_steps"], None),
])
def test_suggest_picks_the_closest_name(word, candidates, expected):
  assert config_errors.suggest(word, candidates) == expected


# ---------------------------------------------------------------------------
# The bin/ scripts, as a user runs them.
# ---------------------------------------------------------------------------

_TYPO_GIN = ("include 'demo.gin'\n\n"
             "effnet_gin.model.build_model.widht_coefficient = 0.5\n")

# name: (tool, arguments after the tool, what the line must say).
_CASES = {
    "addition_alone":
        ("trainer", ["--gin_file=finetune.gin", "--data_dir=/d"],
         "trainer: effnet_gin.train.train needs train_steps, train_batch_size, "
         "image_size and num_train_images, which no --gin_file binds; "
         "finetune.gin is an addition: give it after a base config such as "
         "b0_cpu.gin"),
    "unknown_in_file":
        ("exporter", ["--gin_file={typo}", "--export_dir={tmp}/export"],
         "exporter: {typo}:3: Configurable 'effnet_gin.model.build_model' "
         "doesn't have a parameter named 'widht_coefficient'; did you mean "
         "'width_coefficient'?"),
    "unknown_configurable":
        ("evaluator",
         ["--gin_file=demo.gin", "--gin_param=build_modle.dropout_rate = 0.1"
         ], "evaluator: in 'build_modle.dropout_rate = 0.1' (a flag or "
         "--gin_param): No configurable matching 'build_modle'; did you mean "
         "'effnet_gin.model.build_model'?"),
    "predict_without_config":
        ("predict", ["{tmp}/a.jpg"],
         "predict: give --gin_file: the files the run was trained with"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Runs every case's tool at once (each is mostly TensorFlow's import)."""
  tmp = tmp_path_factory.mktemp("config_errors")
  typo = tmp / "typo.gin"
  typo.write_text(_TYPO_GIN)
  started = {}
  for name, (tool, args, _) in _CASES.items():
    args = [a.format(tmp=tmp, typo=typo) for a in args]
    started[name] = subprocess.Popen([
        sys.executable,
        os.path.join(BIN, tool), f"--model_dir={tmp}/{name}", *args
    ], env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
  results = {}
  for name, process in started.items():
    _, stderr = process.communicate(timeout=300)
    results[name] = (process.returncode, stderr)
  return tmp, typo, results


@pytest.mark.parametrize("name", sorted(_CASES))
def test_a_bad_configuration_ends_the_tool_with_one_line(name, runs):
  tmp, typo, results = runs
  tool, _, expected = _CASES[name]
  returncode, stderr = results[name]
  assert returncode == 1, stderr[-2000:]
  assert "Traceback" not in stderr
  assert "# Parameters for" not in stderr  # No dump of the gin config.
  lines = [line for line in stderr.splitlines() if line.startswith(f"{tool}: ")]
  assert len(lines) == 1, stderr[-2000:]
  assert lines[0].startswith(expected.format(tmp=tmp, typo=typo))
  assert len(lines[0]) < 400


# ---------------------------------------------------------------------------
# A reference command line without --gin_file, and evaluating with README's
# fine-tuning files.
# ---------------------------------------------------------------------------

# smoke.gin's sizes, as the reference's flags.
_TINY_FLAGS = [
    "--width_coefficient=0.1", "--depth_coefficient=0.1",
    "--input_image_size=32", "--num_label_classes=10", "--num_train_images=64",
    "--num_eval_images=16", "--eval_batch_size=8"
]


def test_a_reference_command_line_trains_and_readme_finetune_files_evaluate(
    tmp_path):
  data_dir, model_dir = tmp_path / "data", tmp_path / "model"
  fake_imagenet.write_fake_imagenet(str(data_dir), num_train=64, num_eval=16,
                                    num_classes=10, image_size=40,
                                    train_shards=2, eval_shards=1,
                                    kind="random")
  env = subprocess_env()
  env.pop("TPU_NAME", None)
  # main.py's flags, main.py → bin/trainer; no --gin_file.
  train = subprocess.run([
      sys.executable,
      os.path.join(BIN, "trainer"), "--use_tpu=False", f"--data_dir={data_dir}",
      f"--model_dir={model_dir}", "--mode=train", "--train_batch_size=8",
      "--train_steps=2", "--iterations_per_loop=1", "--transpose_input=False",
      f"--export_dir={tmp_path}/export", *_TINY_FLAGS
  ], env=env, capture_output=True, text=True, timeout=300, check=False)
  assert train.returncode == 0, train.stderr[-3000:]
  assert "running the reference recipe b0_cpu.gin" in train.stderr
  assert "--transpose_input is the reference's and ignored" in train.stderr
  assert (model_dir / "ckpt-2.index").exists()
  assert (tmp_path / "export" / "saved_model.pb").exists()  # --export_dir

  # main.py --mode=eval: continuous evaluation, to the run's final step.
  evaluate = subprocess.run([
      sys.executable,
      os.path.join(BIN, "trainer"), "--use_tpu=False", f"--data_dir={data_dir}",
      f"--model_dir={model_dir}", "--mode=eval", *_TINY_FLAGS
  ], env=env, capture_output=True, text=True, timeout=300, check=False)
  assert evaluate.returncode == 0, evaluate.stderr[-3000:]
  assert "Evaluated the final checkpoint (step >= 2); done" in evaluate.stderr

  # README's fine-tuning files, no INIT_CHECKPOINT: the evaluator needs none.
  model_gin = tmp_path / "model.gin"
  model_gin.write_text(
      "MODEL_NAME = 'efficientnet-b0'\nNUM_CLASSES = 10\nIMAGE_SIZE = 32\n"
      "effnet_gin.model.build_model.width_coefficient = 0.1\n"
      "effnet_gin.model.build_model.depth_coefficient = 0.1\n")
  evaluate = subprocess.run([
      sys.executable,
      os.path.join(
          BIN, "evaluator"), "--gin_file=b0_cpu.gin", f"--gin_file={model_gin}",
      "--gin_file=finetune.gin", f"--data_dir={data_dir}",
      f"--model_dir={model_dir}", f"--checkpoint={model_dir}/ckpt-2",
      "--num_eval_images=16", "--eval_batch_size=8"
  ], env=env, capture_output=True, text=True, timeout=300, check=False)
  assert evaluate.returncode == 0, evaluate.stderr[-3000:]
  assert f"Evaluated {model_dir}/ckpt-2 (step 2" in evaluate.stderr
  with open(model_dir / "eval" / "results.jsonl") as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps == [2]


def test_a_misspelt_macro_is_named_with_the_closest_set_one(caplog):
  cli.configure(["b0_cpu.gin"], ["TRAIN_STEP = 100"], data_dir="/d",
                role="train")
  assert "TRAIN_STEP is set but no binding uses it; did you mean " \
         "TRAIN_STEPS?" in caplog.text
  gin.clear_config()
  with pytest.raises(
      config_errors.ConfigError,
      match=(r"^TRAIN_STEP is used but never set: .*\(or did you mean "
             r"TRAIN_STEPS\?\)$")):
    cli.configure(["b0_cpu.gin"], [
        "TRAIN_STEPS = 100", "effnet_gin.train.train.train_steps = "
        "%TRAIN_STEP"
    ], data_dir="/d", role="train")


# ---------------------------------------------------------------------------
# Mistakes found once the tool runs: one line too (`preflight.run`).
# ---------------------------------------------------------------------------

# name: (tool, arguments, what the last line of stderr must start with).
_RUNTIME_CASES = {
    "trainer_negative_batch": ("trainer", [
        "--gin_file=demo.gin", "--model_dir={tmp}/t", "--train_batch_size=-8"
    ], "trainer: --train_batch_size must be positive, got -8"),
    "trainer_without_model_dir":
        ("trainer", ["--gin_file=demo.gin"],
         "Pass --helpshort or --helpfull to see help on flags."),
    "evaluator_missing_checkpoint": ("evaluator", [
        "--gin_file=demo.gin", "--model_dir={tmp}/e",
        "--checkpoint={tmp}/nope/ckpt-7"
    ], "evaluator: checkpoint '{tmp}/nope/ckpt-7' does not exist (no "
                                     "{tmp}/nope/ckpt-7.index)"),
    "exporter_missing_checkpoint": ("exporter", [
        "--gin_file=demo.gin", "--model_dir={tmp}/x", "--export_dir={tmp}/out",
        "--checkpoint={tmp}/nope"
    ], "exporter: checkpoint '{tmp}/nope' does not exist (no "
                                    "{tmp}/nope.index)"),
    "exporter_model_dir_without_checkpoints": ("exporter", [
        "--gin_file=demo.gin", "--model_dir={tmp}", "--export_dir={tmp}/out2"
    ], "exporter: no checkpoint in directory '{tmp}'"),
    "predict_missing_checkpoint": ("predict", [
        "--gin_file=demo.gin", "--model_dir={tmp}/p", "--checkpoint={tmp}/nope",
        "{tmp}/a.jpg"
    ], "predict: checkpoint '{tmp}/nope' does not exist (no "
                                   "{tmp}/nope.index)"),
    "import_checkpoint_missing_source":
        ("import_checkpoint", ["--source={tmp}/nope", "--model_dir={tmp}/i"],
         "import_checkpoint: checkpoint '{tmp}/nope' does not exist (no "
         "{tmp}/nope.index)"),
    "model_info_unknown_variant":
        ("model_info", ["--variant=efficientnet-b99"],
         "model_info: Unknown EfficientNet variant 'efficientnet-b99'"),
}


@pytest.fixture(scope="module")
def runtime_runs(tmp_path_factory):
  """Runs every runtime case at once."""
  tmp = tmp_path_factory.mktemp("runtime_errors")
  started = {
      name:
          subprocess.Popen(
              script(tool) + [a.format(tmp=tmp)
                              for a in args], env=subprocess_env(),
              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for name, (tool, args, _) in _RUNTIME_CASES.items()
  }
  results = {}
  for name, process in started.items():
    _, stderr = process.communicate(timeout=300)
    results[name] = (process.returncode, stderr)
  return tmp, results


@pytest.mark.parametrize("name", sorted(_RUNTIME_CASES))
def test_a_mistake_found_at_run_time_ends_the_tool_with_one_line(
    name, runtime_runs):
  tmp, results = runtime_runs
  _, _, expected = _RUNTIME_CASES[name]
  returncode, stderr = results[name]
  assert returncode == 1, stderr[-2000:]
  assert "Traceback" not in stderr, stderr[-2000:]
  last = stderr.strip().splitlines()[-1]
  assert last.startswith(expected.format(tmp=tmp)), stderr[-2000:]
  assert len(last) < 2000  # model_info lists the known variants.


def test_a_bug_keeps_its_traceback_and_a_mistake_does_not():
  # ValueError from effnet_gin's own checks is a mistake; from elsewhere (a
  # bug in a library call) it is not.
  with pytest.raises(ValueError) as own:
    data_pipeline.eval_quotas([3], 9)
  assert config_errors.is_mistake(own.value)
  assert config_errors.mistake_line(own.value).startswith("num_eval_examples")
  with pytest.raises(ValueError) as foreign:
    int("x")
  assert not config_errors.is_mistake(foreign.value)
  assert not config_errors.is_mistake(KeyError("k"))
  assert config_errors.is_mistake(FileNotFoundError(2, "No such file", "/x"))
