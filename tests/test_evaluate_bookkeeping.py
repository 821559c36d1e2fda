"""The evaluator cannot lose or damage results: crashes, best/, other runs."""
import glob
import json
import logging
import os

import pytest
import tensorflow as tf

from effnet_gin.data.sources import tfrecord
from effnet_gin.evaluation import records
from effnet_gin.checkpoints import run_dir
from eval_helpers import configure
from eval_helpers import ContractWriter
from eval_helpers import data_dir  # noqa: F401  (a fixture)
from eval_helpers import evaluate
from eval_helpers import read_results


def _snapshot(directory):
  """Every file under `directory` with its bytes."""
  files = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, directory)] = f.read()
  return files


def _best_record(model_dir):
  return records.BestCheckpoint(model_dir).read()


def test_crash_while_archiving_the_best_re_evaluates_it(data_dir, tmp_path,
                                                        monkeypatch):
  configure(data_dir)
  model_dir = str(tmp_path / "run")
  writer = ContractWriter(model_dir)
  writer.save(1)

  def crash(self, result, checkpoint):
    raise RuntimeError("injected crash between evaluation and recording")

  with monkeypatch.context() as patch:
    patch.setattr(records.BestCheckpoint, "offer", crash)
    with pytest.raises(RuntimeError, match="injected crash"):
      evaluate(model_dir, train_steps=2)
  assert not os.path.exists(os.path.join(model_dir, "eval", "results.jsonl"))
  writer.save(2)
  results = evaluate(model_dir, train_steps=2, newest_only=False)
  assert [r["step"] for r in results] == [1, 2]
  best = max(read_results(model_dir), key=lambda r: r["top_1_accuracy"])
  record = _best_record(model_dir)
  assert (record["step"], record["top_1_accuracy"]) == (best["step"],
                                                        best["top_1_accuracy"])
  assert tf.train.latest_checkpoint(os.path.join(model_dir,
                                                 "best")) == (os.path.join(
                                                     model_dir, "best",
                                                     f"ckpt-{best['step']}"))


def test_evaluating_the_best_checkpoint_itself_damages_nothing(
    data_dir, tmp_path):
  configure(data_dir)
  model_dir = str(tmp_path / "run")
  writer = ContractWriter(model_dir)
  for step in (1, 2):
    writer.save(step)
  evaluate(model_dir, train_steps=2, newest_only=False)
  best_dir = os.path.join(model_dir, "best")
  # Make any new score beat the recorded best, as other settings might.
  record = _best_record(model_dir)
  record["top_1_accuracy"] = -1.0
  run_dir.write_text(best_dir, run_dir.BEST_RESULT_FILE, json.dumps(record))
  before_best = _snapshot(best_dir)
  before_results = read_results(model_dir)

  [result] = evaluate(model_dir, checkpoint=record["checkpoint"])
  assert result["step"] == record["step"]
  assert _snapshot(best_dir) == before_best
  assert all(len(data) for data in before_best.values())
  assert read_results(model_dir) == before_results
  others = records.ResultsLog(model_dir, run_dir.OTHER_RESULTS_FILE)
  assert [r["checkpoint"] for r in others.read()] == [record["checkpoint"]]


def test_another_runs_checkpoint_changes_nothing_in_this_run(
    data_dir, tmp_path):
  configure(data_dir)
  model_dir, other_dir = str(tmp_path / "run"), str(tmp_path / "other")
  ContractWriter(model_dir).save(1)
  other = ContractWriter(other_dir).save(7)
  evaluate(model_dir, train_steps=1)
  before = _snapshot(model_dir)

  [result] = evaluate(model_dir, checkpoint=other)
  assert result["checkpoint"] == other
  after = _snapshot(model_dir)
  added = set(after) - set(before)
  assert added == {os.path.join("eval", run_dir.OTHER_RESULTS_FILE)}
  assert {k: after[k] for k in before} == before
  with pytest.raises(ValueError, match="not one of the checkpoints"):
    records.BestCheckpoint(model_dir).offer(dict(result, top_1_accuracy=2.0),
                                            None)


