"""``lab2prod train`` / ``lab2prod evaluate``: the notebook parameters as flags, clear errors."""

import json

from service.cli import main


def test_train_command_writes_checkpoint_and_record(idx_data_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(
        [
            "train",
            "--dataset",
            "mnist",
            "--data-dir",
            str(idx_data_dir),
            "--epochs",
            "1",
            "--limit",
            "64",
            "--batch-size",
            "32",
            "--seed",
            "3",
            "--device",
            "cpu",
            "--augment",
            "--run-dir",
            str(run_dir),
            "--quiet",
        ]
    )
    assert code == 0
    record = json.loads((run_dir / "train.json").read_text())
    assert record["params"]["batch_size"] == 32 and record["params"]["augment"] is True
    assert record["seed"] == 3
    assert (run_dir / "model.safetensors").is_file()
    assert "test accuracy" in capsys.readouterr().out


def test_train_command_missing_data_dir_exits_2_naming_path_and_files(tmp_path, capsys):
    missing = tmp_path / "no-such-dir"
    code = main(["train", "--dataset", "mnist", "--data-dir", str(missing), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "train-images-idx3-ubyte" in err


def test_train_command_bad_parameter_exits_2(capsys):
    assert main(["train", "--epochs", "0", "--quiet"]) == 2
    assert "epochs" in capsys.readouterr().err


def test_evaluate_command_writes_the_evaluation_record(tiny_checkpoint, tmp_path, capsys):
    code = main(
        [
            "evaluate",
            "--checkpoint",
            str(tiny_checkpoint),
            "--run-dir",
            str(tmp_path),
            "--test-limit",
            "30",
            "--sample-size",
            "4",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    record = json.loads((tmp_path / "evaluation.json").read_text())
    assert record["sample"]["size"] == 4 and record["champion"] is None
    assert "candidate: accuracy" in capsys.readouterr().out


def test_evaluate_command_bad_checkpoint_exits_2_naming_it(tmp_path, capsys):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    assert main(["evaluate", "--checkpoint", str(bad), "--run-dir", str(tmp_path)]) == 2
    assert str(bad) in capsys.readouterr().err


def test_evaluate_command_missing_run_dir_exits_2(tmp_path, capsys):
    assert main(["evaluate", "--run-dir", str(tmp_path / "never-trained")]) == 2
    assert "never-trained" in capsys.readouterr().err
