"""What the three baselines share: the command line, and the checkpoint loaded into plain eager
PyTorch on one thread, as the tutorials do. Each baseline is a complete server on its own."""

from __future__ import annotations

import argparse

import torch

from service.ml.checkpoint import load_checkpoint

MEAN, STD = 0.1307, 0.3081


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--checkpoint", required=True, help="a lab2prod model.safetensors")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    return parser.parse_args()


def load_model(path: str) -> torch.nn.Module:
    torch.set_num_threads(1)
    return load_checkpoint(path, device="cpu").model.eval()


def to_input(pixels: list[float]) -> torch.Tensor:
    """784 pixels in 0..255 -> the normalised [1,1,28,28] tensor the CNN expects."""
    tensor = torch.tensor(pixels, dtype=torch.float32).view(1, 1, 28, 28) / 255.0
    return (tensor - MEAN) / STD


def to_response(log_probs: torch.Tensor) -> dict:
    probabilities = log_probs.exp()[0]
    digit = int(probabilities.argmax())
    return {"digit": digit, "confidence": float(probabilities[digit]),
            "probabilities": probabilities.tolist()}
