"""The crash campaign: bin/trainer and bin/evaluator SIGKILLed over one run.

One tiny run (a B0 at a tenth of its width and depth, 32 px random-noise
images generated in-graph, a checkpoint after every step) is trained by
bin/trainer while bin/evaluator follows it, evaluating every checkpoint. Both
are killed with SIGKILL again and again, and restarted after each kill, until
the trainer reaches train_steps and the evaluator has evaluated its final
checkpoint. A kill is either

  * at a named point (`effnet_gin.faults`, through EFFNET_GIN_KILL_AT): inside
    a checkpoint save, between copying a best checkpoint and recording it,
    between offering a result to best/ and writing it to results.jsonl; or
  * at a random time: when the trainer's log shows a chosen step (or that it
    resumed, while it traces), or when the evaluator's shows its k-th
    evaluation (so the kill lands in recording, or in the next restore).

`run_campaign` returns a `Report` of what it saw and found; its `problems`
list every broken guarantee. tests/test_crash_campaign.py runs a short
campaign, bench/crash_campaign.py a long one.
"""
import dataclasses
import json
import os
import random
import re
import signal
import subprocess
import time

import tensorflow as tf

from effnet_gin import faults
from effnet_gin.checkpoints import run_dir
from effnet_gin.evaluation import records
import trainer_helpers

_STEP_LINE = re.compile(r"\] step (\d+)/\d+ ")
_RESUMED = re.compile(r"Resumed from (\S+) at step (\d+)")
_EVALUATED = re.compile(r"Evaluated \S+ \(step (\d+)")


def run_params(train_steps, keep_checkpoints):
  """The gin bindings both processes get (over smoke.gin's tiny ones)."""
  return list(trainer_helpers.TINY_BINDINGS) + [
      f"TRAIN_STEPS = {train_steps}", "STEPS_PER_LOOP = 1",
      "effnet_gin.train.train.mode = 'train'",
      "effnet_gin.train.train.checkpoint_every_steps = 1",
      f"effnet_gin.train.train.keep_checkpoints = {keep_checkpoints}",
      "effnet_gin.train.evaluate.newest_only = False"
  ]


@dataclasses.dataclass
class Kill:
  """One planned kill: at a `faults` point ('name:n'), or on a trigger.

  Triggers: ('step', s) the trainer's log shows step s or later;
  ('resumed',) the trainer's log shows it resumed (it is tracing);
  ('evaluated', k) the evaluator's log shows its k-th evaluation.
  """
  point: str = None
  trigger: tuple = None

  def describe(self):
    return (f"at {self.point}" if self.point else "when " +
            " ".join(map(str, self.trigger)))


def plan(*, trainer_kills, evaluator_kills, train_steps, seed):
  """Kills for each process, spread over the run; the same for one seed.

  Of the trainer's kills, about a quarter are inside a checkpoint save and one
  in eight while it traces after resuming; the others at random steps, in
  increasing order. Of the evaluator's, the first is while copying its first
  best checkpoint, about a third between offering a result to best/ and
  recording it, and the others right after a random evaluation.
  """
  rng = random.Random(seed)
  steps = sorted(rng.sample(range(1, train_steps), trainer_kills))
  trainer = []
  for i, step in enumerate(steps):
    if i % 4 == 1:
      trainer.append(Kill(point=f"checkpoint_written:{rng.randint(1, 2)}"))
    elif i % 8 == 6:
      trainer.append(Kill(trigger=("resumed",)))
    else:
      trainer.append(Kill(trigger=("step", step)))
  evaluator = [Kill(point="best_copied:1")][:evaluator_kills]
  for i in range(1, evaluator_kills):
    if i % 3 == 1:
      evaluator.append(Kill(point=f"result_offered:{rng.randint(1, 2)}"))
    else:
      evaluator.append(Kill(trigger=("evaluated", rng.randint(1, 2))))
  return {"trainer": trainer, "evaluator": evaluator}


@dataclasses.dataclass
class Report:
  """What a campaign did and found (`problems` must be empty)."""
  kills: dict = dataclasses.field(default_factory=lambda: {
      "trainer": [],
      "evaluator": []
  })
  restarts: int = 0
  resumes: list = dataclasses.field(default_factory=list)
  checkpoints_lost: int = 0
  results_duplicated: int = 0
  results_missing: int = 0
  deleted_before_evaluation: int = 0
  evaluations: int = 0
  results: int = 0
  final_step: int = None
  problems: list = dataclasses.field(default_factory=list)
  seconds: float = 0.0

  def lines(self):
    """The figures, one per line, as the bench prints them."""
    kills = self.kills["trainer"] + self.kills["evaluator"]
    return [
        f"kills: {len(kills)} ({len(self.kills['trainer'])} trainer, "
        f"{len(self.kills['evaluator'])} evaluator; "
        f"{sum(k.startswith('at ') for k in kills)} at fault points)",
        f"restarts: {self.restarts}",
        f"checkpoints lost: {self.checkpoints_lost}",
        f"results duplicated: {self.results_duplicated}",
        f"results missing: {self.results_missing}",
        f"results recorded: {self.results} (evaluations run: "
        f"{self.evaluations}; checkpoints deleted by retention before "
        f"the evaluator reached them: {self.deleted_before_evaluation})",
        f"final step: {self.final_step}",
        f"problems: {self.problems or 'none'}",
        f"wall time: {self.seconds:.0f} s",
    ]


