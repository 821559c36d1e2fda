"""The reference's flags: each one means the gin binding the table says.

Every test parses a real command line with absl (a fresh `FlagValues` with
the bin/ scripts' flags) and real shipped `.gin` files with gin, then reads
what gin holds, so a flag whose binding gin resolves differently, or whose
value is converted wrongly, fails here.
"""
import logging
import os

from absl import flags
import gin
import pytest

from effnet_gin import cli
from effnet_gin import reference_flags

_T = "effnet_gin.train.train"
_E = "effnet_gin.train.evaluate"
_M = "effnet_gin.model.build_model"
_D = "effnet_gin.data.build_dataset"
_S = "effnet_gin.train.build_schedule"
_O = "effnet_gin.train.build_optimizer"
_B = "effnet_gin.data.BigtableSource"

# flag: (value on the command line, {binding key: the value gin must hold}).
# Written out here, not derived from the table, so that a changed binding
# in the table fails until README's table and this one agree.
EXPECTED = {
    "tpu": ("my-tpu", {
        "effnet_gin.train.build_strategy.tpu": "my-tpu"
    }),
    "zone": ("us-central1-b", {
        "effnet_gin.train.build_strategy.zone": "us-central1-b"
    }),
    "project": ("my-project", {
        "effnet_gin.train.build_strategy.project": "my-project"
    }),
    "use_tpu": ("false", {
        "effnet_gin.train.build_strategy.kind": "auto"
    }),
    "use_bfloat16": ("false", {
        f"{_T}.precision": "float32",
        f"{_E}.precision": "float32"
    }),
    "model_name": ("efficientnet-b3", {
        "MODEL_NAME": "efficientnet-b3"
    }),
    "input_image_size": ("256", {
        "IMAGE_SIZE": 256
    }),
    "num_label_classes": ("10", {
        "NUM_CLASSES": 10
    }),
    "dropout_rate": ("0.5", {
        f"{_M}.dropout_rate": 0.5
    }),
    "survival_prob": ("0.7", {
        f"{_M}.survival_prob": 0.7
    }),
    "depth_coefficient": ("0.1", {
        f"{_M}.depth_coefficient": 0.1
    }),
    "width_coefficient": ("0.1", {
        f"{_M}.width_coefficient": 0.1
    }),
    "batch_norm_momentum": ("0.9", {
        f"{_M}.batch_norm_momentum": 0.9
    }),
    "batch_norm_epsilon": ("0.01", {
        f"{_M}.batch_norm_epsilon": 0.01
    }),
    "batch_norm_batch_size": ("256", {
        "effnet_gin.model.distributed_batch_norm.batch_norm_batch_size": 256
    }),
    "num_train_images": ("64", {
        "NUM_TRAIN_IMAGES": 64
    }),
    "num_eval_images": ("16", {
        "NUM_EVAL_IMAGES": 16
    }),
    "holdout_shards": ("20", {
        "HOLDOUT_TRAIN_SHARDS": 20
    }),
    "augment_name": ("randaugment", {
        f"{_D}.augment": "randaugment"
    }),
    "randaug_num_layers": ("3", {
        f"{_D}.randaugment_layers": 3
    }),
    "randaug_magnitude": ("17", {
        f"{_D}.randaugment_magnitude": 17
    }),
    "mixup_alpha": ("0.2", {
        f"{_D}.mixup_alpha": 0.2
    }),
    "use_cache": ("true", {
        f"{_D}.cache": True
    }),
    "bigtable_train_prefix": ("tr_", {
        f"{_B}.train_prefix": "tr_"
    }),
    "bigtable_eval_prefix": ("ev_", {
        f"{_B}.eval_prefix": "ev_"
    }),
    "bigtable_column_family": ("cf", {
        f"{_B}.column_family": "cf"
    }),
    "bigtable_column_qualifier": ("cq", {
        f"{_B}.column_qualifier": "cq"
    }),
    "mode": ("train_and_eval", {
        f"{_T}.mode": "train_and_eval"
    }),
    "train_steps": ("10", {
        "TRAIN_STEPS": 10
    }),
    "train_batch_size": ("64", {
        "TRAIN_BATCH_SIZE": 64
    }),
    "eval_batch_size": ("32", {
        "EVAL_BATCH_SIZE": 32
    }),
    "iterations_per_loop": ("100", {
        "STEPS_PER_LOOP": 100
    }),
    "steps_per_eval": ("500", {
        f"{_T}.steps_per_eval": 500
    }),
    "eval_timeout": ("60", {
        f"{_E}.eval_timeout": 60.0
    }),
    "log_step_count_steps": ("64", {
        f"{_T}.log_every_steps": 64
    }),
    "base_learning_rate": ("0.032", {
        f"{_S}.base_learning_rate": 0.032
    }),
    "lr_schedule": ("poly", {
        f"{_S}.kind": "polynomial"
    }),
    "lr_decay_epoch": ("3.0", {
        f"{_S}.decay_epochs": 3.0
    }),
    "lr_decay_factor": ("0.9", {
        f"{_S}.decay_factor": 0.9
    }),
    "lr_warmup_epochs": ("2", {
        f"{_S}.warmup_epochs": 2.0
    }),
    "optimizer": ("lars", {
        f"{_O}.name": "lars"
    }),
    "lars_weight_decay": ("0.0001", {
        f"{_O}.lars_weight_decay": 0.0001
    }),
    "lars_epsilon": ("1e-08", {
        f"{_O}.lars_epsilon": 1e-8
    }),
    "weight_decay": ("0.0001", {
        f"{_T}.weight_decay": 0.0001
    }),
    "label_smoothing": ("0.2", {
        f"{_T}.label_smoothing": 0.2
    }),
    "moving_average_decay": ("0.999", {
        "effnet_gin.train.ExponentialMovingAverage.decay": 0.999
    }),
}

