"""Tests of evaluation: one pass, eval-only, and continuous evaluation.

Checkpoints are written here by the trainer's own checkpoint builder and
Manager (`model_dir/ckpt-<STEP>` holding step, model, optimizer and EMA)
around made-up weights (eval_helpers.ContractWriter); the two-process test
with the real bin/trainer lives in test_trainer_evaluator_processes.py.
"""
import json
import logging
import os

import gin
import numpy as np
import pytest
import tensorflow as tf

from effnet_gin import configurables
from effnet_gin.data import parse_imagenet_example
from effnet_gin.data import preprocess_for_eval
from effnet_gin.model import build_model
from effnet_gin.evaluation.eval_pass import run_evaluation

from eval_helpers import configure
from eval_helpers import ContractWriter
from eval_helpers import data_dir  # noqa: F401  (a fixture)
from eval_helpers import EVAL_BATCH_SIZE
from eval_helpers import evaluate
from eval_helpers import IMAGE_SIZE
from eval_helpers import NUM_EVAL
from eval_helpers import read_results


def direct_metrics(model, data_dir):
  """Scores `model` on every validation record without the input pipeline."""
  files = sorted(tf.io.gfile.glob(os.path.join(data_dir, "validation-*")))
  images, labels = [], []
  for serialized in tf.data.TFRecordDataset(files):
    example = parse_imagenet_example(serialized)
    images.append(preprocess_for_eval(example["image"], IMAGE_SIZE))
    labels.append(int(example["label"]))
  logits = model(tf.stack(images), training=False).numpy()
  labels = np.array(labels)
  ranks = (logits > logits[np.arange(len(labels)), labels][:, None]).sum(-1)
  loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
  return dict(top_1_accuracy=float(np.mean(ranks < 1)),
              top_5_accuracy=float(np.mean(ranks < 5)),
              loss=float(np.mean(loss)), num_examples=len(labels))


def test_run_evaluation_scores_every_example_once_over_replicas(data_dir):
  configure(data_dir, strategy_kind="mirrored_cpu")
  strategy = configurables.build_strategy()
  assert strategy.num_replicas_in_sync == 2
  with strategy.scope():
    model = configurables.build_model()
  metrics = run_evaluation(dataset_builder=configurables.dataset_builder(),
                           strategy=strategy, model=model,
                           eval_batch_size=EVAL_BATCH_SIZE,
                           image_size=IMAGE_SIZE)
  expected = direct_metrics(model, data_dir)
  assert metrics["num_examples"] == NUM_EVAL
  assert isinstance(metrics["num_examples"], int)
  for name in ("top_1_accuracy", "top_5_accuracy"):
    assert isinstance(metrics[name], float)
    assert metrics[name] == pytest.approx(expected[name], abs=1e-9)
  assert metrics["loss"] == pytest.approx(expected["loss"], rel=1e-4)


def test_eval_step_compiles_with_xla(data_dir):
  configure(data_dir)
  strategy = configurables.build_strategy()
  model = configurables.build_model()
  plain = run_evaluation(dataset_builder=configurables.dataset_builder(),
                         strategy=strategy, model=model,
                         eval_batch_size=EVAL_BATCH_SIZE, image_size=IMAGE_SIZE)
  compiled = run_evaluation(dataset_builder=configurables.dataset_builder(),
                            strategy=strategy, model=model,
                            eval_batch_size=EVAL_BATCH_SIZE,
                            image_size=IMAGE_SIZE, jit_compile=True)
  assert compiled["num_examples"] == NUM_EVAL
  assert compiled["top_1_accuracy"] == pytest.approx(plain["top_1_accuracy"])
  assert compiled["loss"] == pytest.approx(plain["loss"], rel=1e-4)


def test_run_evaluation_rejects_batch_not_divisible_by_replicas(data_dir):
  configure(data_dir, strategy_kind="mirrored_cpu")
  strategy = configurables.build_strategy()
  with strategy.scope():
    model = configurables.build_model()
  with pytest.raises(ValueError, match="eval_batch_size=7"):
    run_evaluation(dataset_builder=configurables.dataset_builder(),
                   strategy=strategy, model=model, eval_batch_size=7,
                   image_size=IMAGE_SIZE)


def test_eval_only_matches_in_process_evaluation_of_that_step(
    data_dir, tmp_path):
  configure(data_dir)
  model_dir = str(tmp_path / "run")
  writer = ContractWriter(model_dir)
  path = writer.save(2)
  writer.save(3)  # A later checkpoint that eval-only must leave alone.
  strategy = tf.distribute.get_strategy()
  writer.manager.checkpoint.read(path).assert_existing_objects_matched()
  with writer.ema.averaged_weights():
    ema_metrics = run_evaluation(
        dataset_builder=configurables.dataset_builder(), strategy=strategy,
        model=writer.model, eval_batch_size=EVAL_BATCH_SIZE,
        image_size=IMAGE_SIZE)
  raw_metrics = run_evaluation(dataset_builder=configurables.dataset_builder(),
                               strategy=strategy, model=writer.model,
                               eval_batch_size=EVAL_BATCH_SIZE,
                               image_size=IMAGE_SIZE)
  assert ema_metrics["loss"] != pytest.approx(raw_metrics["loss"])

  [result] = evaluate(model_dir, checkpoint=path)
  assert result["step"] == 2 and result["checkpoint"] == path
  assert result["top_1_accuracy"] == ema_metrics["top_1_accuracy"]
  assert result["top_5_accuracy"] == ema_metrics["top_5_accuracy"]
  assert result["loss"] == pytest.approx(ema_metrics["loss"], rel=1e-5)
  assert result["num_examples"] == NUM_EVAL
  [raw] = evaluate(model_dir, checkpoint=path, use_ema=False)
  assert raw["loss"] == pytest.approx(raw_metrics["loss"], rel=1e-5)

  [line] = read_results(model_dir)  # Re-evaluating step 2 replaced its line.
  assert set(line) == {
      "step", "checkpoint", "top_1_accuracy", "top_5_accuracy", "loss",
      "num_examples"
  }
  assert line["step"] == 2 and line["num_examples"] == NUM_EVAL
  event_files = tf.io.gfile.glob(os.path.join(model_dir, "eval", "events.*"))
  tags = {(value.tag, event.step)
          for f in event_files
          for event in tf.compat.v1.train.summary_iterator(f)
          for value in event.summary.value}
  assert {("top_1_accuracy", 2), ("top_5_accuracy", 2), ("loss", 2)} <= tags


