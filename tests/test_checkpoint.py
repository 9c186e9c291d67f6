"""Checkpoints that prove their integrity, and the workdir they live in: digests checked on
restore, the fallback past any damage of the newest step, the teacher export, the workdir lock,
and the damaged files a resume meets (config.json, metrics.jsonl).

Real orbax saves of a tiny tree on real files; the lock and the unreadable file involve real
second processes.
"""

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest

from pcjax.training import checkpoint, preemption, workdir
from pcjax.training import logging as log_lib
from pcjax.training.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (64, 64)


def tree(step):
    """A train-state-like tree whose arrays depend on `step`; random values, so that the array
    data file is the largest file of a checkpoint."""
    rng = np.random.default_rng(step)
    return {
        "params": {"w": rng.normal(size=SHAPE).astype(np.float32)},
        "step": np.asarray(step, np.int32),
    }


def target():
    return {"params": {"w": np.zeros(SHAPE, np.float32)}, "step": np.asarray(0, np.int32)}


def data_files(directory):
    return [
        os.path.join(root, name)
        for root, _, names in os.walk(directory)
        for name in names
        if os.sep + "d" + os.sep in os.path.join(root, name)
    ]


def flip_one_bit(directory):
    """Flips one bit in the middle of the largest array data file under `directory`."""
    path = max(data_files(directory), key=os.path.getsize)
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        data[len(data) // 2] ^= 1
        f.seek(0)
        f.write(data)


@pytest.fixture
def saved(tmp_path):
    """A Checkpointer over steps 1, 2, 3 of `tree`."""
    ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), max_to_keep=5)
    for step in (1, 2, 3):
        ckpt.save(step, tree(step))
    ckpt.wait()
    yield ckpt
    ckpt.close()


def assert_tree_equal(actual, expected):
    # Exact: a checkpoint stores the bits.
    jax.tree.map(np.testing.assert_array_equal, actual, expected)


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]


# ----------------------------------------------------------------------------- digest


def test_digest_is_sha256_of_dtype_shape_and_bytes():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    expected = hashlib.sha256(b"<f4 (2, 3)" + w.tobytes()).hexdigest()
    assert checkpoint.digest({"a": {"w": w}}) == {"['a']['w']": expected}
    # A device array, a non-contiguous view and bfloat16 hash their row-major bytes.
    assert checkpoint.digest({"a": {"w": jnp.asarray(w)}}) == {"['a']['w']": expected}
    t = np.asfortranarray(w)
    assert checkpoint.digest({"a": {"w": t}}) == {"['a']['w']": expected}
    b = w.astype(ml_dtypes.bfloat16)
    assert checkpoint.digest([b]) == {
        "[0]": hashlib.sha256(f"{b.dtype.str} (2, 3)".encode() + b.tobytes()).hexdigest()
    }


def test_digest_tells_apart_one_bit_a_dtype_and_a_shape():
    w = np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)
    flipped = w.copy()
    flipped.view(np.uint32)[2, 3] ^= 1 << 7
    digests = [checkpoint.digest([x]) for x in (w, flipped, w.view(np.int32), w.reshape(2, 8))]
    assert len({d["[0]"] for d in digests}) == 4


def test_digest_of_a_prng_key_is_its_key_data():
    key = jax.random.key(3)
    assert checkpoint.digest([key]) == checkpoint.digest([jax.random.key_data(key)])


def test_verify_names_the_path_and_the_first_bad_array():
    good = tree(1)
    checkpoint.verify(good, checkpoint.digest(good), "p")
    bad = tree(1)
    bad["params"]["w"][0, 0] += 1
    with pytest.raises(checkpoint.CorruptCheckpointError,
                       match=r"^p: 1 of 2 arrays differ .* \(first: \['params'\]\['w'\]\)$"):
        checkpoint.verify(bad, checkpoint.digest(good), "p")
    # An array without a digest is not trusted either.
    with pytest.raises(checkpoint.CorruptCheckpointError, match="2 of 2 arrays"):
        checkpoint.verify(good, {}, "p")


# ----------------------------------------------------------------------------- training checkpoints


