"""A pod on one machine: train.py as 2 processes x 2 CPU devices against 1 process x 4 devices.

The processes are real: ``jax.distributed`` with gloo collectives and a coordinator on 127.0.0.1,
launched through the environment variables of the README. One module fixture runs every job of
the file in three concurrent waves (a shared compilation cache makes the later waves cheap); the
tests then read the workdirs. It is the only test of the multi-process path (process-local
data, orbax from several processes, process-0-only writes, preemption agreement), hence worth
its minutes.

Jobs (digits, 6 teacher + 40 student steps, batch 32, every step logged):
  reference   1 x 4, uninterrupted
  from2to1    2 x 2 preempted by SIGTERM to process 1 only, resumed as 1 x 4
  from1to2    1 x 4 preempted by SIGINT (Ctrl-C), resumed as 2 x 2
  killed      2 x 2, process 1 killed (SIGKILL) mid-student; rerun as 1 x 4
  evalterm    2 x 2, SIGTERM to process 1 after the student's last step (JAX's notifier holds
              SIGTERM in a multi-process run); rerun as 1 x 4
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from pcjax.training import preemption, sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_PY = os.path.join(ROOT, "train.py")
STUDENT_STEPS, TEACHER_STEPS, CHECKPOINT_EVERY = 40, 6, 10
ARGS = [
    f"--config.teacher.train.num_steps={TEACHER_STEPS}",
    f"--config.student.train.num_steps={STUDENT_STEPS}",
    "--config.teacher.train.batch_size=32",
    "--config.student.train.batch_size=32",
    "--config.teacher.train.log_every=1",
    "--config.student.train.log_every=1",
    f"--config.teacher.train.checkpoint_every={CHECKPOINT_EVERY}",
    f"--config.student.train.checkpoint_every={CHECKPOINT_EVERY}",
    "--config.heartbeat_timeout_seconds=5",
    "--config.eval.probe_train_split=train[:512]",
    # SGD, not the config's AdamW: Adam's first updates are lr * sign(g), so a gradient entry
    # near 0 that rounding flips moves a parameter by a whole step, and the 1- and 2-process
    # trajectories would part by far more than rounding.
    "--config.teacher.train.optimizer.name=sgd",
    "--config.student.train.optimizer.name=sgd",
    "--config.teacher.train.optimizer.learning_rate=0.05",
    "--config.student.train.optimizer.learning_rate=0.05",
]
# A hung collective or coordinator must fail the test, not hang CI.
JOB_TIMEOUT = 300
# Seconds a surviving process may take to notice a dead peer: the 5 s heartbeat timeout plus
# slack for a loaded machine.
DEAD_PEER_EXIT = 45

# Runs train.py as __main__ and logs every file it opens for writing under --workdir: an
# independent record of which process writes what.
AUDITED_TRAIN = """
import os, runpy, sys
workdir = os.path.abspath(sys.argv[sys.argv.index("--workdir") + 1])
log = open(os.environ["PCJAX_TEST_WRITES"], "w", buffering=1)
def hook(event, args):
    if event != "open" or not isinstance(args[0], str):
        return
    mode, flags = args[1], args[2]
    writes = any(c in mode for c in "wax+") if mode else flags & (os.O_WRONLY | os.O_RDWR)
    path = os.path.abspath(args[0])
    if writes and path.startswith(workdir + os.sep):
        log.write(os.path.relpath(path, workdir) + "\\n")
sys.addaudithook(hook)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture
def initialize_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_distributed_launch_passes_the_environment_explicitly(initialize_calls, monkeypatch):
    assert not sharding.maybe_initialize_distributed(False)
    assert initialize_calls == []
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    assert sharding.maybe_initialize_distributed(False, heartbeat_timeout_seconds=7)
    assert initialize_calls == [
        dict(
            coordinator_address="127.0.0.1:1234", num_processes=2, process_id=1,
            heartbeat_timeout_seconds=7,
        )
    ]


