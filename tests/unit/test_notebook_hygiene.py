"""Committed notebooks carry no outputs or execution counts, and each has a `parameters` cell;
the two pipeline notebooks keep the parameter names and defaults of the notebook contract."""

import ast
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))

CONTRACT = {
    "train.ipynb": {
        "dataset": "mnist-5k", "data_dir": "", "download": False, "epochs": 10,
        "batch_size": 64, "lr": 1.0, "gamma": 0.7, "seed": 1, "device": "auto", "limit": 0,
        "augment": False, "run_dir": "runs/notebook",
    },
    "evaluate.ipynb": {
        "run_dir": "runs/notebook", "checkpoint": "", "champion_checkpoint": "", "dataset": "",
        "data_dir": "", "test_limit": 0, "device": "auto", "batch_size": 256, "sample_size": 32,
    },
}  # fmt: skip


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
