"""Runs that cannot be silently corrupted, triggered the way a user triggers them: train.py reruns
with another config, damaged checkpoints and teacher exports, an error inside a step, bad command
lines; and the pieces behind them (resume check, metric rewind, checkpoint fallback).

One tiny digits run (train.py in a subprocess) is shared by the module; tests that change a
workdir work on a copy of it.
"""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from pcjax.training import checkpoint
from pcjax.training import logging as log_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Teacher and student 6 steps of batch 16 on one device, checkpoints at 3 and 6, a metric record
# per student step.
TINY = [
    "--config.num_devices=1",
    *(
        f"--config.{role}.train.{key}={value}"
        for role in ("teacher", "student")
        for key, value in (
            ("num_steps", 6), ("num_epochs", 0), ("batch_size", 16), ("checkpoint_every", 3),
            ("log_every", 1),
        )
    ),
]


# Tiny shapes: compile time dominates, as in tests/conftest.py.
ENV = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}


def train(workdir, *args, env=ENV, script=("train.py",)):
    """Runs train.py (or another `script`) on the tiny job with extra flags `args`."""
    return subprocess.run(
        [sys.executable, *script, f"--workdir={workdir}", *TINY, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env, check=False,
    )


def error_lines(result) -> list[str]:
    """stderr without progress bars and absl log lines."""
    lines = result.stderr.replace("\r", "\n").splitlines()
    return [line for line in lines if line.startswith("train.py:")]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("tiny_digits"))
    result = train(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def copy_of(workdir, tmp_path) -> str:
    copy = str(tmp_path / "workdir")
    shutil.copytree(workdir, copy)
    return copy


def records(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def largest_data_file(directory):
    """The largest array data file of an orbax checkpoint."""
    files = [
        os.path.join(root, name)
        for root, _, names in os.walk(directory)
        for name in names
        if os.sep + "d" + os.sep in os.path.join(root, name) + os.sep
    ]
    return max(files, key=os.path.getsize)


def damage(directory):
    """Truncates the largest array data file of an orbax checkpoint, as a full disk would."""
    with open(largest_data_file(directory), "r+b") as f:
        f.truncate(10)


def flip_one_bit(directory):
    """Flips one bit in the middle of the largest array data file."""
    with open(largest_data_file(directory), "r+b") as f:
        data = bytearray(f.read())
        data[len(data) // 2] ^= 1
        f.seek(0)
        f.write(data)


def zero_64_bytes(directory):
    """Zeroes 64 bytes in the middle of the largest array data file."""
    with open(largest_data_file(directory), "r+b") as f:
        f.seek(os.path.getsize(f.name) // 2)
        f.write(bytes(64))


# ----------------------------------------------------------------------------- resume checks


@pytest.mark.parametrize(
    "args, keys",
    [
        # Same state structure, another trajectory.
        (["--config.student.train.batch_size=32", "--config.distill.loss=rkd", "--config.seed=1"],
         ["distill.loss: 'perception_coherence' -> 'rkd'", "seed: 0 -> 1",
          "student.train.batch_size: 16 -> 32"]),
        # A loss option given on the command line is part of the run.
        (["--config.distill.loss_kwargs.regularization_strength", "2"],
         ["distill.loss_kwargs.regularization_strength: 1.0 -> 2.0"]),
        # Another state structure (a projection head, no momentum): refused before any restore.
        (["--config.distill.loss=fitnet", "--config.student.train.optimizer.name=sgd"],
         ["distill.loss: 'perception_coherence' -> 'fitnet'",
          "student.train.optimizer.name: 'adamw' -> 'sgd'"]),
    ],
)
def test_rerun_with_another_config_is_refused_before_any_work(finished, args, keys):
    before = {
        name: os.path.getmtime(os.path.join(finished, name))
        for name in ("config.json", "metrics.jsonl", "results.json")
    }
    result = train(finished, *args, "--config.student.train.log_every=2")
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = error_lines(result)
    assert line.startswith(f"train.py: error: config: the workdir {finished} holds a run")
    for key in keys:
        assert key in line
    assert "log_every" not in line  # Logging cadence may differ.
    assert "Use a new --workdir." in line and "--extend" not in line
    after = {name: os.path.getmtime(os.path.join(finished, name)) for name in before}
    assert after == before


# ----------------------------------------------------------------------------- damage


def test_damaged_student_checkpoint_and_teacher_export_are_recovered(finished, tmp_path):
    """One bit flipped in the newest student checkpoint (6), 64 bytes zeroed in the teacher
    export: the rerun warns once for each, rebuilds the export from the teacher's step-6
    checkpoint, trains the student on from step 3, and ends with the first run's results and
    one record per step. (Without the digest, orbax reads the flipped bit as a wrong value.)"""
    workdir = copy_of(finished, tmp_path)
    flip_one_bit(os.path.join(workdir, "student", "checkpoints", "6"))
    zero_64_bytes(os.path.join(workdir, "teacher", "model"))
    result = train(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "does not restore" in line]
    assert len(warnings) == 2, warnings
    assert any("checkpoint step 6 in" in w and "resumed from step 3" in w
               and "CorruptCheckpointError" in w for w in warnings)
    assert any("exported teacher" in w and "rebuilding it from" in w for w in warnings)
    assert os.path.isdir(os.path.join(workdir, "student", "checkpoints", "6.damaged"))
    assert os.path.isdir(os.path.join(workdir, "teacher", "model.damaged"))
    with open(os.path.join(finished, "results.json")) as f:
        expected = json.load(f)
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    steps = [(r["phase"], r["split"], r["step"]) for r in records(workdir)]
    assert len(steps) == len(set(steps))
    assert [s for p, _, s in steps if p == "student"] == [1, 2, 3, 4, 5, 6]
    assert [s for p, _, s in steps if p == "final"] == [0]


@pytest.mark.parametrize("emptied", ["6/*", "6/default"])
def test_emptied_newest_step_falls_back_to_the_previous_one(finished, tmp_path, emptied):
    """``rm -rf student/checkpoints/6/*`` (or ``6/default``): the rerun sets step 6 aside with
    one warning, resumes from step 3 and ends with the first run's results."""
    workdir = copy_of(finished, tmp_path)
    step = os.path.join(workdir, "student", "checkpoints", "6")
    for name in os.listdir(step) if emptied == "6/*" else ["default"]:
        path = os.path.join(step, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    result = train(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    (warning,) = [line for line in result.stderr.splitlines() if "does not restore" in line]
    assert "checkpoint step 6 in" in warning and warning.endswith("resumed from step 3")
    assert not error_lines(result) and "Traceback" not in result.stderr
    with open(os.path.join(finished, "results.json")) as f:
        expected = json.load(f)
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_damaged_export_without_teacher_checkpoints_says_what_to_delete(finished, tmp_path):
    workdir = copy_of(finished, tmp_path)
    shutil.rmtree(os.path.join(workdir, "teacher", "checkpoints"))
    damage(os.path.join(workdir, "teacher", "model"))
    result = train(workdir)
    assert result.returncode == 1
    (line,) = error_lines(result)
    export = os.path.join(workdir, "teacher", "model")
    assert line.startswith(f"train.py: error: CheckpointError: the exported teacher at {export}")
    assert line.endswith(f"delete {export} to train the teacher again")


def test_restore_latest_falls_back_past_damaged_steps(tmp_path, caplog):
    ckpt = checkpoint.Checkpointer(str(tmp_path), max_to_keep=3)
    # Random values: the array data (not metadata) is the largest file of each checkpoint.
    saved = {step: np.random.default_rng(step).normal(size=(64, 64)).astype(np.float32)
             for step in (1, 2, 3)}
    target = {"w": np.zeros((64, 64), np.float32)}
    for step, w in saved.items():
        ckpt.save(step, {"w": w})
    ckpt.wait()
    # Exact comparisons: a checkpoint stores the float32 bits.
    np.testing.assert_array_equal(ckpt.restore_latest(target)["w"], saved[3])
    damage(os.path.join(tmp_path, "3"))
    damage(os.path.join(tmp_path, "2"))
    with caplog.at_level("WARNING"):
        restored = ckpt.restore_latest(target)
    np.testing.assert_array_equal(restored["w"], saved[1])
    assert ckpt.latest_step() == 1
    moved = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
    assert [m.split(" in ")[0] for m in moved] == ["checkpoint step 3", "checkpoint step 2"]
    damage(os.path.join(tmp_path, "1"))
    with pytest.raises(checkpoint.CheckpointError, match=f"delete {tmp_path} to start"):
        ckpt.restore_latest(target)
    assert os.path.isdir(os.path.join(tmp_path, "1"))  # Nothing restores: nothing is moved.
    ckpt.close()
    empty = checkpoint.Checkpointer(str(tmp_path / "new"), max_to_keep=1)
    assert empty.restore_latest(target) is None


# ----------------------------------------------------------------------------- no repeated records


def _scalar_events(directory):
    """(tag, step) of a TensorBoard run as TensorBoard shows it: a SessionLog.START at step s
    (tensorboardX's purge_step) discards the run's earlier events at steps >= s."""
    from tensorboardX.proto import event_pb2

    shown = []
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            data = f.read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            if event.session_log.status == event_pb2.SessionLog.START:
                shown = [(tag, step) for tag, step in shown if step < event.step]
            for value in event.summary.value:
                shown.append((value.tag, event.step))
    return shown


def test_rewind_drops_records_past_the_restored_step(tmp_path):
    writer = log_lib.MetricWriter(str(tmp_path))
    for step in range(1, 7):
        writer.write("teacher", "train", step, {"loss": 1.0})
    for step in range(1, 6):
        writer.write("student", "train", step, {"loss": 1.0})
    writer.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"phase": "student", "split": "tra')  # A line cut short by a kill.
    time.sleep(1.1)  # tensorboardX names event files by the second.
    resumed = log_lib.MetricWriter(str(tmp_path))
    resumed.rewind("student", 3)
    for step in range(4, 7):
        resumed.write("student", "train", step, {"loss": 2.0})
    resumed.close()
    kept = [(r["phase"], r["step"], r["loss"]) for r in records(tmp_path)]
    assert kept == [("teacher", s, 1.0) for s in range(1, 7)] + [
        ("student", s, 1.0 if s <= 3 else 2.0) for s in range(1, 7)
    ]
    assert _scalar_events(tmp_path / "tensorboard" / "student") == [
        ("student/train/loss", s) for s in range(1, 7)
    ]
    assert len(_scalar_events(tmp_path / "tensorboard" / "teacher")) == 6


# ----------------------------------------------------------------------------- errors and exit

_FAILING_STEP = """
import runpy, sys, time
from pcjax.data import pipeline
from pcjax.training import steps

load = pipeline._load_train_example
def slow_load(*args, **kwargs):  # Keeps the pipeline's reading threads busy for minutes.
    time.sleep(0.05)
    return load(*args, **kwargs)
pipeline._load_train_example = slow_load

def make_failing_step(*args, **kwargs):
    def step(*args):
        print("failing at", time.time(), flush=True)
        raise {error}("forced failure inside the step")
    return step
steps.make_distill_step = make_failing_step
sys.argv = ["train.py"] + sys.argv[1:]
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.mark.parametrize(
    "error, code, message",
    [
        ("RuntimeError", 1, "train.py: error: RuntimeError: forced failure inside the step"),
        ("KeyboardInterrupt", 130, ("train.py: error: interrupted; the last checkpoint is teacher "
                                    "step 6 in {workdir}/teacher/checkpoints; rerun the same")),
    ],
)
def test_error_inside_a_step_ends_the_process_within_seconds(
    finished, tmp_path, error, code, message
):
    """When the step fails, the pipeline has about a minute of decoding queued (256 prefetched
    batches of 16 examples at 50 ms each) on threads that are not daemons: the trainer closes the
    pipeline, so the process still ends within seconds, with one line and no traceback."""
    workdir = str(tmp_path)
    shutil.copytree(os.path.join(finished, "teacher"), os.path.join(workdir, "teacher"))
    result = train(workdir, script=("-c", _FAILING_STEP.format(error=error)))
    ended = time.time()
    assert result.returncode == code, result.stderr[-3000:]
    failed = float(result.stdout.split("failing at ")[1].split()[0])
    assert ended - failed < 15.0
    (line,) = error_lines(result)
    assert line.startswith(message.format(workdir=workdir))
    assert "Traceback" not in result.stderr


_USAGE_ERRORS = {
    "unknown key": ((), ["--config.nope=1"], "--config.nope: no such key"),
    "misspelled key": ((), ["--config.distill.los=rkd"],
                       "--config.distill.los: no such key; did you mean 'loss'?"),
    "missing config file": (
        ("--config=missing.py",), [], "--config: no config file at missing.py"
    ),
    "unparsable value": (
        (), ["--config.student.train.batch_size=abc"],
        "--config.student.train.batch_size: expected int, got 'abc'",
    ),
    "unknown loss option": (
        (), ["--config.distill.loss_kwargs.eps=0.3"],
        "config.distill.loss_kwargs.eps: not an option of perception_coherence; expected some of",
    ),
    "bad crd option": (
        (), ["--config.distill.loss=crd", "--config.distill.loss_kwargs.nce_k=0"],
        "config.distill.loss_kwargs.nce_k: must be an integer >= 1, got 0",
    ),
    "loss option without a value": (
        (), ["--config.distill.loss_kwargs.nce_k"],
        "config.distill.loss_kwargs.nce_k: the flag has no value",
    ),
    "batch larger than its split": (
        (), ["--config.student.train.batch_size=100000"],
        ("config.student.train.batch_size: 100000 is larger than the 1442 examples of split "
         "'train' of 'digits'"),
    ),
}


@pytest.fixture(scope="module")
def usage_errors(tmp_path_factory):
    """Every bad command line of _USAGE_ERRORS, run at once (each costs mostly imports)."""
    root = tmp_path_factory.mktemp("usage")
    running = {
        case: (
            root / case.replace(" ", "_"),
            subprocess.Popen(
                [sys.executable, "train.py", *first, f"--workdir={root / case.replace(' ', '_')}",
                 *TINY, *args],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
            ),
        )
        for case, (first, args, _) in _USAGE_ERRORS.items()
    }
    results = {}
    for case, (workdir, process) in running.items():
        stdout, stderr = process.communicate(timeout=600)
        results[case] = (workdir, subprocess.CompletedProcess(process.args, process.returncode,
                                                              stdout, stderr))
    return results


@pytest.mark.parametrize("case", list(_USAGE_ERRORS))
def test_usage_errors_print_one_line_and_exit_2_before_any_work(usage_errors, case):
    workdir, result = usage_errors[case]
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = error_lines(result)
    assert line.startswith("train.py: error: ") and _USAGE_ERRORS[case][2] in line
    assert "Traceback" not in result.stderr
    assert not workdir.exists()


def test_traceback_on_request(tmp_path):
    result = train(
        tmp_path, "--config.student.train.batch_size=-1", env={**ENV, "PCJAX_TRACEBACK": "1"}
    )
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr
    assert ("ConfigError: config.student.train.batch_size: must be an integer >= 1, got -1"
            in result.stderr)


def test_traceback_only_for_a_true_value(tmp_path):
    """PCJAX_TRACEBACK=0 is off: one line, no traceback, nothing from the libraries."""
    result = train(
        tmp_path, "--config.student.train.batch_size=-1", env={**ENV, "PCJAX_TRACEBACK": "0"}
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(
        "train.py: error: config.student.train.batch_size: must be an integer >= 1, got -1")


# ---------------------------------------------------------------------------- damaged workdir files


@pytest.mark.parametrize("content, cause", [
    (b"", "Expecting value"), (b'{\n  "dataset": "digits",\n  "distill', "Unterminated string")])
def test_damaged_config_json_is_one_line_naming_it(finished, tmp_path, content, cause):
    workdir = copy_of(finished, tmp_path)
    with open(os.path.join(workdir, "config.json"), "wb") as f:
        f.write(content)
    result = train(workdir)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = error_lines(result)
    assert line.startswith(
        f"train.py: error: config: {workdir}/config.json is damaged: not the JSON object a run "
        f"writes ({cause}"
    )
    assert line.endswith("; restore it, or use a new --workdir")
    assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------------- one run per workdir

_HOLD_LOCK = """
import sys, time
from pcjax.training import workdir
with workdir.WorkdirLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_second_run_on_a_workdir_in_use_is_refused_naming_the_holder(finished, tmp_path):
    """Another process holds the workdir (as a running train.py does): train.py refuses with
    one line naming its pid and changes nothing; once that process is killed, the workdir
    resumes."""
    workdir = copy_of(finished, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, workdir], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = {name: os.path.getmtime(os.path.join(workdir, name))
                  for name in ("config.json", "metrics.jsonl", "results.json")}
        result = train(workdir)
        assert result.returncode == 2, result.stderr[-3000:]
        (line,) = error_lines(result)
        assert line == (
            f"train.py: error: the workdir {workdir} is in use (process {holder.pid} holds "
            ".lock); wait for that run to end or use another --workdir"
        )
        assert before == {name: os.path.getmtime(os.path.join(workdir, name)) for name in before}
    finally:
        holder.kill()
        holder.wait()


# ----------------------------------------------------------------------------- signals


def _signalled(workdir, signum, delay):
    process = subprocess.Popen(
        [sys.executable, "train.py", f"--workdir={workdir}", *TINY], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )
    time.sleep(delay)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.parametrize("signum, delay", [(signal.SIGINT, 0.7), (signal.SIGINT, 2.0),
                                           (signal.SIGTERM, 1.5)])
def test_a_signal_during_start_up_ends_the_run_with_one_line(tmp_path, signum, delay):
    """Ctrl-C or SIGTERM while train.py imports and starts (where an exception raised by a
    signal handler can be lost in a garbage-collector callback): 128 + the signal, one line. On a
    fast machine the later delays reach the first steps: then the line says where the checkpoint
    it saved is."""
    result = _signalled(tmp_path / "workdir", signum, delay)
    assert result.returncode == 128 + signum, result.stderr[-3000:]
    reason = "interrupted" if signum == signal.SIGINT else "terminated by SIGTERM"
    name = signal.Signals(signum).name
    # Progress bars (tqdm's "%|") are not messages.
    (line,) = [line for line in result.stderr.strip().splitlines() if "%|" not in line]
    assert line == f"train.py: error: {reason}; no checkpoint was written" or (
        line.startswith(f"teacher: stopped by {name} after saving the checkpoint of step")
        and line.endswith("rerun the same command to resume")), result.stderr[-3000:]


_SIGNAL_IN_IMPORT = """
import importlib.abc, os, runpy, signal, sys

class SignalWhenImported(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "tensorstore":  # An extension module orbax imports.
            handler = signal.getsignal(signal.SIGTERM)
            print("handler:", getattr(handler, "__module__", None), flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
        return None

sys.meta_path.insert(0, SignalWhenImported())
sys.argv = ["train.py"] + sys.argv[1:]
runpy.run_path("train.py", run_name="__main__")
"""


def test_a_signal_while_extension_modules_load_is_only_recorded(tmp_path):
    """SIGTERM as orbax's extension modules are imported: the handler that runs then only records
    it (an exception raised inside a module's initialization can abort the interpreter), and the
    run ends with 143 and one line once the imports are done."""
    result = train(tmp_path / "workdir", script=("-c", _SIGNAL_IN_IMPORT))
    assert result.stdout.splitlines() == ["handler: __main__"], result.stdout
    assert result.returncode == 143, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [
        "train.py: error: terminated by SIGTERM; no checkpoint was written"], result.stderr[-3000:]


def test_a_signal_during_start_up_names_an_earlier_runs_checkpoint(finished, tmp_path):
    """Interrupted before any work, a rerun into a workdir with checkpoints says where they are."""
    workdir = copy_of(finished, tmp_path)
    result = _signalled(workdir, signal.SIGINT, 0.7)
    assert result.returncode == 130, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.strip().splitlines() if "%|" not in line]
    assert line.startswith("train.py: error: interrupted; the last checkpoint is student step "), line
    assert line.endswith("rerun the same command to resume from it")


_SLOW_EVALUATION = """
import runpy, sys, time
from pcjax.training import trainer

def slow_evaluate(*args, **kwargs):  # The final evaluation of a large eval split.
    print("evaluating", flush=True)
    time.sleep(120)
trainer.evaluate = slow_evaluate
sys.argv = ["train.py"] + sys.argv[1:]
runpy.run_path("train.py", run_name="__main__")
"""


def test_sigterm_during_the_final_evaluation_exits_143_with_one_line(finished, tmp_path):
    workdir = copy_of(finished, tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_EVALUATION, f"--workdir={workdir}", *TINY], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )
    assert process.stdout.readline().strip() == "evaluating"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr[-3000:]
    (line,) = [line for line in stderr.replace("\r", "\n").splitlines()
               if line.startswith("train.py:")]
    assert line == (
        "train.py: error: terminated by SIGTERM; the last checkpoint is student step 6 in "
        f"{workdir}/student/checkpoints; rerun the same command to resume from it"
    )
    assert "Traceback" not in stderr


# ----------------------------------------------------------------------------- full disk


_LIMITED_FILE_SIZE = """
import os, resource, signal, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # Fail the write instead of killing the process.
os.execv(sys.executable, [sys.executable, "train.py", *sys.argv[1:]])
"""


def test_a_full_disk_is_one_line(tmp_path):
    """Files may not grow past 20 kB (RLIMIT_FSIZE, writes fail as on a full disk): the first
    checkpoint save fails; one line, none of orbax's background tracebacks or log records."""
    result = train(tmp_path, script=("-c", _LIMITED_FILE_SIZE))
    assert result.returncode == 1, result.stderr[-3000:]
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines()
             if line.strip() and "step/s" not in line and "s/step" not in line]
    assert len(lines) == 1, lines
    assert lines[0].startswith("train.py: error: ") and "checkpoint" in lines[0]