def test_a_flipped_bit_restores_silently_without_the_digest_and_is_caught_with_it(saved, caplog):
    step3 = os.path.join(saved.directory, "3")
    flip_one_bit(step3)
    # What plain orbax reads: one wrong value, no error.
    plain = ocp.StandardCheckpointer().restore(os.path.join(step3, "default"), target())
    assert np.sum(plain["params"]["w"] != tree(3)["params"]["w"]) == 1
    with pytest.raises(checkpoint.CorruptCheckpointError,
                       match=f"^{step3}: 1 of 2 arrays differ"):
        saved.restore(3, target())
    with caplog.at_level(logging.WARNING):
        restored = saved.restore_latest(target())
    assert_tree_equal(restored, tree(2))
    (warning,) = warnings_of(caplog)
    assert warning.startswith(f"checkpoint step 3 in {saved.directory} does not restore "
                              "(CorruptCheckpointError: ")
    assert warning.endswith(f"moved it to {step3}.damaged and resumed from step 2")
    assert sorted(os.listdir(saved.directory)) == ["1", "2", "3.damaged"]
    assert saved.latest_step() == 2


@pytest.mark.parametrize(
    "damage, cause",
    [
        ("empty the step directory", "has no digest of its arrays"),
        ("delete the arrays item", "Item \"default\" was not found"),
        ("delete the digest item", "has no digest of its arrays"),
        ("change the digest", "1 of 2 arrays differ"),
        ("truncate the array data", ""),
    ],
)
def test_any_damage_to_the_newest_steps_falls_back_and_saving_goes_on(saved, caplog, damage,
                                                                     cause):
    """Steps 3 and 2 damaged alike: step 1 restores, each damaged step is set aside with one
    warning, and the same Checkpointer saves and restores new steps 2 and 3 afterwards."""
    for step in (3, 2):
        path = os.path.join(saved.directory, str(step))
        if damage == "empty the step directory":  # rm -rf <step>/*
            for name in os.listdir(path):
                item = os.path.join(path, name)
                shutil.rmtree(item) if os.path.isdir(item) else os.remove(item)
        elif damage == "delete the arrays item":
            shutil.rmtree(os.path.join(path, "default"))
        elif damage == "delete the digest item":
            shutil.rmtree(os.path.join(path, "digest"))
        elif damage == "change the digest":
            (name,) = [n for n in os.listdir(os.path.join(path, "digest")) if "commit" not in n]
            with open(os.path.join(path, "digest", name)) as f:
                digest = json.load(f)
            digest["['params']['w']"] = checkpoint.digest([tree(9)["params"]["w"]])["[0]"]
            with open(os.path.join(path, "digest", name), "w") as f:
                json.dump(digest, f)
        else:
            with open(max(data_files(path), key=os.path.getsize), "r+b") as f:
                f.truncate(10)
    with caplog.at_level(logging.WARNING):
        restored = saved.restore_latest(target())
    assert_tree_equal(restored, tree(1))
    assert [w.split(" in ")[0] for w in warnings_of(caplog)] == [
        "checkpoint step 3", "checkpoint step 2"
    ]
    assert all(cause in w for w in warnings_of(caplog))
    assert sorted(os.listdir(saved.directory)) == ["1", "2.damaged", "3.damaged"]
    for step in (2, 3):
        saved.save(step, tree(step))
    saved.wait()
    assert_tree_equal(saved.restore_latest(target()), tree(3))


def test_nothing_restores_nothing_is_moved_and_the_error_says_what_to_delete(saved):
    for step in (1, 2, 3):
        flip_one_bit(os.path.join(saved.directory, str(step)))
    with pytest.raises(checkpoint.CheckpointError,
                       match=f"^no checkpoint in {saved.directory} restores \\(step 3: "
                             f"CorruptCheckpointError: .*\\); delete {saved.directory} to start"):
        saved.restore_latest(target())
    assert sorted(os.listdir(saved.directory)) == ["1", "2", "3"]
    assert checkpoint.Checkpointer(str(saved.directory) + "_new", max_to_keep=1).restore_latest(
        target()) is None


def test_a_checkpoint_without_a_digest_is_not_trusted(tmp_path):
    """A step written as a bare orbax checkpoint (no digest item) is damaged."""
    directory = str(tmp_path / "ckpt")
    ckpt = checkpoint.Checkpointer(directory, max_to_keep=5)
    ckpt.save(1, tree(1))
    ckpt.wait()
    ckpt.close()
    bare = ocp.CheckpointManager(directory)
    bare.save(2, args=ocp.args.StandardSave(tree(2)))
    bare.wait_until_finished()
    bare.close()
    ckpt = checkpoint.Checkpointer(directory, max_to_keep=5)
    assert_tree_equal(ckpt.restore_latest(target()), tree(1))
    ckpt.close()


_UNREADABLE = """
import numpy as np, sys
from pcjax.training import checkpoint
ckpt = checkpoint.Checkpointer(sys.argv[1], max_to_keep=5)
restored = ckpt.restore_latest({"params": {"w": np.zeros((64, 64), np.float32)},
                                "step": np.asarray(0, np.int32)})
print("restored step", int(restored["step"]))
"""


