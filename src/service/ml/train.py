"""The training loop behind notebooks/train.ipynb and ``lab2prod train``.

The recipe: Adadelta (lr 1.0), StepLR(step 1, gamma 0.7), batch 64, NLL loss on log-softmax.
Seeds are set for torch, numpy and python, and shuffling and augmentation draw from their own
seeded generator, so the same seed and parameters on the CPU give identical metrics.

Speed: the whole dataset is normalised once into one tensor (on the GPU when it fits) and
shuffled batches are cut from it by index; there is no DataLoader and no per-item Python.
On CUDA the forward pass runs under autocast (bf16, or fp16 with a GradScaler).
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from service.ml.augment import RandomAffine
from service.ml.checkpoint import save_checkpoint
from service.ml.data import DigitDataset, dataset_names, load_dataset
from service.ml.device import resolve_device
from service.ml.evaluate import log_probabilities
from service.ml.model import build_model
from service.ml.preprocess import Normalization, normalize
from service.ml.progress import progress_bar
from service.ml.records import CHECKPOINT_FILE, TRAIN_RECORD, write_json
from service.provenance import git_state, library_versions

ARCHITECTURE = "mnist-cnn"
EVAL_BATCH_SIZE = 1000


@dataclass
class TrainConfig:
    """The parameters of notebooks/train.ipynb (same names, same defaults)."""

    dataset: str = "mnist-5k"  # mnist-5k | mnist | fashion-mnist
    data_dir: str = ""  # "" = the dataset's default location
    download: bool = False  # mnist/fashion-mnist via torchvision when online
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1.0
    gamma: float = 0.7
    seed: int = 1
    device: str = "auto"
    limit: int = 0  # 0 = all training examples; N = a seeded subset (tests)
    augment: bool = False  # small random rotations, shifts and scaling on the fly
    run_dir: str = "runs/notebook"

    def __post_init__(self) -> None:
        if self.dataset not in dataset_names():
            raise ValueError(
                f"unknown dataset {self.dataset!r}; choose one of {', '.join(dataset_names())}"
            )
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        # lr 0 is allowed on purpose: it trains nothing, which is how a scheduled run proves the
        # release gate refuses a poor model.
        if self.lr < 0:
            raise ValueError(f"lr must be >= 0 (the recipe uses 1.0), got {self.lr}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1] (the recipe uses 0.7), got {self.gamma}")
        if self.limit < 0:
            raise ValueError(f"limit must be >= 0 (0 = all training examples), got {self.limit}")


@dataclass
class TrainResult:
    config: TrainConfig
    model: torch.nn.Module
    dataset: DigitDataset
    device: torch.device
    epochs: list[dict[str, float]]
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def test_accuracy(self) -> float:
        return float(self.epochs[-1]["test_accuracy"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def configure_threads(device: torch.device) -> int:
    """Intra-op threads for CPU training: torch's default, capped by the CPUs we may run on
    (in a container torch can see more cores than the cgroup allows, and oversubscribes)."""
    if device.type == "cpu":
        try:
            allowed = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            allowed = os.cpu_count() or 1
        threads = max(1, min(torch.get_num_threads(), allowed))
        torch.set_num_threads(threads)
    return torch.get_num_threads()


class _Precision:
    """Mixed precision on CUDA (bf16 when supported, else fp16 with loss scaling); fp32 on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.dtype: torch.dtype | None = None
        self.scaler: torch.amp.GradScaler | None = None
        if device.type == "cuda":
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            if self.dtype is torch.float16:
                self.scaler = torch.amp.GradScaler("cuda")

    @property
    def name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "fp32")  # type: ignore[arg-type]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()


def _data_device(device: torch.device, dataset: DigitDataset) -> torch.device:
    """Keep the normalised data on the GPU when it fits comfortably, else on the CPU."""
    if device.type != "cuda":
        return device
    needed = 4 * (dataset.train_images.size + dataset.test_images.size)
    free, _total = torch.cuda.mem_get_info(device)
    return device if needed < free // 4 else torch.device("cpu")


