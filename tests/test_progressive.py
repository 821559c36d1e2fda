"""Progressive learning (EfficientNetV2): the stage table and real runs.

Expected values are written out by hand from automl's rules (google/automl
efficientnetv2 main.py: stage i of N ends at int((i + 1) / N * steps), trains
at int(ibase + (size - ibase) * (i + 1) / N), with each regulariser at
np.linspace(min, max, N)[i]), never computed by the code under test.
"""
import functools
import glob
import os
import re
import signal

import pytest
import tensorflow as tf

from effnet_gin.data import build_dataset
from effnet_gin.data import RandomNoiseSource
from effnet_gin.model import build_model
from effnet_gin.train import optim
from effnet_gin.train import staged
from effnet_gin.train import stages
from effnet_gin.train import trainer
import trainer_helpers

PROGRESSIVE = stages.ProgressiveLearning(num_stages=4, min_image_size=128,
                                         dropout=(0.1, 0.4),
                                         randaugment_magnitude=(5, 20),
                                         mixup_alpha=(0, 0.3))


# ---------------------------------------------------------------------------
# The stage table
# ---------------------------------------------------------------------------
def test_stage_table_is_automls():
  table = stages.plan(PROGRESSIVE, train_steps=1000, image_size=300)
  assert [(s.start_step, s.end_step) for s in table] == [(0, 250), (250, 500),
                                                         (500, 750),
                                                         (750, 1000)]
  # 128 + 172 × (1, 2, 3, 4) / 4, truncated.
  assert [s.image_size for s in table] == [171, 214, 257, 300]
  assert [s.randaugment_magnitude for s in table] == [5, 10, 15, 20]
  assert [s.dropout for s in table] == pytest.approx([0.1, 0.2, 0.3, 0.4])
  assert [s.mixup_alpha for s in table] == pytest.approx([0, 0.1, 0.2, 0.3])
  assert [s.cutmix_alpha for s in table] == [None] * 4
  assert table[1].dataset_kwargs() == dict(randaugment_magnitude=10,
                                           mixup_alpha=pytest.approx(0.1))
  assert table[1].describe() == (
      "stage 2/4: image 214, dropout 0.2, randaugment 10, mixup 0.1, cutmix "
      "as configured, steps 250-500")


def test_stage_table_truncates_steps_and_sizes():
  table = stages.plan(stages.ProgressiveLearning(num_stages=3), train_steps=10,
                      image_size=224)
  # int(10/3), int(20/3), 10; 128 + 96 × (1, 2, 3) / 3.
  assert [s.end_step for s in table] == [3, 6, 10]
  assert [s.image_size for s in table] == [160, 192, 224]
  assert [s.dropout for s in table] == [None] * 3
  # Fewer steps than stages: empty stages, the last still ends the run.
  assert [
      s.end_step
      for s in stages.plan(PROGRESSIVE, train_steps=2, image_size=300)
  ] == [0, 1, 1, 2]
  assert stages.stage_at(table, 0).index == 0
  assert stages.stage_at(table, 3).index == 1
  assert stages.stage_at(table, 9).index == 2
  assert stages.stage_at(table, 10).index == 2


def test_without_progressive_one_stage_is_the_whole_run():
  [stage] = stages.plan(None, train_steps=7, image_size=224)
  assert (stage.start_step, stage.end_step, stage.image_size) == (0, 7, 224)
  assert stage.dataset_kwargs() == {}
  [one
  ] = stages.plan(stages.ProgressiveLearning(num_stages=1, dropout=(0.1, 0.3)),
                  train_steps=7, image_size=224)
  assert (one.image_size, one.dropout) == (224, 0.3)


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_stages=0), "num_stages must be an int >= 1"),
    (dict(min_image_size=12.5), "min_image_size must be an int >= 1"),
    (dict(dropout=(0.1,)), "dropout must be a \\(min, max\\) pair"),
    (dict(mixup_alpha=(-1, 0.2)), "mixup_alpha must be a \\(min, max\\)"),
    (dict(dropout=(0.1, 1.0)), "dropout must stay below 1"),
    (dict(mixup_alpha=(0, 0.2), cutmix_alpha=(0, 1.0)), "one of mixup and "
     "CutMix"),
])
def test_bad_settings_are_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    stages.ProgressiveLearning(**kwargs)