def test_an_unreadable_file_falls_back_with_one_line():
    """A file without read permission (as a non-root user sees it): one warning line on stderr,
    not orbax's tracebacks of the abandoned reads."""
    base = tempfile.mkdtemp()  # Not under pytest's directory, which only its owner can enter.
    try:
        directory = os.path.join(base, "ckpt")
        ckpt = checkpoint.Checkpointer(directory, max_to_keep=5)
        for step in (1, 2, 3):
            ckpt.save(step, tree(step))
        ckpt.wait()
        ckpt.close()
        command = [sys.executable, "-c", _UNREADABLE, directory]
        if os.geteuid() == 0:  # root reads anything: restore as nobody.
            if shutil.which("setpriv") is None:
                pytest.skip("running as root without setpriv to run a process as another user")
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
            for root, dirs, names in os.walk(base):
                for name in [*dirs, *names, ""]:
                    os.chown(os.path.join(root, name), 65534, -1)
        os.chmod(max(data_files(os.path.join(directory, "3")), key=os.path.getsize), 0)
        result = subprocess.run(
            command, cwd=ROOT, check=False,
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "PYTHONPATH": ROOT, "HOME": base},
        )
    finally:
        shutil.rmtree(base)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "restored step 2"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert f"checkpoint step 3 in {directory} does not restore" in lines[0]
    assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------------- teacher export


def test_export_round_trip_and_a_flipped_bit_is_an_error_naming_the_path(tmp_path):
    path = str(tmp_path / "model")
    checkpoint.save_model(path, tree(1))
    assert checkpoint.model_exists(path)
    assert sorted(os.listdir(path)) == sorted(
        ["_CHECKPOINT_METADATA", "commit_success.txt", "default", "digest"])
    assert_tree_equal(checkpoint.load_model(path, target()), tree(1))
    with pytest.raises(ValueError, match="already exists"):
        checkpoint.save_model(path, tree(2))  # Written once.
    flip_one_bit(path)
    with pytest.raises(checkpoint.CorruptCheckpointError,
                       match=f"^{path}: 1 of 2 arrays differ from the digest saved with them"):
        checkpoint.load_model(path, target())
    shutil.rmtree(os.path.join(path, "digest"))
    with pytest.raises(checkpoint.CorruptCheckpointError, match=f"^{path} has no digest"):
        checkpoint.load_model(path, target())


# ----------------------------------------------------------------------------- workdir lock