def test_distributed_launch_leaves_unset_values_to_cluster_detection(initialize_calls):
    assert sharding.maybe_initialize_distributed(True)
    (call,) = initialize_calls
    assert call["coordinator_address"] is call["num_processes"] is call["process_id"] is None


@pytest.mark.parametrize(
    "env, timeout, message",
    [
        ({"JAX_NUM_PROCESSES": "two"}, 60, "JAX_NUM_PROCESSES: expected an integer, got 'two'"),
        ({"JAX_PROCESS_ID": "1.0"}, 60, "JAX_PROCESS_ID: expected an integer, got '1.0'"),
        ({}, 0, "config.heartbeat_timeout_seconds"),
    ],
)
def test_distributed_launch_rejects_bad_values_naming_them(
    initialize_calls, monkeypatch, env, timeout, message
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=re.escape(message)):
        sharding.maybe_initialize_distributed(True, heartbeat_timeout_seconds=timeout)
    assert initialize_calls == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_preemption_watch_flags_a_signal_until_exit_then_restores_the_handlers(signum):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with preemption.PreemptionWatch() as watch:
        assert not watch.reached(1)
        os.kill(os.getpid(), signum)  # Handled here instead of ending pytest.
        assert watch.reached(2)
        error = watch.error("teacher", 2, "/runs/x/teacher/checkpoints")
    assert {s: signal.getsignal(s) for s in before} == before
    assert error.exit_code == 128 + signum
    assert str(error) == (
        f"teacher: stopped by {signal.Signals(signum).name} after saving the checkpoint of step 2 "
        "in /runs/x/teacher/checkpoints; rerun the same command to resume"
    )


_USED_PORTS = set()


