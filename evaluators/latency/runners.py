"""Turn a network or a single block into something that runs once per call on the target runtime.

Runs inside the measurement worker process, after the thread count is fixed.
ONNX export uses the TorchScript-based exporter (``dynamo=False``): 0.15 s
against 3 s for the dynamo exporter (NOTES.md), which matters when a lookup
table exports thousands of blocks.
"""

from __future__ import annotations

import io
import time
import warnings
from dataclasses import fields
from typing import Callable

import numpy as np
import torch
from torch import nn

from search_space import Architecture, build_model
from search_space.blocks import Block, HeadBlock, StemBlock, UnitBlock
from search_space.modules import build_head, build_stem, build_unit

from .target import ExportError, LatencyError, LatencyTarget

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ONNX_OPSET = 17


class _Head(nn.Module):
    def __init__(self, block: HeadBlock):
        super().__init__()
        self.conv5, self.fc = build_head(block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv5(x).mean((2, 3)))


def block_from_dict(d: dict) -> Block:
    cls = {"stem": StemBlock, "unit": UnitBlock, "head": HeadBlock}[d["kind"]]
    return cls(**{f.name: d[f.name] for f in fields(cls)})


def block_module(block: Block) -> tuple[nn.Module, tuple[int, int]]:
    """The module of one block (as the builder places it) and its input ``(channels, resolution)``."""
    if isinstance(block, StemBlock):
        pool = nn.MaxPool2d(3, 2, 1) if block.maxpool else nn.Identity()
        return nn.Sequential(build_stem(block), pool), (block.in_channels, block.resolution)
    if isinstance(block, UnitBlock):
        return build_unit(block), (block.in_channels, block.resolution)
    return _Head(block), (block.in_channels, block.resolution)


def arch_module(arch: Architecture) -> tuple[nn.Module, tuple[int, int]]:
    return build_model(arch), (arch.in_channels, arch.input_size)


def export_onnx(module: nn.Module, x: torch.Tensor, what: str = "architecture") -> bytes:
    """ONNX bytes of ``module`` at input ``x``; any exporter failure becomes a one-line ExportError."""
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x,), buf, input_names=["input"], output_names=["output"],
                              opset_version=ONNX_OPSET, dynamo=False)
    except Exception as exc:  # noqa: BLE001 - the exporter raises many unrelated types
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise ExportError(f"{what} cannot be exported to ONNX: {exc.__class__.__name__}: {first[:300]}") from None
    return buf.getvalue()


def make_timed_run(module: nn.Module, in_shape: tuple[int, int], target: LatencyTarget,
                   what: str = "architecture", clock: str = "wall") -> Callable[[], float]:
    """Prepare ``module`` for the target runtime; return a callable that runs it once and returns ms.

    ``clock="cpu"`` times with this thread's CPU time (1 thread, CPU only: the run executes on
    the calling thread), which leaves out time the process spent descheduled on a busy machine.
    """
    now = time.thread_time_ns if clock == "cpu" else time.perf_counter_ns
    channels, res = in_shape
    module = module.eval()
    x = torch.randn(target.batch, channels, res, res)
    if target.runtime == "onnxruntime":
        return _ort_runner(export_onnx(module, x, what), x.numpy(), target, now)
    dev = torch.device(target.device)
    dtype = TORCH_DTYPES[target.dtype]
    module, x = module.to(dev, dtype), x.to(dev, dtype)
    try:
        with torch.inference_mode():
            if target.runtime == "torchscript":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    module = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(module, x)))
            elif target.runtime == "compile":
                module = torch.compile(module)
            module(x)  # build / compile now, so an error surfaces here and not in the timing loop
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ExportError(f"{what} cannot be prepared for runtime {target.runtime}: "
                          f"{exc.__class__.__name__}: {first[:300]}") from None

    if target.device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def timed_cuda() -> float:
            with torch.inference_mode():
                start.record()
                module(x)
                end.record()
            end.synchronize()
            return start.elapsed_time(end)

        torch.cuda.synchronize()
        return timed_cuda

    def timed_cpu() -> float:
        with torch.inference_mode():
            t0 = now()
            module(x)
            return (now() - t0) / 1e6

    return timed_cpu


def _ort_runner(model: bytes, x: np.ndarray, target: LatencyTarget,
                now: Callable[[], int] = time.perf_counter_ns) -> Callable[[], float]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = target.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    providers = ["CUDAExecutionProvider"] if target.device == "cuda" else ["CPUExecutionProvider"]
    try:
        sess = ort.InferenceSession(model, so, providers=providers)
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [""])[0]
        raise LatencyError(f"onnxruntime cannot load the exported model: {first[:300]}") from None
    feeds = {sess.get_inputs()[0].name: x}

    # sess.run returns host arrays, so it is synchronous on CUDA too: the wall clock is the latency.
    def timed_ort() -> float:
        t0 = now()
        sess.run(None, feeds)
        return (now() - t0) / 1e6

    return timed_ort