# The flags of eval_ckpt_main.py and export_model.py, bin/evaluator's and
# bin/exporter's: flag: (tool, value, {binding key: value gin must hold}).
TOOL_EXPECTED = {
    "enable_ema": ("exporter", "false", {
        f"{_E}.use_ema": False,
        "effnet_gin.train.export.use_ema": False
    }),
    "include_background_label": ("evaluator", "true", {
        "effnet_gin.data.ImageGlobSource.label_offset": -1
    }),
    "image_size": ("exporter", "64", {
        "IMAGE_SIZE": 64
    }),
    "num_steps": ("exporter", "500", {
        "effnet_gin.train.export_lite.calibration_images": 500
    }),
    "runmode": ("evaluator", "imagenet", {}),
}
_ROLE = {"evaluator": "evaluate", "exporter": "export", None: "train"}


def parse(*args, tool=None, own=()):
  """absl-parses `prog *args` with the bin/ scripts' flags (and the string
  flags `own` of the tool itself); returns both."""
  flag_values = flags.FlagValues()
  cli.define_common_flags(flag_values, tool=tool)
  for name in own:
    flags.DEFINE_string(name, None, "", flag_values=flag_values)
  argv = ["prog", *args]
  flag_values(argv)
  return flag_values, argv


def configure(*args, role="train", tool=None):
  """Configures gin from a command line, as a bin/ script does."""
  flag_values, argv = parse(*args, tool=tool)
  return cli.configure_from_flags(flag_values, role=role, argv=argv)


def query(key):
  """What gin holds for a binding key or a macro (evaluating `@fn()`)."""
  if "." not in key:
    value = gin.query_parameter(f"{key}/macro.value")
    if isinstance(value, gin.config.ConfigurableReference) and value.evaluate:
      value = value.scoped_configurable_fn()
    return value
  return gin.query_parameter(key)


def test_every_alias_of_the_table_is_tested_here():
  assert set(EXPECTED) | set(TOOL_EXPECTED) == set(reference_flags.BY_FLAG)
  for flag, (tool, _, _) in TOOL_EXPECTED.items():
    assert tool in reference_flags.BY_FLAG[flag].tools


@pytest.mark.parametrize("flag", sorted(TOOL_EXPECTED))
def test_a_tool_flag_sets_what_its_gin_binding_sets(flag):
  tool, value, expected = TOOL_EXPECTED[flag]
  configure("--gin_file=b0_cpu.gin", f"--{flag}={value}", role=_ROLE[tool],
            tool=tool)
  assert {key: query(key) for key in expected} == expected
  by_flag = gin.config_str()
  gin.clear_config()
  configure(
      "--gin_file=b0_cpu.gin", *[
          f"--gin_param={key} = {gin_value!r}"
          for key, gin_value in expected.items()
      ], role=_ROLE[tool], tool=tool)
  assert gin.config_str() == by_flag


def test_a_tool_flag_is_only_that_tools():
  with pytest.raises(flags.UnrecognizedFlagError):
    parse("--num_steps=5", tool="evaluator")
  with pytest.raises(flags.UnrecognizedFlagError):
    parse("--imagenet_eval_glob=x", tool="exporter")