def _free_port() -> int:
    """A free port no other job of this module got: concurrent jobs sharing a coordinator port
    would join one another's runs."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _USED_PORTS:
            _USED_PORTS.add(port)
            return port


class Job:
    """One launch of train.py as `processes` processes with `devices` CPU devices each."""

    def __init__(self, workdir, processes: int, devices: int, cache_dir: str, tag: str):
        self.workdir, self.tag = str(workdir), tag
        flags = re.sub(
            r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")
        )
        port = _free_port()
        self.procs, self.logs = [], []
        for i in range(processes):
            base = f"{self.workdir}.{tag}.{i}"
            env = dict(
                os.environ,
                XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={devices}".strip(),
                JAX_PLATFORMS="cpu",
                # As in tests/conftest.py: tiny shapes, so compile time dominates.
                JAX_DISABLE_MOST_OPTIMIZATIONS="1",
                JAX_COMPILATION_CACHE_DIR=cache_dir,
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
                PCJAX_TEST_WRITES=base + ".writes",
            )
            if processes > 1:
                env.update(
                    JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                    JAX_NUM_PROCESSES=str(processes),
                    JAX_PROCESS_ID=str(i),
                )
            with open(base + ".log", "w") as log:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-c", AUDITED_TRAIN, TRAIN_PY, "--workdir",
                         self.workdir, *ARGS],
                        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                    )
                )
            self.logs.append(base)
        self.returncodes = None

    def output(self, i: int) -> str:
        with open(self.logs[i] + ".log") as f:
            return f.read()

    def writes(self, i: int) -> set[str]:
        with open(self.logs[i] + ".writes") as f:
            return set(f.read().split())

    def wait(self) -> list[int]:
        deadline = time.monotonic() + JOB_TIMEOUT
        try:
            self.returncodes = [p.wait(max(1.0, deadline - time.monotonic())) for p in self.procs]
        except subprocess.TimeoutExpired:
            for p in self.procs:
                p.kill()
            raise AssertionError(f"{self.tag}: train.py hung; output:\n{self.output(0)[-3000:]}")
        return self.returncodes

    def wait_until(self, predicate, what: str):
        """Polls `predicate` (while every process is alive) until it holds."""
        deadline = time.monotonic() + JOB_TIMEOUT
        while not predicate():
            if any(p.poll() is not None for p in self.procs) or time.monotonic() > deadline:
                for p in self.procs:
                    p.kill()
                raise AssertionError(f"{self.tag}: never reached {what}:\n{self.output(0)[-3000:]}")
            time.sleep(0.05)


def _records(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def _student_step(workdir) -> int:
    steps = [
        r["step"] for r in _records(workdir) if r["phase"] == "student" and r["split"] == "train"
    ]
    return max(steps, default=0)


def _interrupt(job: Job, process: int, signum: int):
    """Sends `signum` to one process once the student has trained 3 steps; the process is
    stopped meanwhile so the signal lands mid-phase however fast the machine is.
    """
    job.wait_until(lambda: _student_step(job.workdir) >= 3, "student step 3")
    pid = job.procs[process].pid
    os.kill(pid, signal.SIGSTOP)
    os.kill(pid, signum)
    os.kill(pid, signal.SIGCONT)


def _checkpoints(workdir, phase="student"):
    directory = os.path.join(workdir, phase, "checkpoints")
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    root = tmp_path_factory.mktemp("pod")
    cache = str(root / "compilation_cache")
    dirs = {name: root / name
            for name in ("reference", "from2to1", "from1to2", "killed", "evalterm")}
    jobs = {}

    # Wave 1 compiles the 1 x 4 and the 2 x 2 programs once each.
    jobs["reference"] = Job(dirs["reference"], 1, 4, cache, "run")
    jobs["from2to1/preempted"] = Job(dirs["from2to1"], 2, 2, cache, "preempted")
    _interrupt(jobs["from2to1/preempted"], 1, signal.SIGTERM)
    for job in (jobs["reference"], jobs["from2to1/preempted"]):
        job.wait()
    jobs["from2to1/preempted"].checkpoints = _checkpoints(dirs["from2to1"])

    # Wave 2.
    jobs["from2to1/resumed"] = Job(dirs["from2to1"], 1, 4, cache, "resumed")
    jobs["from1to2/preempted"] = Job(dirs["from1to2"], 1, 4, cache, "preempted")
    killed = jobs["killed/killed"] = Job(dirs["killed"], 2, 2, cache, "killed")
    _interrupt(jobs["from1to2/preempted"], 0, signal.SIGINT)
    killed.wait_until(
        lambda: _student_step(killed.workdir) >= CHECKPOINT_EVERY + 2
        and CHECKPOINT_EVERY in _checkpoints(killed.workdir),
        f"student checkpoint {CHECKPOINT_EVERY}",
    )
    os.kill(killed.procs[1].pid, signal.SIGSTOP)  # Freezes the step count the rerun resumes past.
    killed.steps_before_kill = _student_step(killed.workdir)
    killed.checkpoint_before_kill = _checkpoints(killed.workdir)[-1]
    killed.procs[1].kill()
    start = time.monotonic()
    try:
        killed.procs[0].wait(DEAD_PEER_EXIT)
    except subprocess.TimeoutExpired:
        killed.procs[0].kill()
    killed.survivor_seconds = time.monotonic() - start
    # The signal lands between the student's final checkpoint and the end of the evaluation.
    terminated = jobs["evalterm/terminated"] = Job(dirs["evalterm"], 2, 2, cache, "terminated")
    terminated.wait_until(
        lambda: STUDENT_STEPS in _checkpoints(terminated.workdir)
        if os.path.isdir(os.path.join(terminated.workdir, "student", "checkpoints")) else False,
        f"student checkpoint {STUDENT_STEPS}",
    )
    pid = terminated.procs[1].pid
    os.kill(pid, signal.SIGSTOP)
    terminated.results_before_signal = os.path.exists(dirs["evalterm"] / "results.json")
    os.kill(pid, signal.SIGTERM)
    os.kill(pid, signal.SIGCONT)
    for name in ("from2to1/resumed", "from1to2/preempted", "killed/killed",
                 "evalterm/terminated"):
        jobs[name].wait()
    terminated.results_after_signal = os.path.exists(dirs["evalterm"] / "results.json")
    jobs["from1to2/preempted"].checkpoints = _checkpoints(dirs["from1to2"])

    # Wave 3.
    jobs["from1to2/resumed"] = Job(dirs["from1to2"], 2, 2, cache, "resumed")
    jobs["killed/rerun"] = Job(dirs["killed"], 1, 4, cache, "rerun")
    jobs["evalterm/rerun"] = Job(dirs["evalterm"], 1, 4, cache, "rerun")
    for name in ("from1to2/resumed", "killed/rerun", "evalterm/rerun"):
        jobs[name].wait()
    return {"dirs": dirs, "jobs": jobs}


def _results(workdir):
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)


def _train_losses(workdir):
    """{(phase, step): loss} of the train records; the last record wins for a repeated step."""
    return {
        (r["phase"], r["step"]): r["loss"] for r in _records(workdir) if r["split"] == "train"
    }


def _final_student(workdir):
    """The student's final train state as NumPy arrays (restored without a device layout)."""
    path = os.path.join(workdir, "student", "checkpoints", str(STUDENT_STEPS), "default")
    metadata = ocp.StandardCheckpointer().metadata(path).item_metadata
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), metadata)
    return ocp.StandardCheckpointer().restore(path, target)


