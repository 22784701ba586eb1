"""The checkpoint every benchmark serves: one given, the registry's production model, or a
briefly trained one (3 epochs on mnist-5k, the same recipe as train.ipynb)."""

from __future__ import annotations

import logging
from pathlib import Path

from service.ml.checkpoint import read_metadata
from service.registry import RegistryError, open_registry

log = logging.getLogger(__name__)

BRIEF_EPOCHS = 3


def bench_checkpoint(
    checkpoint: str | Path | None, registry_url: str, model_name: str, alias: str, work_dir: Path
) -> tuple[Path, str]:
    """(checkpoint path, where it came from)."""
    if checkpoint:
        path = Path(checkpoint)
        read_metadata(path)  # refuses a missing or foreign file with a clear message
        return path, f"given: {path}"
    try:
        path = open_registry(registry_url, model_name).checkpoint_path(alias)
        return path, f"registry {registry_url} {model_name}@{alias}"
    except RegistryError:
        pass
    cached = work_dir / "brief" / "model.safetensors"
    if cached.exists():
        return cached, f"trained briefly ({BRIEF_EPOCHS} epochs on mnist-5k), cached at {cached}"
    from service.ml.train import TrainConfig, train, write_run

    log.info("no checkpoint given and none in the registry: training %d epochs on mnist-5k",
             BRIEF_EPOCHS)
    result = train(TrainConfig(dataset="mnist-5k", epochs=BRIEF_EPOCHS, device="cpu",
                               run_dir=str(cached.parent)), progress=False)
    write_run(result, cached.parent)
    return cached, f"trained briefly ({BRIEF_EPOCHS} epochs on mnist-5k)"