class _Process:
  """One role's process, restarted after each kill with the next plan entry."""

  def __init__(self, role, command, kills, log_dir):
    self.role, self.command, self.kills = role, command, list(kills)
    self.log_dir = log_dir
    self.logs = []
    self.process = None
    self.kill = None
    self.done = False

  def start(self):
    self.kill = self.kills.pop(0) if self.kills else None
    env = trainer_helpers.subprocess_env()
    if self.kill and self.kill.point:
      env[faults.ENV_VAR] = self.kill.point
    log_path = os.path.join(self.log_dir, f"{self.role}{len(self.logs)}.log")
    self.logs.append(log_path)
    with open(log_path, "w") as log:
      self.process = subprocess.Popen(self.command, env=env, stdout=log,
                                      stderr=subprocess.STDOUT,
                                      cwd=trainer_helpers.REPO)

  def log(self):
    with open(self.logs[-1]) as f:
      return f.read()

  def triggered(self):
    """Whether the current kill's trigger shows in the log."""
    if self.kill is None or self.kill.trigger is None:
      return False
    kind, *args = self.kill.trigger
    text = self.log()
    if kind == "step":
      steps = [int(s) for s in _STEP_LINE.findall(text)]
      return bool(steps) and steps[-1] >= args[0]
    if kind == "resumed":
      return bool(_RESUMED.search(text))
    return len(_EVALUATED.findall(text)) >= args[0]

  def sigkill(self):
    self.process.send_signal(signal.SIGKILL)
    self.process.wait(timeout=60)

  def all_logs(self):
    texts = []
    for path in self.logs:
      with open(path) as f:
        texts.append(f.read())
    return texts


def _listed_steps(model_dir):
  try:
    return {
        run_dir.checkpoint_step(p)
        for p in run_dir.listed_checkpoints(model_dir)
    }
  except (tf.errors.OpError, ValueError):  # Mid-rename on some filesystems.
    return set()


class Campaign:
  """Runs the processes of one campaign and checks each restart.

  Args:
    work_dir: an empty directory: model_dir and the logs go in it.
    train_steps: the run's final step (one checkpoint per step).
    kills: `plan`'s kills for each role.
    keep_checkpoints: the trainer's retention.
  """

  def __init__(self, work_dir, *, train_steps, kills, keep_checkpoints=10):
    self.model_dir = os.path.join(work_dir, "model")
    self.train_steps = train_steps
    params = [
        f"--gin_param={p}" for p in run_params(train_steps, keep_checkpoints)
    ]
    flags = ["--gin_file=demo.gin", f"--model_dir={self.model_dir}"] + params
    log_dir = os.path.join(work_dir, "logs")
    os.makedirs(log_dir)
    self.processes = [
        _Process("trainer",
                 trainer_helpers.script("trainer") + flags, kills["trainer"],
                 log_dir),
        _Process("evaluator",
                 trainer_helpers.script("evaluator") + flags,
                 kills["evaluator"], log_dir)
    ]
    self.report = Report()
    self.ever_listed = set()
    self.expected_resume = None

  def run(self, timeout=1800):
    """Runs both processes to the end; returns the `Report`."""
    start = time.monotonic()
    for p in self.processes:
      p.start()
    try:
      while not all(p.done for p in self.processes):
        if time.monotonic() - start > timeout:
          raise AssertionError(f"the campaign took over {timeout} s")
        self.ever_listed |= _listed_steps(self.model_dir)
        for p in self.processes:
          if not p.done:
            self._step(p)
        time.sleep(0.05)
    finally:
      for p in self.processes:
        if p.process.poll() is None:
          p.sigkill()
    self.report.seconds = time.monotonic() - start
    _check_end(self)
    return self.report

  def _step(self, p):
    """Polls one process: a kill to do, a death to count, an end to check."""
    if p.process.poll() is None:
      if p.triggered():
        p.sigkill()
        self._killed(p)
      return
    code = p.process.returncode
    if code == -signal.SIGKILL and p.kill and p.kill.point:
      self._killed(p)
    elif code == 0:
      p.done = True
      self._check_resume(p)
      if p.kill is not None or p.kills:
        self.report.problems.append(
            f"{p.role} finished before its planned kill {p.kill.describe()}")
    else:
      raise AssertionError(f"{p.role} failed with exit status {code} (log "
                           f"{p.logs[-1]}):\n{p.log()[-4000:]}")

  def _killed(self, p):
    self.report.kills[p.role].append(p.kill.describe())
    self._check_resume(p)
    if p.role == "trainer":
      listed = _listed_steps(self.model_dir)
      self.ever_listed |= listed
      self.expected_resume = max(listed, default=None)
    self.report.restarts += 1
    p.start()

  def _check_resume(self, p):
    """The trainer resumed from the newest checkpoint its predecessor left."""
    if p.role != "trainer" or len(p.logs) < 2:
      return
    match = _RESUMED.search(p.log())
    resumed = int(match[2]) if match else None
    if match is None and not _STEP_LINE.search(p.log()):
      return  # Killed before it restored anything: nothing to check.
    self.report.resumes.append((self.expected_resume, resumed))
    if resumed != self.expected_resume:
      self.report.checkpoints_lost += 1
      self.report.problems.append(
          f"trainer restart {len(p.logs) - 1} resumed at step {resumed}, "
          f"not at the newest checkpoint, {self.expected_resume}")


