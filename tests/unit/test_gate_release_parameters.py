"""Release parameters: typed like papermill, routed to the notebooks that declare them."""

from __future__ import annotations

import nbformat
import pytest
from papermill.cli import _resolve_type as papermill_resolve_type

from service.release.params import (
    ParameterError,
    collect_parameters,
    declared_parameters,
    resolve_type,
    route_parameters,
)

DECLARED = {
    "train": {"dataset": "mnist-5k", "epochs": 10, "lr": 1.0, "run_dir": "runs/notebook"},
    "evaluate": {"dataset": "", "test_limit": 0, "run_dir": "runs/notebook",
                 "champion_checkpoint": ""},
}


@pytest.mark.parametrize(
    "text", ["3", "-2", "0.5", "1e-3", "True", "False", "None", "mnist", "", "1.0.0", "nan"]
)
def test_values_are_typed_exactly_like_papermill_p(text):
    ours, theirs = resolve_type(text), papermill_resolve_type(text)
    assert type(ours) is type(theirs)
    assert ours == theirs or (ours != ours and theirs != theirs)  # nan


def test_p_wins_over_parameter_files_in_order(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("epochs: 3\nlr: 0.5\ndataset: fashion-mnist\n")
    second.write_text("epochs: 4\n")
    parameters = collect_parameters([("lr", "0.1")], [first, second])
    assert parameters == {"epochs": 4, "lr": 0.1, "dataset": "fashion-mnist"}


def test_a_parameter_file_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("- epochs\n- 3\n")
    with pytest.raises(ParameterError, match="mapping of NAME: VALUE"):
        collect_parameters(files=[path])


def test_each_parameter_goes_to_every_notebook_that_declares_it():
    routed = route_parameters({"dataset": "mnist", "epochs": 2, "test_limit": 100}, DECLARED)
    assert routed.per_notebook["train"] == {"dataset": "mnist", "epochs": 2}
    assert routed.per_notebook["evaluate"] == {"dataset": "mnist", "test_limit": 100}


def test_an_unknown_parameter_is_an_error_listing_the_known_names():
    with pytest.raises(ParameterError) as raised:
        route_parameters({"epoch": 2}, DECLARED)
    message = str(raised.value)
    assert "unknown parameter epoch" in message
    assert "dataset, epochs, lr, test_limit" in message
    assert "run_dir" not in message


def test_parameters_the_pipeline_sets_itself_are_refused():
    with pytest.raises(ParameterError, match="run_dir is set by `lab2prod release` itself"):
        route_parameters({"run_dir": "elsewhere"}, DECLARED)


def test_parameters_and_defaults_are_read_from_the_tagged_cell(tmp_path):
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(
        'epochs = 10\nlr = 1.0\ndataset = "mnist-5k"\n'
        "limit = 0                 # 0 = all training examples; N = a seeded subset (tests)\n"
        'data_dir = ""             # "" = the dataset\'s default location\n'
        "augment: bool = False\n"
    )
    cell.metadata["tags"] = ["parameters"]
    notebook.cells = [nbformat.v4.new_code_cell("x = 1"), cell,
                      nbformat.v4.new_code_cell("print(epochs)")]
    notebook.metadata["kernelspec"] = {"name": "python3", "language": "python",
                                       "display_name": "Python 3"}
    path = tmp_path / "train.ipynb"
    nbformat.write(notebook, path)
    assert declared_parameters(path) == {
        "epochs": 10, "lr": 1.0, "dataset": "mnist-5k", "limit": 0, "data_dir": "",
        "augment": False,
    }


def test_a_notebook_without_a_parameters_cell_is_refused(tmp_path):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("epochs = 10")]
    notebook.metadata["kernelspec"] = {"name": "python3", "language": "python",
                                       "display_name": "Python 3"}
    path = tmp_path / "train.ipynb"
    nbformat.write(notebook, path)
    with pytest.raises(ParameterError, match="no cell tagged 'parameters'"):
        declared_parameters(path)
