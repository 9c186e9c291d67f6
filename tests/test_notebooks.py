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

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ("soft_ranking", "perception_coherence")


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
    client = NotebookClient(
        notebook, km=kernel_manager, timeout=300, resources={"metadata": {"path": str(workdir)}}
    )
    client.execute(env=env)
    return notebook


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """name -> the notebook after a fresh execution (CellExecutionError fails every test)."""
    return {name: _execute(name, tmp_path_factory.mktemp(name)) for name in NAMES}


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
