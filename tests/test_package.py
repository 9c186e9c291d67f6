"""The public API: what `import pcjax` offers and what it costs."""

import subprocess
import sys

import pytest

import pcjax


def test_every_public_name_resolves():
    for name in pcjax.__all__:
        assert getattr(pcjax, name) is not None, name


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        pcjax.no_such_thing  # noqa: B018


def test_importing_the_losses_does_not_import_the_input_pipeline_or_flax():
    code = (
        "import sys, pcjax; "
        "print(sorted(m for m in ('tensorflow_datasets', 'grain', 'flax') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_lazy_names_are_the_subpackage_objects():
    from pcjax.data import DatasetSpec
    from pcjax.models import ModelOutput

    assert pcjax.DatasetSpec is DatasetSpec
    assert pcjax.ModelOutput is ModelOutput


def test_pc_score_has_one_implementation():
    assert pcjax.metrics.pc_score is pcjax.losses.pc_score


def test_a_config_file_does_not_import_the_trainer_or_the_input_pipeline():
    heavy = ("tensorflow_datasets", "grain", "orbax", "pcjax.training.trainer")
    code = (
        "import runpy, sys; "
        "runpy.run_path('configs/digits.py')['get_config']().to_json(); "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    root = __file__.rsplit("/tests/", 1)[0]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.strip() == "[]"
