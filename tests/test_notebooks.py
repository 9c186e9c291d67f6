"""The notebooks run from a fresh kernel without error and show what their text claims.

Each notebook is copied to a temporary directory and executed there by nbclient, once per module.
The kernel is ipykernel's built-in "python3" spec (no installed kernelspec is looked up), which
starts the interpreter running these tests: CI needs only ipykernel, nbclient, nbformat,
matplotlib and scikit-learn in the test environment.
"""

import os
import pathlib
import re
import shutil

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
NAMES = ("soft_ranking", "perception_coherence", "own_model")


def _execute(name: str, workdir: pathlib.Path) -> nbformat.NotebookNode:
    path = workdir / f"{name}.ipynb"
    shutil.copy(NOTEBOOKS / path.name, path)
    notebook = nbformat.read(path, as_version=4)
    # kernel_dirs=[]: "python3" resolves to ipykernel's native spec, i.e. this interpreter.
    kernel_manager = AsyncKernelManager(
        kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[])
    )
    # The kernel gets the environment a user's would: not the 8 fake devices of conftest.py.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    # The kernel imports this checkout's pcjax, as these tests do, not whichever is installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))
    client = NotebookClient(
        notebook, km=kernel_manager, timeout=300, resources={"metadata": {"path": str(workdir)}}
    )
    client.execute(env=env)
    return notebook


class _Executions(dict):
    """name -> the notebook after a fresh execution, run when first asked for, so `-k` runs
    only the notebooks its tests read (CellExecutionError fails each test that reads it)."""

    def __init__(self, tmp_path_factory):
        super().__init__()
        self._tmp_path_factory = tmp_path_factory

    def __missing__(self, name: str) -> nbformat.NotebookNode:
        self[name] = _execute(name, self._tmp_path_factory.mktemp(name))
        return self[name]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    return _Executions(tmp_path_factory)


def _printed(notebook: nbformat.NotebookNode) -> str:
    return "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream"
    )


def _figures(notebook: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


@pytest.mark.parametrize("name", NAMES)
def test_saved_notebook_holds_outputs_of_a_complete_run(name):
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    assert _figures(notebook) >= 2
    assert not any(o.output_type == "error" for cell in code for o in cell.outputs)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_draws_its_figures(executed, name):
    assert _figures(executed[name]) >= 2


def test_soft_ranks_sum_to_the_permutahedron_total(executed):
    sums = re.findall(
        r"soft-rank row sums in \[([\d.]+), ([\d.]+)\], n\(n\+1\)/2 = ([\d.]+)",
        _printed(executed["soft_ranking"]),
    )
    assert len(sums) == 2
    for low, high, total in sums:
        assert float(low) == pytest.approx(float(total), abs=1e-3)
        assert float(high) == pytest.approx(float(total), abs=1e-3)


def test_soft_rank_reaches_the_hard_ranks(executed):
    errors = dict(re.findall(
        r"hard-limit error \((l2|kl)\) at ε = smallest gap: (\S+)",
        _printed(executed["soft_ranking"]),
    ))
    assert float(errors["l2"]) <= 1e-6
    # float32 resolution of ranks up to 64.
    assert float(errors["kl"]) <= 1e-4


def test_soft_rank_of_ties_tends_to_the_averaged_ranks(executed):
    printed = _printed(executed["soft_ranking"])
    hard = re.search(r"^rank\s+\[(.*)\]$", printed, re.M).group(1)
    for regularization in ("l2", "kl"):
        soft = re.search(rf"^soft_rank {regularization} ε=0.001\s+\[(.*)\]$", printed, re.M)
        assert [float(v) for v in soft.group(1).split()] == [float(v) for v in hard.split()]


def test_perception_coherence_student_is_the_most_coherent(executed):
    scores = {
        name: float(score)
        for name, score in re.findall(
            r"^(\w+)\s+pc_score = ([-\d.]+)$", _printed(executed["perception_coherence"]), re.M
        )
    }
    assert set(scores) == {"perception_coherence", "rkd", "fitnet"}
    assert scores["perception_coherence"] >= 0.8
    assert scores["perception_coherence"] > max(scores["rkd"], scores["fitnet"])


def test_own_model_student_learns_the_teachers_ranking(executed):
    printed = _printed(executed["own_model"])
    accuracy = float(re.search(r"^teacher: test accuracy ([\d.]+)", printed, re.M).group(1))
    assert accuracy >= 0.9
    scores = [float(s) for s in re.findall(r"^step\s+\d+  test pc_score ([-\d.]+)$", printed, re.M)]
    assert len(scores) == 7
    # Untrained, the student orders the test set far from the teacher (0.44 when saved);
    # distilled, close to it (0.956 when saved).
    assert scores[0] < 0.6
    assert scores[-1] >= 0.9


def test_own_model_distilled_features_beat_the_untrained_ones(executed):
    probes = {
        name: (float(knn), float(linear))
        for name, knn, linear in re.findall(
            r"^(untrained student|distilled student|teacher) \(\d+\)\s+kNN ([\d.]+)  "
            r"linear probe ([\d.]+)$",
            _printed(executed["own_model"]), re.M)
    }
    assert set(probes) == {"untrained student", "distilled student", "teacher"}
    for i in range(2):  # kNN, linear probe: margins of 0.06 and 0.13 when saved
        assert probes["distilled student"][i] >= probes["untrained student"][i] + 0.03
        assert probes["teacher"][i] >= 0.9