def test_newest_only_skips_older_checkpoints_and_says_so(
    data_dir, tmp_path, caplog):
  configure(data_dir)
  model_dir = str(tmp_path / "run")
  writer = ContractWriter(model_dir)
  paths = [writer.save(step) for step in (1, 2, 3)]
  with caplog.at_level(logging.WARNING):
    results = evaluate(model_dir, train_steps=3)
  assert [r["step"] for r in results] == [3]
  [skipped] = [
      r.getMessage()
      for r in caplog.records
      if r.getMessage().startswith("Skipped")
  ]
  assert paths[0] in skipped and paths[1] in skipped


def test_train_steps_come_from_the_trainers_run_file(data_dir, tmp_path,
                                                     caplog):
  configure(data_dir)
  model_dir = str(tmp_path / "run")
  ContractWriter(model_dir).save(3)
  run_dir.write_run_config(model_dir, command="bin/trainer", train_steps=3)
  # Told 100 by its own config, it would wait for a step-100 checkpoint.
  # absl keeps its own level (a parse of absl flags elsewhere sets it).
  with caplog.at_level(logging.INFO, logger="absl"):
    results = evaluate(model_dir, train_steps=100, train_steps_from_run=True)
  assert [r["step"] for r in results] == [3]
  assert any("train_steps=3 from" in r.getMessage() for r in caplog.records)


def test_record_counts_are_cached_by_name_and_size(data_dir, tmp_path):
  # The counts are cached per process; earlier tests counted other data sets,
  # which this run's file must not list. A fresh evaluator starts empty.
  tfrecord.PROCESS_RECORD_COUNTS.clear()
  configure(data_dir)
  model_dir = str(tmp_path / "run")
  ContractWriter(model_dir).save(1)
  evaluate(model_dir, train_steps=1)
  cache = records.RecordCountCache(model_dir, tfrecord.PROCESS_RECORD_COUNTS)
  with open(cache.path) as f:
    saved = json.load(f)
  files = sorted(glob.glob(os.path.join(data_dir, "validation-*")))
  assert saved == [[
      path,
      os.path.getsize(path),
      sum(1 for _ in tf.data.TFRecordDataset(path))
  ] for path in files]

  # A restart (a fresh process has no counts) takes them from the file.
  tfrecord.PROCESS_RECORD_COUNTS.clear()
  cache.load()
  assert [list(e) for e in tfrecord.PROCESS_RECORD_COUNTS.entries()] == saved
  # A file that changed size is counted afresh, not taken from the cache.
  copy = str(tmp_path / "validation-copy")
  with open(copy, "wb") as f:
    f.write(open(files[0], "rb").read() * 2)
  tfrecord.PROCESS_RECORD_COUNTS.remember([(copy, saved[0][1], saved[0][2])])
  assert tfrecord.PROCESS_RECORD_COUNTS.count(copy) == 2 * saved[0][2]


def test_an_in_process_recorder_is_the_one_writer_of_the_runs_records(
    data_dir, tmp_path):
  configure(data_dir)
  model_dir = str(tmp_path / "run")
  ContractWriter(model_dir).save(1)
  evaluator_recorder = records.Recorder(model_dir, chief=True)
  trainer_recorder = records.Recorder(model_dir, chief=True, in_process=True)
  own = dict(step=1, checkpoint=os.path.join(model_dir, "ckpt-1"),
             top_1_accuracy=0.5, top_5_accuracy=0.5, loss=1.0)
  trainer_recorder(own, None)
  trainer_recorder.close()
  assert [r["step"] for r in read_results(model_dir)] == [1]
  evaluator_recorder(dict(own, top_1_accuracy=0.9), None)  # Not recorded.
  assert read_results(model_dir) == [own]
  assert _best_record(model_dir)["top_1_accuracy"] == 0.5
  # Other checkpoints' results go to a file the trainer never writes.
  other = dict(own, checkpoint=str(tmp_path / "other" / "ckpt-7"))
  evaluator_recorder(other, None)
  evaluator_recorder.close()
  others = records.ResultsLog(model_dir, run_dir.OTHER_RESULTS_FILE)
  assert others.read() == [other]