def test_every_job_exits_as_expected(pod):
    jobs = pod["jobs"]
    for name in ("reference", "from2to1/resumed", "from1to2/resumed", "killed/rerun",
                 "evalterm/rerun"):
        assert jobs[name].returncodes == [0] * len(jobs[name].procs), jobs[name].output(0)[-3000:]


@pytest.mark.parametrize("name", ["from2to1", "from1to2", "killed", "evalterm"])
def test_multi_process_and_resumed_jobs_match_the_single_process_job(pod, name):
    reference, workdir = pod["dirs"]["reference"], pod["dirs"][name]
    # gloo and in-process all-reduces sum float32 in another order, which moves the last bits.
    # Cross-entropy is smooth: the teacher's losses keep agreeing to ~1e-7 (rtol 1e-5), and so
    # does the student's first loss (same teacher, init and batch). The soft rank's Jacobian is
    # piecewise constant (pooled blocks), so rounding can switch a later student gradient to the
    # neighbouring piece; the two trajectories then part slowly (1e-4 at the switch, up to 7e-3
    # relative by step 40 seen) and end within a few test images of each other.
    expected_losses, losses = _train_losses(reference), _train_losses(workdir)
    assert sorted(losses) == sorted(expected_losses)
    for select, rtol in (
        (lambda k: k[0] == "teacher" or k == ("student", 1), 1e-5),
        (lambda k: k[0] == "student", 3e-2),
    ):
        keys = sorted(filter(select, losses))
        np.testing.assert_allclose(
            [losses[k] for k in keys], [expected_losses[k] for k in keys], rtol=rtol
        )
    expected, results = _results(reference), _results(workdir)
    assert sorted(results) == sorted(expected)
    for key in expected:
        # Accuracies count test images (360): 2 moved images seen, 4 allowed.
        atol = 2e-3 if key.endswith("pc_score") else 4 / 360 + 1e-6  # pc_score: 2e-4 seen.
        assert abs(results[key] - expected[key]) <= atol, (key, results[key], expected[key])
    expected_state, state = _final_student(reference), _final_student(workdir)
    chex.assert_trees_all_equal_shapes_and_dtypes(state, expected_state)
    # Parameters: 6e-3 apart seen; BatchNorm running statistics (averages of batch statistics
    # along the trajectory): 2e-2.
    for key, tolerance in (("params", 2e-2), ("model_state", 6e-2)):
        chex.assert_trees_all_close(
            state[key], expected_state[key], rtol=tolerance, atol=tolerance
        )


OUTPUTS = {"config.json", "metrics.jsonl", "results.json"}