def test_continuous_evaluation_evaluates_each_checkpoint_once(
    data_dir, tmp_path):
  configure(data_dir)
  model_dir = str(tmp_path / "run")
  writer = ContractWriter(model_dir)
  paths = [writer.save(step) for step in (1, 2, 3)]
  before = sorted(os.listdir(model_dir))

  results = evaluate(model_dir, train_steps=3, newest_only=False)
  assert [r["step"] for r in results] == [1, 2, 3]
  assert [r["checkpoint"] for r in results] == paths
  assert read_results(model_dir) == json.loads(json.dumps(results))
  assert all(r["num_examples"] == NUM_EVAL for r in results)
  # The trainer's files are untouched; results live in eval/ and best/.
  assert sorted(os.listdir(model_dir)) == sorted(before + ["best", "eval"])

  best = max(results, key=lambda r: r["top_1_accuracy"])
  best_dir = os.path.join(model_dir, "best")
  with open(os.path.join(best_dir, "best_result.json")) as f:
    best_record = json.load(f)
  assert best_record["step"] == best["step"]
  assert best_record["top_1_accuracy"] == best["top_1_accuracy"]
  archived = tf.train.latest_checkpoint(best_dir)
  assert archived == os.path.join(best_dir, f"ckpt-{best['step']}")
  assert sorted(os.listdir(best_dir)) == sorted([
      "best_result.json", "checkpoint", f"ckpt-{best['step']}.index",
      f"ckpt-{best['step']}.data-00000-of-00001"
  ])
  [again] = evaluate(model_dir, checkpoint=best_dir)
  assert again["top_1_accuracy"] == best["top_1_accuracy"]


def test_restarted_evaluator_skips_evaluated_steps(data_dir, tmp_path):
  configure(data_dir)
  model_dir = str(tmp_path / "run")
  writer = ContractWriter(model_dir)
  writer.save(1)
  writer.save(2)
  assert [
      r["step"] for r in evaluate(model_dir, train_steps=4, eval_timeout=0.5,
                                  newest_only=False)
  ] == [1, 2]
  writer.save(3)
  writer.save(4)
  assert [
      r["step"] for r in evaluate(model_dir, train_steps=4, newest_only=False)
  ] == [3, 4]
  assert [r["step"] for r in read_results(model_dir)] == [1, 2, 3, 4]
  # Everything is evaluated: a third start finds the final step done.
  assert evaluate(model_dir, train_steps=4) == []


def test_deleted_checkpoint_is_skipped_with_a_warning(data_dir, tmp_path,
                                                      caplog):
  configure(data_dir)
  model_dir = str(tmp_path / "run")
  writer = ContractWriter(model_dir)
  deleted = [writer.save(step) for step in (1, 2, 3)][1]
  # The trainer's retention removed ckpt-2 after the state file listed it.
  for filename in tf.io.gfile.glob(deleted + ".*"):
    tf.io.gfile.remove(filename)
  with caplog.at_level(logging.WARNING):
    results = evaluate(model_dir, train_steps=3, newest_only=False)
  assert [r["step"] for r in results] == [1, 3]
  assert any(
      deleted in record.getMessage() and "deleted" in record.getMessage()
      for record in caplog.records)


def test_evaluator_stops_after_timeout_without_final_checkpoint(
    data_dir, tmp_path):
  configure(data_dir)
  model_dir = str(tmp_path / "run")
  ContractWriter(model_dir).save(5)
  results = evaluate(model_dir, train_steps=100, eval_timeout=0.5)
  assert [r["step"] for r in results] == [5]


def test_checkpoint_without_ema_needs_use_ema_false(data_dir, tmp_path):
  configure(data_dir)
  model_dir = str(tmp_path / "run")
  path = ContractWriter(model_dir, use_ema=False).save(1)
  with pytest.raises(ValueError, match="use_ema=False"):
    evaluate(model_dir, checkpoint=path)
  [result] = evaluate(model_dir, checkpoint=path, use_ema=False)
  assert result["step"] == 1


def test_missing_checkpoint_is_named(data_dir, tmp_path):
  configure(data_dir)
  missing = str(tmp_path / "run" / "ckpt-7")
  with pytest.raises(FileNotFoundError, match="ckpt-7"):
    evaluate(str(tmp_path / "run"), checkpoint=missing)


def test_class_count_mismatch_is_explained(data_dir, tmp_path):
  configure(data_dir)
  model_dir = str(tmp_path / "run")
  path = ContractWriter(model_dir).save(1)
  gin.clear_config()
  configure(data_dir)
  with gin.unlock_config():
    gin.bind_parameter("build_model.num_classes", 12)
  with pytest.raises(ValueError, match="10 classes"):
    evaluate(model_dir, checkpoint=path)