def test_a_min_size_above_the_train_size_is_named():
  with pytest.raises(
      ValueError, match="min_image_size=128 is larger than "
      "the training image size 64"):
    stages.plan(PROGRESSIVE, train_steps=8, image_size=64)


# ---------------------------------------------------------------------------
# A real run, in process
# ---------------------------------------------------------------------------
NUM_CLASSES, BATCH, NUM_IMAGES = 10, 4, 64


def _tiny_model(num_classes=None, image_size=40):
  return build_model("efficientnetv2-s", num_classes or NUM_CLASSES,
                     width_coefficient=0.1, depth_coefficient=0.1,
                     image_size=image_size)


class RecordingBuilder:
  """build_dataset over RandomNoiseSource, recording what each call got."""

  def __init__(self):
    self.calls = []
    self._build = functools.partial(
        build_dataset,
        source=RandomNoiseSource(num_train=NUM_IMAGES, num_eval=16,
                                 num_classes=NUM_CLASSES, image_size=40),
        num_classes=NUM_CLASSES, augment="randaugment")

  def __call__(self, input_context=None, **kwargs):
    dataset = self._build(input_context, **kwargs)
    self.calls.append((kwargs, tuple(dataset.element_spec[0].shape)))
    return dataset


def _scalars(log_dir, tag):
  values = {}
  for path in glob.glob(os.path.join(log_dir, "events.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == tag:
          values[event.step] = float(tf.make_ndarray(value.tensor))
  return values


def test_a_run_goes_through_every_stage_and_evaluates_at_the_eval_size(
    tmp_path):
  builder = RecordingBuilder()
  progressive = stages.ProgressiveLearning(num_stages=4, min_image_size=16,
                                           dropout=(0.1, 0.4),
                                           randaugment_magnitude=(5, 20),
                                           mixup_alpha=(0, 0.3))
  # 16 steps per epoch; warm-up 1 epoch: the rate climbs through all 8 steps.
  schedule = functools.partial(optim.build_schedule, warmup_epochs=1)
  result = trainer.train(
      model_dir=str(tmp_path), train_steps=8, train_batch_size=BATCH,
      image_size=32, eval_image_size=40, num_train_images=NUM_IMAGES,
      steps_per_loop=1, mode="train_and_eval", eval_batch_size=8,
      steps_per_eval=8, model_builder=_tiny_model, dataset_builder=builder,
      schedule_builder=schedule, progressive=progressive, seed=1)
  assert (result["step"], result["preempted"]) == (8, False)
  train_calls = [c for c in builder.calls if c[0]["split"] == "train"]
  eval_calls = [c for c in builder.calls if c[0]["split"] == "eval"]
  # 16 + 16 × (1, 2, 3, 4) / 4; linspace(5, 20, 4), linspace(0, 0.3, 4).
  assert [c[0]["image_size"] for c in train_calls] == [20, 24, 28, 32]
  assert [c[1] for c in train_calls
         ] == [(BATCH, s, s, 3) for s in (20, 24, 28, 32)]
  assert [c[0]["randaugment_magnitude"] for c in train_calls] == [5, 10, 15, 20]
  assert [c[0]["mixup_alpha"] for c in train_calls
         ] == pytest.approx([0, 0.1, 0.2, 0.3])
  assert [c[0]["image_size"] for c in eval_calls] == [40]
  assert eval_calls[0][1][1:] == (40, 40, 3)
  assert result["eval"]["num_examples"] == 16
  # TensorBoard: each stage at the step it starts (0, 2, 4, 6).
  summaries = str(tmp_path / "train")
  assert _scalars(summaries, "progressive/stage") == {0: 1, 2: 2, 4: 3, 6: 4}
  assert _scalars(summaries, "progressive/image_size") == {
      0: 20,
      2: 24,
      4: 28,
      6: 32
  }
  assert _scalars(summaries, "progressive/dropout") == pytest.approx({
      0: 0.1,
      2: 0.2,
      4: 0.3,
      6: 0.4
  })
  # The rate logged at step s is the one applied at s - 1: warm-up from 0 to
  # the peak 0.016 × 4 / 256 over 16 steps, unbroken by the stages.
  rates = _scalars(summaries, "learning_rate")
  assert sorted(rates) == list(range(1, 9))
  for step, rate in rates.items():
    assert rate == pytest.approx(0.016 * 4 / 256 * (step - 1) / 16)


def test_a_model_shares_its_variables_at_another_size():
  model = _tiny_model(image_size=32)
  resized = staged.at_image_size(model, 20)
  assert resized.input_shape == (None, 20, 20, 3)
  assert [id(v) for v in resized.weights] == [id(v) for v in model.weights]
  assert staged.at_image_size(model, 32) is model
  staged.set_dropout(model, 0.35)
  assert resized.get_layer("top_dropout").rate == 0.35


def test_the_stage_step_compiles_with_xla_for_a_v1_model_too(tmp_path):
  # One step, so only stage 2 of 2 runs: its step compiled by XLA at 24 px
  # for a B0 built at 40 px.
  builder = RecordingBuilder()
  result = trainer.train(
      model_dir=str(tmp_path), train_steps=1, train_batch_size=BATCH,
      image_size=24, num_train_images=NUM_IMAGES, steps_per_loop=1,
      model_builder=lambda num_classes=None: build_model(
          "efficientnet-b0", NUM_CLASSES, width_coefficient=0.1,
          depth_coefficient=0.1, image_size=40), dataset_builder=builder,
      jit_compile=True,
      progressive=stages.ProgressiveLearning(num_stages=2, min_image_size=16,
                                             dropout=(0.1, 0.2)))
  assert result["step"] == 1
  assert [c[1] for c in builder.calls] == [(BATCH, 24, 24, 3)]


# ---------------------------------------------------------------------------
# bin/trainer stopped in stage 2 resumes there
# ---------------------------------------------------------------------------
# demo.gin shrunk by smoke.gin; 4 stages of 100 steps at 20, 24, 28, 32 px.
_STAGED = ("TRAIN_STEPS = 400", "STEPS_PER_LOOP = 1000",
           "effnet_gin.train.train.mode = 'train'",
           "effnet_gin.train.train.log_every_steps = 10",
           "effnet_gin.train.train.checkpoint_every_steps = 20",
           "effnet_gin.train.train.progressive = "
           "@effnet_gin.train.ProgressiveLearning()",
           "effnet_gin.train.ProgressiveLearning.min_image_size = 16",
           "effnet_gin.train.ProgressiveLearning.dropout = (0.1, 0.4)")


def _stage_lines(log_text):
  return re.findall(
      r"stage (\d)/4: image (\d+), dropout ([\d.]+).*"
      r"entered at step (\d+)", log_text)


def test_stopped_in_stage_two_resumes_in_stage_two(tmp_path):
  model_dir = tmp_path / "model"
  # SIGTERM inside stage 2 (steps 100-200).
  log_path = tmp_path / "sigterm.log"
  process = trainer_helpers.start_logged(model_dir, log_path, *_STAGED)
  try:
    trainer_helpers.wait_until(
        lambda: trainer_helpers.in_loop_step(log_path, 110), process, log_path,
        "step 110, in stage 2")
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
  finally:
    process.kill()
  log = log_path.read_text()
  assert process.returncode == 75, log[-3000:]
  stopped = trainer_helpers.stopped_step(log)
  assert 110 <= stopped < 200
  assert _stage_lines(log) == [("1", "20", "0.1", "0"),
                               ("2", "24", "0.2", "100")]
  # Resumed in stage 2 at the stopped step; SIGKILL after a checkpoint there.
  log_path = tmp_path / "sigkill.log"
  process = trainer_helpers.start_logged(model_dir, log_path, *_STAGED)
  try:
    trainer_helpers.wait_until(
        lambda: (trainer_helpers.latest_step(str(model_dir)) or 0) > stopped,
        process, log_path, "a checkpoint after the resume")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
  finally:
    process.kill()
  log = log_path.read_text()
  assert _stage_lines(log)[0] == ("2", "24", "0.2", str(stopped))
  killed_at = trainer_helpers.latest_step(str(model_dir))
  assert killed_at < 400
  rerun = trainer_helpers.run_trainer(str(model_dir), *_STAGED)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  lines = _stage_lines(rerun.stderr)
  first_stage = 1 + killed_at // 100
  assert lines[0][:3] == (str(first_stage), str(16 + 4 * first_stage),
                          f"{0.1 * first_stage:.1f}")
  assert lines[0][3] == str(killed_at)
  assert lines[-1][:2] == ("4", "32")
  assert "step 400/400 " in rerun.stderr
  assert trainer_helpers.latest_step(str(model_dir)) == 400