@pytest.mark.parametrize("name", ["from2to1/preempted", "from1to2/resumed", "killed/killed"])
def test_only_process_zero_writes_metrics_config_and_results(pod, name):
    job = pod["jobs"][name]
    written = job.writes(0)
    assert {"config.json", "metrics.jsonl"} <= written
    assert any(path.startswith("tensorboard") for path in written)
    assert job.writes(1) & OUTPUTS == set()
    assert not any(path.startswith("tensorboard") for path in job.writes(1))
    if name == "from1to2/resumed":
        assert "results.json" in written
        # So does the printed summary: one table for the pod, not one per process.
        assert "workdir: " in job.output(0) and "workdir: " not in job.output(1)
        records = [(r["phase"], r["split"], r["step"]) for r in _records(job.workdir)]
        # Each step was written once: by the 1-process run up to the preemption, then by
        # process 0 of the 2-process run.
        assert len(records) == len(set(records))


_STOPPED = re.compile(
    r"^student: stopped by (SIG[A-Z]+) after saving the checkpoint of step (\d+) in (\S+); "
    r"rerun the same command to resume$"
)


@pytest.mark.parametrize(
    "name, signal_name, returncodes",
    [("from2to1/preempted", "SIGTERM", [143, 143]), ("from1to2/preempted", "SIGINT", [130])],
)
def test_preemption_saves_a_common_step_and_exits_with_one_line(
    pod, name, signal_name, returncodes
):
    job = pod["jobs"][name]
    assert job.returncodes == returncodes, job.output(0)[-3000:]
    steps = set()
    for i in range(len(job.procs)):
        output = job.output(i)
        assert "Traceback" not in output
        match = _STOPPED.match(output.strip().splitlines()[-1])
        assert match, output[-3000:]
        assert match[1] in (signal_name, "SIGTERM")  # Processes that got no signal say SIGTERM.
        assert match[3] == os.path.join(job.workdir, "student", "checkpoints")
        steps.add(int(match[2]))
    (step,) = steps  # The same step on every process.
    assert 3 <= step < STUDENT_STEPS
    assert job.checkpoints[-1] == step


def test_killing_a_process_stops_the_other_promptly_and_the_rerun_resumes(pod):
    job = pod["jobs"]["killed/killed"]
    assert job.returncodes[0] not in (0, None)
    assert job.survivor_seconds < DEAD_PEER_EXIT
    records = _records(pod["dirs"]["killed"])
    teacher = [r["step"] for r in records if r["phase"] == "teacher" and r["split"] == "train"]
    assert teacher == list(range(1, TEACHER_STEPS + 1))  # The rerun did not retrain the teacher.
    student = [r["step"] for r in records if r["phase"] == "student" and r["split"] == "train"]
    assert job.steps_before_kill > job.checkpoint_before_kill
    # Steps up to the last checkpoint were trained once; the rerun went on from there.
    for step in range(1, job.checkpoint_before_kill + 1):
        assert student.count(step) == 1
    assert student[-1] == STUDENT_STEPS


def test_sigterm_after_the_last_step_stops_every_process_and_the_rerun_evaluates(pod):
    job = pod["jobs"]["evalterm/terminated"]
    assert not job.results_before_signal  # Else the signal came after the run had ended.
    assert job.returncodes == [143, 143], job.output(0)[-3000:]
    directory = os.path.join(job.workdir, "student", "checkpoints")
    for i in range(2):
        output = job.output(i)
        assert "Traceback" not in output
        assert output.strip().splitlines()[-1] == (
            f"train.py: error: terminated by SIGTERM; the last checkpoint is student step {STUDENT_STEPS} in "
            f"{directory}; rerun the same command to resume from it"
        ), output[-3000:]
    assert not job.results_after_signal  # No result is recorded for an interrupted evaluation.
    student = [r["step"] for r in _records(job.workdir)
               if r["phase"] == "student" and r["split"] == "train"]
    assert student == list(range(1, STUDENT_STEPS + 1))  # The rerun only evaluated.
