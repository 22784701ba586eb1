"""What training prints: nothing when asked for no progress; off a terminal (a log file, a
notebook run headless) one line per epoch and no bar."""

from service.ml.progress import frontend
from service.ml.train import TrainConfig, train


def _tiny(idx_data_dir, tmp_path):
    return TrainConfig(
        dataset="mnist", data_dir=str(idx_data_dir), epochs=2, limit=64, device="cpu",
        run_dir=str(tmp_path / "run"),
    )  # fmt: skip


def test_training_without_progress_prints_nothing(idx_data_dir, tmp_path, capfd):
    train(_tiny(idx_data_dir, tmp_path), progress=False)
    assert capfd.readouterr() == ("", "")


def test_training_into_a_log_prints_one_line_per_epoch_and_no_bar(idx_data_dir, tmp_path, capsys):
    assert frontend() == "terminal"
    train(_tiny(idx_data_dir, tmp_path))
    out, err = capsys.readouterr()
    assert [line.split(":")[0] for line in out.splitlines()] == ["epoch  1/2", "epoch  2/2"]
    assert err == ""