def test_the_image_glob_flags_select_the_glob_source():
  glob = "effnet_gin.data.ImageGlobSource"
  args = ("--imagenet_eval_glob=/val/*.JPEG", "--imagenet_eval_label=/l.txt",
          "--num_images=7")
  configure("--gin_file=b0_cpu.gin", *args, role="evaluate", tool="evaluator")
  assert query(f"{glob}.pattern") == "/val/*.JPEG"
  assert query(f"{glob}.labels_file") == "/l.txt"
  assert query(f"{glob}.num_images") == 7
  assert query("effnet_gin.data.build_dataset.num_eval_examples") is None
  with pytest.raises(ValueError, match="needs --imagenet_eval_label"):
    configure("--gin_file=b0_cpu.gin", args[0], role="evaluate",
              tool="evaluator")
  with pytest.raises(ValueError, match="name input sources; give one"):
    configure("--gin_file=b0_cpu.gin", "--data_dir=/d", *args, role="evaluate",
              tool="evaluator")


@pytest.mark.parametrize(
    "tool,reference,ours",
    [(tool, reference, ours)
     for tool, names in reference_flags.TOOL_SYNONYMS.items()
     for reference, (_, ours) in names.items()])
def test_a_tools_reference_names_read_as_its_flags(tool, reference, ours):
  flag_values, _ = parse(f"--{reference}=/x", tool=tool, own=[ours])
  assert cli.tool_flag(flag_values, ours, tool) == "/x"
  flag_values, _ = parse(f"--{reference}=/x", f"--{ours}=/y", tool=tool,
                         own=[ours])
  assert cli.tool_flag(flag_values, ours, tool) == "/y"


def test_runmode_examples_points_to_predict():
  with pytest.raises(ValueError, match="use bin/predict"):
    configure("--gin_file=b0_cpu.gin", "--runmode=examples", role="evaluate",
              tool="evaluator")


@pytest.mark.parametrize("flag", sorted(EXPECTED))
def test_a_flag_sets_what_its_gin_binding_sets(flag):
  value, expected = EXPECTED[flag]
  configure("--gin_file=b0_cpu.gin", f"--{flag}={value}")
  assert {key: query(key) for key in expected} == expected
  by_flag = gin.config_str()
  gin.clear_config()
  configure(
      "--gin_file=b0_cpu.gin", *[
          f"--gin_param={key} = {gin_value!r}"
          for key, gin_value in expected.items()
      ])
  assert gin.config_str() == by_flag


@pytest.mark.parametrize("synonym,ours,key", [
    ("tpu_zone", "zone", "effnet_gin.train.build_strategy.zone"),
    ("gcp_project", "project", "effnet_gin.train.build_strategy.project"),
])
def test_the_reference_names_of_our_flags_set_the_same(synonym, ours, key):
  configure("--gin_file=b0_cpu.gin", f"--{synonym}=x")
  assert query(key) == "x"
  gin.clear_config()
  configure("--gin_file=b0_cpu.gin", f"--{ours}=y", f"--{synonym}=x")
  assert query(key) == "x"  # The later one.


def test_gcp_project_is_the_default_bigtable_project_as_in_the_reference():
  configure("--gin_file=b0_cpu.gin", "--gcp_project=p", "--bigtable_instance=i")
  assert query("effnet_gin.data.BigtableSource.project") == "p"


def test_moving_average_decay_zero_disables_the_average_everywhere():
  configure("--gin_file=b0_cpu.gin", "--moving_average_decay=0")
  for selector in (_T, _E, "effnet_gin.train.export"):
    assert query(f"{selector}.use_ema") is False
  assert query("effnet_gin.train.ExponentialMovingAverage.decay") == 0.9999


def test_mode_eval_binds_nothing_the_trainer_runs_the_evaluator():
  assert configure("--gin_file=b0_cpu.gin", "--mode=eval",
                   role="evaluate") == []
  assert query(f"{_T}.mode") == "train"


@pytest.mark.parametrize("flag,value", [("mode", "predict"),
                                        ("train_batch_size", "0"),
                                        ("train_steps", "-3")])
def test_values_the_flags_do_not_take_are_rejected(flag, value):
  with pytest.raises(ValueError, match=f"--{flag}"):
    configure("--gin_file=b0_cpu.gin", f"--{flag}={value}")


