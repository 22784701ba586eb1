"""What the three baselines share: the command line, and the model they serve: the checkpoint in
plain eager PyTorch on one thread, as the tutorials do (``--runtime eager``), or the int8 ONNX
file our release exported (``--runtime onnx-int8 --onnx FILE``: the "same runtime" rows).
Each baseline is a complete server on its own."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
from onnx_model import MEAN, STD, OnnxDigits

Predict = Callable[[np.ndarray], np.ndarray]  # digits [N,784] 0..255 -> probabilities [N,C]


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runtime", choices=("eager", "onnx-int8"), default="eager",
                        help="eager PyTorch (as the tutorials do) or the int8 ONNX file ours "
                        "serves")
    parser.add_argument("--checkpoint", help="a lab2prod model.safetensors (--runtime eager)")
    parser.add_argument("--onnx", help="the int8 ONNX file our release exported "
                        "(--runtime onnx-int8)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    needed = "checkpoint" if args.runtime == "eager" else "onnx"
    if getattr(args, needed) is None:
        parser.error(f"--runtime {args.runtime} needs --{needed}")
    return args


def load_predict(args: argparse.Namespace) -> Predict:
    if args.runtime == "onnx-int8":  # torch is never imported: its memory is not counted
        return OnnxDigits(args.onnx).probabilities
    import torch

    from service.ml.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    model = load_checkpoint(args.checkpoint, device="cpu").model.eval()

    def eager(pixels: np.ndarray) -> np.ndarray:
        tensor = torch.as_tensor(np.asarray(pixels, dtype=np.float32)).view(-1, 1, 28, 28) / 255.0
        with torch.no_grad():
            return model((tensor - MEAN) / STD).exp().numpy()

    return eager