_HOLDER = """
import sys, time
from pcjax.training import workdir
with workdir.WorkdirLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def hold(directory):
    """A second process holding the lock of `directory` (returned once it holds it)."""
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(directory)], cwd=ROOT, stdout=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert process.stdout.readline().strip() == "locked"
    return process


def test_lock_refuses_while_another_process_holds_it_and_is_taken_over_after_a_kill(tmp_path):
    holder = hold(tmp_path)
    try:
        with pytest.raises(workdir.WorkdirBusyError) as error:
            workdir.WorkdirLock(str(tmp_path)).__enter__()
        assert str(error.value) == (
            f"the workdir {tmp_path} is in use (process {holder.pid} holds .lock); wait for that "
            "run to end or use another --workdir"
        )
        assert isinstance(error.value, ConfigError)  # train.py: one line, exit 2.
    finally:
        holder.kill()  # SIGKILL: no cleanup runs; the OS drops the lock.
        holder.wait()
    with workdir.WorkdirLock(str(tmp_path)), open(tmp_path / ".lock") as f:
        assert f.read().strip() == str(os.getpid())
    with workdir.WorkdirLock(str(tmp_path)):  # Released on exit.
        pass


# ----------------------------------------------------------------------------- resume files


@pytest.mark.parametrize(
    "content, cause",
    [(b"", "Expecting value"), (b'{"seed": 0, "name"', "Expecting"),
     (b'{"seed": "\xff\xfe"}', "codec can't decode"), (b"[1, 2]", "")],
)
def test_damaged_config_json_is_one_config_error_naming_the_file(tmp_path, content, cause):
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(ConfigError) as error:
        log_lib.saved_config(str(tmp_path))
    message = str(error.value)
    assert message.startswith(f"config: {tmp_path}/config.json is damaged: not the JSON object")
    assert cause in message and message.endswith("restore it, or use a new --workdir")
    assert "\n" not in message
    assert log_lib.saved_config(str(tmp_path / "new")) is None


def test_rewind_keeps_one_record_per_step_and_drops_unreadable_lines(tmp_path):
    """Two overlapping runs wrote steps 1-2 twice; a line has non-UTF-8 bytes, another is cut
    short. A resume from step 2 keeps the last record of each step and drops the rest."""
    lines = [
        {"phase": "teacher", "split": "train", "step": 1, "loss": 1.0},
        {"phase": "teacher", "split": "train", "step": 2, "loss": 1.0},
        {"phase": "teacher", "split": "train", "step": 1, "loss": 2.0},
        {"phase": "teacher", "split": "eval", "step": 2, "top1": 0.5},
        {"phase": "teacher", "split": "train", "step": 2, "loss": 2.0},
        {"phase": "teacher", "split": "train", "step": 3, "loss": 2.0},
    ]
    raw = [json.dumps(r).encode() + b"\n" for r in lines]
    raw.insert(3, b'{"phase": "teacher", "split": "tr\xffin", "step": 1}\n')
    raw.append(b'{"phase": "teacher", "spl')
    (tmp_path / "metrics.jsonl").write_bytes(b"".join(raw))
    writer = log_lib.MetricWriter(str(tmp_path))
    writer.rewind("teacher", 2)
    writer.close()
    with open(tmp_path / "metrics.jsonl", encoding="utf-8") as f:
        kept = [json.loads(line) for line in f]
    assert kept == [lines[2], lines[3], lines[4]]


@pytest.mark.parametrize("value, on", [("", False), ("0", False), ("false", False),
                                       ("no", False), ("1", True), ("TRUE", True),
                                       (" yes ", True)])
def test_tracebacks_requested_only_by_true_values(monkeypatch, value, on):
    monkeypatch.setenv("PCJAX_TRACEBACK", value)
    assert log_lib.tracebacks_requested() is on


# ----------------------------------------------------------------------------- signals


@pytest.fixture
def handlers(monkeypatch):
    """Restores the signal handlers and the recorded signals of `preemption.install`."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(preemption, "_received", [])
    monkeypatch.setattr(preemption, "_installed", False)
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize("signum, code, reason", [
    (signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated by SIGTERM")])
def test_install_raises_a_recorded_signal_and_later_ones(handlers, signum, code, reason):
    with pytest.raises(preemption.Interrupted) as error:
        preemption.install([signum])
    assert (error.value.exit_code, error.value.reason) == (code, reason)
    assert isinstance(error.value, KeyboardInterrupt)
    with pytest.raises(preemption.Interrupted):
        preemption.check()  # It stays recorded.
    preemption._received.clear()
    preemption.install()
    with pytest.raises(preemption.Interrupted) as error:
        os.kill(os.getpid(), signum)
    assert error.value.exit_code == code
    assert preemption.received() == signum


def test_a_lost_interrupt_stops_the_next_phase_at_its_first_step(handlers):
    """A signal recorded by `install`'s handler whose exception was lost: the next watch is
    preempted at once; one arriving after a phase's last step is left for `check`."""
    preemption.install()
    preemption._received.append(signal.SIGINT)
    with preemption.PreemptionWatch() as watch:
        assert watch.reached(1)
    preemption._received.clear()
    with preemption.PreemptionWatch() as watch:
        assert not watch.reached(1)
        os.kill(os.getpid(), signal.SIGTERM)  # After the last step's check.
    with pytest.raises(preemption.Interrupted, match="terminated by SIGTERM"):
        preemption.check()


class _CoordinationClient:
    """Answers the coordination service's key lookup with a fixed value or failure."""

    def __init__(self, answer):
        self.answer = answer

    def key_value_try_get(self, key):
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def test_the_pod_notice_is_absent_only_when_the_service_says_not_found(monkeypatch):
    """NOT_FOUND means no process received a notice; any other failure of the coordination
    service is raised, not read as "no notice" (a pod would train on after a lost signal)."""
    from jax._src import distributed

    def notice(answer):
        monkeypatch.setattr(distributed.global_state, "client", _CoordinationClient(answer))
        return preemption._notice_received()

    assert notice("notice") is True  # The key exists, whatever its value.
    assert notice(jax.errors.JaxRuntimeError("NOT_FOUND: Config key x not found.")) is False
    with pytest.raises(jax.errors.JaxRuntimeError, match="UNAVAILABLE"):
        notice(jax.errors.JaxRuntimeError("UNAVAILABLE: failed to connect"))
    monkeypatch.setattr(distributed.global_state, "client", None)  # Not a distributed run.
    assert preemption._notice_received() is False


def test_describe_keeps_the_first_line():
    error = ValueError(textwrap.dedent("""\
        Encountered error reading. See full TensorStore details: <bound method ...>
        second line"""))
    assert checkpoint.describe(error) == "ValueError: Encountered error reading."
