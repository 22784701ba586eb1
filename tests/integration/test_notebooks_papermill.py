"""Both notebooks run headless under papermill on a real `python3` kernel with tiny
parameters, write the records of the notebook contract, and read cleanly once executed."""

import json
from pathlib import Path

import papermill as pm
import pytest
from jupyter_client.manager import start_new_kernel

from service.ml.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
METRIC_KEYS = {
    "checkpoint",
    "accuracy",
    "loss",
    "ece",
    "per_class",
    "confusion_matrix",
    "latency_ms",
}
EPOCHS = 2
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("papermill")
    run_dir = work / "run"
    pm.execute_notebook(
        str(NOTEBOOKS / "train.ipynb"),
        str(work / "train.out.ipynb"),
        parameters={"limit": 300, "epochs": EPOCHS, "augment": True, "run_dir": str(run_dir)},
        kernel_name="python3",
        cwd=str(work),
        progress_bar=False,
    )
    return work, run_dir


@pytest.fixture(scope="module")
def evaluated_run(trained_run):
    work, run_dir = trained_run
    pm.execute_notebook(
        str(NOTEBOOKS / "evaluate.ipynb"),
        str(work / "evaluate.out.ipynb"),
        parameters={
            "run_dir": str(run_dir),
            "champion_checkpoint": str(run_dir / "model.safetensors"),
            "test_limit": 200,
            "sample_size": 16,
        },
        kernel_name="python3",
        cwd=str(work),
        progress_bar=False,
    )
    return work, run_dir


def _outputs(path):
    notebook = json.loads(Path(path).read_text())
    return notebook, [
        (index, output)
        for index, cell in enumerate(notebook["cells"])
        for output in cell.get("outputs", [])
    ]


def _stream_lines(outputs, name="stdout"):
    return [
        line
        for _index, output in outputs
        if output["output_type"] == "stream" and output["name"] == name
        for line in "".join(output["text"]).splitlines()
    ]


def test_train_notebook_writes_checkpoint_and_run_record(trained_run):
    work, run_dir = trained_run
    record = json.loads((run_dir / "train.json").read_text())
    assert record["params"]["limit"] == 300 and record["params"]["augment"] is True
    assert record["params"]["epochs"] == EPOCHS and record["params"]["dataset"] == "mnist-5k"
    assert record["dataset"]["train_size"] == 300 and record["dataset"]["test_size"] == 1000
    assert record["dataset"]["split"]["method"] == "stratified"
    assert record["device"] == "cpu" and record["seed"] == 1
    assert record["checkpoint"] == "model.safetensors"
    epochs = record["metrics"]["epochs"]
    assert [epoch["epoch"] for epoch in epochs] == list(range(1, EPOCHS + 1))
    assert all(0.0 <= epoch["test_accuracy"] <= 1.0 for epoch in epochs)
    assert all(epoch["images_per_second"] > 0 for epoch in epochs)
    assert record["metrics"]["test_accuracy"] == epochs[-1]["test_accuracy"]
    assert load_checkpoint(run_dir / "model.safetensors").metadata["params"] == record["params"]
    executed = json.loads((work / "train.out.ipynb").read_text())
    images = [
        output
        for cell in executed["cells"]
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]
    assert len(images) >= 3  # samples, augmented samples, curves


def test_evaluate_notebook_writes_the_evaluation_record(evaluated_run):
    _work, run_dir = evaluated_run
    record = json.loads((run_dir / "evaluation.json").read_text())
    assert record["dataset"]["name"] == "mnist-5k" and record["dataset"]["test_size"] == 200
    assert set(record["candidate"]) == METRIC_KEYS
    assert record["candidate"]["checkpoint"] == str(run_dir / "model.safetensors")
    assert sum(row["support"] for row in record["candidate"]["per_class"]) == 200
    assert record["champion"]["accuracy"] == record["candidate"]["accuracy"]
    sample = record["sample"]
    assert sample["size"] == 16 and len(sample["labels"]) == 16
    assert len(sample["predictions"]) == 16 and len(sample["probabilities"][0]) == 10
    assert sample["predictions"] == [
        max(range(10), key=row.__getitem__) for row in sample["probabilities"]
    ]
    assert all(abs(sum(row) - 1.0) < 1e-4 for row in sample["probabilities"])


def test_executed_train_notebook_shows_one_line_per_epoch_and_no_progress_bar(trained_run):
    work, _run_dir = trained_run
    notebook, outputs = _outputs(work / "train.out.ipynb")
    [train_cell] = [
        i for i, cell in enumerate(notebook["cells"]) if "= train(" in "".join(cell["source"])
    ]
    # Headless, a bar is neither text on stderr nor a widget (whose HTML needs a CDN).
    assert [i for i, out in outputs if WIDGET_VIEW in out.get("data", {})] == []
    assert "widgets" not in notebook["metadata"]
    printed = _stream_lines([(i, out) for i, out in outputs if i == train_cell])
    assert [line.split(":")[0] for line in printed] == [
        f"epoch {epoch:>2}/{EPOCHS}" for epoch in range(1, EPOCHS + 1)
    ]


# train: a line per epoch and two summaries; evaluate: summaries, a 10-class table, latencies.
@pytest.mark.parametrize(("name", "most_lines"), [("train", EPOCHS + 2), ("evaluate", 20)])
def test_executed_notebook_has_no_stderr_no_warnings_and_little_text(
    evaluated_run, name, most_lines
):
    work, _run_dir = evaluated_run
    _notebook, outputs = _outputs(work / f"{name}.out.ipynb")
    assert _stream_lines(outputs, "stderr") == []
    texts = [
        "".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", ""))
        for _i, out in outputs
    ]
    assert not [text for text in texts if "Warning" in text]
    assert len(_stream_lines(outputs)) <= most_lines


def test_a_kernel_shows_the_widget_bar_to_jupyterlab_and_no_bar_to_papermill():
    """JupyterLab sends each cell with allow_stdin true, nbclient (papermill) with false."""
    code = "from service.ml.progress import progress_bar\nprogress_bar(3, desc='probe').close()"
    manager, client = start_new_kernel(kernel_name="python3")
    try:
        seen = {}
        for allow_stdin in (True, False):
            messages = []
            client.execute_interactive(
                code, allow_stdin=allow_stdin, timeout=60, output_hook=messages.append
            )
            seen[allow_stdin] = {
                kind
                for message in messages
                for kind in [message["msg_type"], *message["content"].get("data", {})]
            }
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    assert {"comm_open", WIDGET_VIEW} <= seen[True] and "stream" not in seen[True]
    assert seen[False].isdisjoint({"comm_open", "display_data", "stream"})