def _check_end(campaign):
  """Checks the run's final state; fills the report's figures."""
  report, model_dir = campaign.report, campaign.model_dir
  listed = run_dir.listed_checkpoints(model_dir)
  steps = [run_dir.checkpoint_step(p) for p in listed]
  report.final_step = max(steps, default=None)
  if report.final_step != campaign.train_steps:
    report.problems.append(f"the run ended at step {report.final_step}, not "
                           f"{campaign.train_steps}")
  for path in listed:
    step = _restored_step(path)
    if step != run_dir.checkpoint_step(path):
      report.checkpoints_lost += 1
      report.problems.append(f"{path} does not restore its step ({step})")
  aside = os.path.join(model_dir, run_dir.UNRESTORABLE_DIR)
  if os.path.exists(aside):
    report.problems.append(f"checkpoints were set aside in {aside}")
  _check_results(campaign, steps)


def _restored_step(path):
  try:
    return int(
        tf.train.load_checkpoint(path).get_tensor(
            "step/.ATTRIBUTES/VARIABLE_VALUE"))
  except (tf.errors.OpError, ValueError) as err:
    return repr(err)


def _check_results(campaign, retained):
  """Each retained checkpoint recorded once; best/ is the best result."""
  report, model_dir = campaign.report, campaign.model_dir
  results = records.ResultsLog(model_dir).read()
  recorded = [r["step"] for r in results]
  report.results = len(recorded)
  report.results_duplicated = len(recorded) - len(set(recorded))
  report.results_missing = len(set(retained) - set(recorded))
  report.deleted_before_evaluation = len(campaign.ever_listed - set(recorded) -
                                         set(retained))
  report.evaluations = sum(
      len(_EVALUATED.findall(text))
      for text in campaign.processes[1].all_logs())
  for name in ("results_duplicated", "results_missing"):
    if getattr(report, name):
      report.problems.append(f"{name}: {getattr(report, name)} ({recorded})")
  unknown = set(recorded) - campaign.ever_listed
  if unknown:
    report.problems.append(f"results of steps never listed: {unknown}")
  report.problems += best_problems(model_dir, results)


def best_problems(model_dir, results):
  """How model_dir/best/ differs from the best of `results` (a list)."""
  best = records.BestCheckpoint(model_dir)
  record = best.read()
  if not results:
    return [] if record is None else [f"best/ holds {record} without results"]
  if record is None:
    return ["best/ is empty"]
  by_step = {r["step"]: r for r in results}
  top = max(r["top_1_accuracy"] for r in results)
  problems = []
  if record["top_1_accuracy"] != top:
    problems.append(f"best/ has top-1 {record['top_1_accuracy']}, the best "
                    f"recorded is {top}")
  own = by_step.get(record["step"], {})
  if record != dict(own, source_checkpoint=own.get("checkpoint"),
                    checkpoint=record["checkpoint"]):
    problems.append(f"best/'s result {record} is not the recorded one {own}")
  if tf.train.latest_checkpoint(best.directory) != record["checkpoint"]:
    problems.append(f"best/checkpoint does not name {record['checkpoint']}")
  if _restored_step(record["checkpoint"]) != record["step"]:
    problems.append(f"best/'s checkpoint does not restore step "
                    f"{record['step']}")
  extra = [
      name for name in os.listdir(best.directory)
      if not (name.startswith(os.path.basename(record["checkpoint"]) + ".") or
              name in (run_dir.CHECKPOINT_STATE_FILE, run_dir.BEST_RESULT_FILE))
  ]
  if extra:
    problems.append(f"best/ holds other files: {sorted(extra)}")
  return problems


def run_campaign(work_dir, *, trainer_kills=8, evaluator_kills=8,
                 train_steps=40, seed=0, keep_checkpoints=10, timeout=1800):
  """Plans and runs a campaign in `work_dir`; returns its `Report`."""
  kills = plan(trainer_kills=trainer_kills, evaluator_kills=evaluator_kills,
               train_steps=train_steps, seed=seed)
  return Campaign(work_dir, train_steps=train_steps, kills=kills,
                  keep_checkpoints=keep_checkpoints).run(timeout=timeout)


def report_json(report):
  return json.dumps(dataclasses.asdict(report), indent=2)