def _batches(order: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _test_metrics(
    model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor, device: torch.device
) -> tuple[float, float]:
    log_probs = log_probabilities(model, inputs, device=device, batch_size=EVAL_BATCH_SIZE)
    labels = labels.cpu()
    loss = F.nll_loss(log_probs.double(), labels).item()
    accuracy = (log_probs.argmax(dim=1) == labels).double().mean().item()
    return loss, accuracy


def load_training_data(config: TrainConfig) -> DigitDataset:
    """The dataset ``config`` names, with its ``limit`` applied (0 = every training example)."""
    return load_dataset(
        config.dataset,
        config.data_dir or None,
        limit=config.limit or None,
        download=config.download,
    )


def train(
    config: TrainConfig, progress: bool = True, *, dataset: DigitDataset | None = None
) -> TrainResult:
    """Train the CNN with ``config``; ``dataset`` skips loading when the caller has it already."""
    seed_everything(config.seed)
    device = resolve_device(config.device)
    threads = configure_threads(device)
    if dataset is None:
        dataset = load_training_data(config)
    normalization = Normalization()
    data_device = _data_device(device, dataset)
    train_x = normalize(dataset.train_images, normalization).to(data_device)
    train_y = torch.as_tensor(dataset.train_labels, dtype=torch.int64).to(data_device)
    test_x = normalize(dataset.test_images, normalization).to(data_device)
    test_y = torch.as_tensor(dataset.test_labels, dtype=torch.int64).to(data_device)

    # channels_last: oneDNN (CPU) and cuDNN (tensor cores) run these convolutions faster in it.
    model = build_model(ARCHITECTURE, num_classes=len(dataset.class_names))
    model = model.to(device=device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=config.gamma)
    precision = _Precision(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its kernels
    augmenter = RandomAffine(normalization=normalization) if config.augment else None
    # Shuffling and augmentation draw from their own generator, dropout from torch's global one.
    generator = torch.Generator().manual_seed(config.seed)

    count = len(train_y)
    steps = (count + config.batch_size - 1) // config.batch_size
    bar = progress_bar(steps * config.epochs, enabled=progress, desc="train", unit="batch")
    epochs: list[dict[str, float]] = []
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(count, generator=generator).to(data_device)
        loss_sum = torch.zeros((), device=device)
        epoch_start = time.perf_counter()
        for step, index in enumerate(_batches(order, config.batch_size), start=1):
            inputs = train_x.index_select(0, index).to(device, non_blocking=True)
            targets = train_y.index_select(0, index).to(device, non_blocking=True)
            if augmenter is not None:
                inputs = augmenter(inputs, generator)
            optimizer.zero_grad(set_to_none=True)
            with precision.autocast():
                loss = F.nll_loss(model(inputs), targets)
            precision.step(loss, optimizer)
            loss_sum += loss.detach().float() * len(index)
            bar.update(1)
            if not bar.disable and (step % 20 == 0 or step == steps):
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}", refresh=False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - epoch_start
        scheduler.step()
        test_loss, test_accuracy = _test_metrics(model, test_x, test_y, device)
        epochs.append(
            {
                "epoch": epoch,
                "train_loss": loss_sum.item() / count,
                "test_loss": test_loss,
                "test_accuracy": test_accuracy,
                "images_per_second": count / seconds,
                "seconds": seconds,
            }
        )
        if progress:
            bar.write(
                f"epoch {epoch:>2}/{config.epochs}: train loss {epochs[-1]['train_loss']:.4f}  "
                f"test loss {test_loss:.4f}  test accuracy {test_accuracy:.2%}  "
                f"{count / seconds:,.0f} images/s"
            )
    bar.close()
    model = model.to(memory_format=torch.contiguous_format).eval()
    train_seconds = sum(e["seconds"] for e in epochs)
    record = {
        "params": asdict(config),
        "seed": config.seed,
        "device": str(device),
        "dataset": dataset.describe(),
        "git": git_state(Path(__file__).parent),
        "metrics": {
            "epochs": epochs,
            "test_accuracy": epochs[-1]["test_accuracy"],
            "images_per_second": count * config.epochs / train_seconds,
            "wall_seconds": time.perf_counter() - started,
        },
        "checkpoint": CHECKPOINT_FILE,
        "library_versions": library_versions(),
        "runtime": {
            "threads": threads,
            "precision": precision.name,
            "data_device": str(data_device),
        },
    }
    return TrainResult(config, model, dataset, device, epochs, record)


def write_run(result: TrainResult, run_dir: str | Path | None = None) -> Path:
    """Write ``<run_dir>/model.safetensors`` and ``<run_dir>/train.json``; return the run dir."""
    run_dir = Path(run_dir or result.config.run_dir)
    record = result.record
    save_checkpoint(
        run_dir / CHECKPOINT_FILE,
        result.model,
        architecture=ARCHITECTURE,
        normalization=Normalization(),
        class_names=result.dataset.class_names,
        extra={
            "dataset": record["dataset"],
            "params": record["params"],
            "seed": record["seed"],
            "metrics": record["metrics"],
            "git": record["git"],
            "device": record["device"],
        },
    )
    write_json(run_dir / TRAIN_RECORD, record)
    return run_dir
