"""Committed notebooks carry no outputs or execution counts, and each has a `parameters` cell;
the two pipeline notebooks keep the parameter names and defaults of the notebook contract."""

import ast
from dataclasses import asdict
from pathlib import Path

import nbformat
import pytest

from service.ml.evaluate import EvaluateConfig
from service.ml.train import TrainConfig

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))

# The notebooks' parameters are the package's configs, same names and defaults (defined once
# there; lab2prod train and the release parameters read them too).
CONTRACT = {"train.ipynb": asdict(TrainConfig()), "evaluate.ipynb": asdict(EvaluateConfig())}


def _parameters_cell(notebook):
    cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell must be tagged `parameters`"
    return cells[0]


def test_the_pipeline_notebooks_exist():
    assert {path.name for path in NOTEBOOKS} >= set(CONTRACT)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_has_no_outputs_and_no_execution_counts(path):
    notebook = nbformat.read(path, as_version=4)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {index} has outputs: clear them"
            assert cell.execution_count is None, f"{path.name} cell {index} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_a_parameters_cell_and_the_python3_kernel(path):
    notebook = nbformat.read(path, as_version=4)
    assert _parameters_cell(notebook).cell_type == "code"
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    nbformat.validate(notebook)


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_parameters_keep_the_contract_names_and_defaults(name):
    cell = _parameters_cell(nbformat.read(NOTEBOOKS[0].parent / name, as_version=4))
    found = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in ast.parse(cell.source).body
        if isinstance(node, ast.Assign)
    }
    assert found == CONTRACT[name]
    # papermill's parameter inspection drops lines with a second '=' (e.g. in a comment).
    assert all(line.count("=") <= 1 for line in cell.source.splitlines())