@pytest.mark.parametrize("flag", sorted(reference_flags.IGNORED))
def test_ignored_flags_are_accepted_logged_and_bind_nothing(flag, caplog):
  kind = reference_flags.IGNORED[flag][0]
  value = {"bool": "false", "integer": "8", "string": "x"}[kind]
  configure("--gin_file=b0_cpu.gin")
  without = gin.config_str()
  gin.clear_config()
  with caplog.at_level(logging.WARNING):
    configure("--gin_file=b0_cpu.gin", f"--{flag}={value}")
  assert gin.config_str() == without
  assert f"--{flag} is the reference's and ignored here" in caplog.text


# ---------------------------------------------------------------------------
# A flag and a --gin_param for the same binding: the later one wins.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("args,expected", [
    (["--train_steps=5", "--gin_param=TRAIN_STEPS = 7"], 7),
    (["--gin_param=TRAIN_STEPS = 7", "--train_steps=5"], 5),
    (["--gin_param", "TRAIN_STEPS = 7", "--train_steps", "5"], 5),
    (["--train_steps", "5", "--gin_param", "TRAIN_STEPS = 7"], 7),
    (["--train_steps=5", "--gin_param=TRAIN_STEPS = 7", "--train_steps=6"], 6),
])
def test_of_a_flag_and_a_gin_param_the_later_wins(args, expected):
  configure("--gin_file=b0_cpu.gin", *args)
  assert query("TRAIN_STEPS") == expected


def test_the_later_wins_for_a_configurable_parameter_too():
  key = f"{_S}.base_learning_rate"
  configure("--gin_file=b0_cpu.gin", "--base_learning_rate=0.1",
            f"--gin_param={key} = 0.2")
  assert query(key) == 0.2
  gin.clear_config()
  configure("--gin_file=b0_cpu.gin", f"--gin_param={key} = 0.2",
            "--base_learning_rate=0.1")
  assert query(key) == 0.1


def test_a_negated_boolean_flag_keeps_its_place(tmp_path):
  key = "effnet_gin.train.build_strategy.kind"
  configure("--gin_file=b0_cpu.gin", f"--gin_param={key} = 'tpu'",
            "--nouse_tpu")
  assert query(key) == "auto"


def test_flags_in_a_flagfile_keep_their_place(tmp_path):
  flagfile = tmp_path / "flags.txt"
  flagfile.write_text("--train_steps=5\n")
  configure("--gin_file=b0_cpu.gin", "--gin_param=TRAIN_STEPS = 7",
            f"--flagfile={flagfile}")
  assert query("TRAIN_STEPS") == 5


# ---------------------------------------------------------------------------
# Without --gin_file: the reference recipe for this machine.
# ---------------------------------------------------------------------------


def test_without_gin_file_the_trainer_runs_the_cpu_recipe_in_train_and_eval(
    monkeypatch, caplog):
  monkeypatch.delenv("TPU_NAME", raising=False)
  with caplog.at_level(logging.INFO):
    configure("--data_dir=/data")
  assert "running the reference recipe b0_cpu.gin" in caplog.text
  assert query("TRAIN_BATCH_SIZE") == 32  # hw_cpu.gin's.
  assert query(f"{_T}.mode") == "train_and_eval"  # main.py's default.
  gin.clear_config()
  configure("--data_dir=/data", "--mode=train")
  assert query(f"{_T}.mode") == "train"


@pytest.mark.parametrize(
    "args,kind,precision",
    [
        (["--tpu=my-tpu"], "tpu", "mixed_bfloat16"),  # b0_tpu.gin
        (["--use_tpu"], "tpu", "mixed_bfloat16"),
        (["--tpu=my-tpu", "--use_tpu=false"], "auto", "float32"),  # b0_cpu.gin
    ])
def test_without_gin_file_a_named_tpu_selects_the_tpu_recipe(
    args, kind, precision, monkeypatch):
  monkeypatch.delenv("TPU_NAME", raising=False)
  configure("--data_dir=/data", *args, role="evaluate")
  assert query("effnet_gin.train.build_strategy.kind") == kind
  assert query(f"{_T}.precision") == precision


def test_readme_names_every_flag_of_the_table():
  readme = os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md")
  with open(readme, encoding="utf-8") as f:
    text = f.read()
  section = text[text.index("## Coming from the reference"):text.
                 index("## The model zoo")]
  names = (set(reference_flags.BY_FLAG) | set(reference_flags.SYNONYMS) |
           set(reference_flags.IGNORED) | set(reference_flags.SOURCE_FLAGS) | {
               name for table in (reference_flags.TOOL_SYNONYMS,
                                  reference_flags.TOOL_IGNORED,
                                  reference_flags.TOOL_REFUSED)
               for names in table.values() for name in names
           })
  assert sorted(name for name in names if f"`--{name}" not in section) == []
