"""The attention implementations a benchmark compares, and the workloads that run them.

Every backend takes ``q, k, v`` of shape ``(B, H, N, d)`` and returns ``(B, H, N, d)``:

* ``"direct"`` / ``"efficient"``: :func:`taylorshift.taylor_shift_attention` with that backend;
* ``"sdpa"``: :func:`torch.nn.functional.scaled_dot_product_attention` (softmax, PyTorch's fused
  kernel: the speed anchor, O(N) memory);
* ``"naive_softmax"``: explicit ``softmax(QKᵀ/√d) V`` (the paper's baseline, two N×N matrices).

A *workload* (:func:`make_workload`) builds the inputs once and returns a zero-argument callable for one
forward pass (under ``torch.inference_mode``) or one forward + backward pass (``"train"``). The timing
pass and the memory pass (in its own process) run the very same workload.

Each backend also carries a cost model (FLOPs and extra bytes per head) that the sweep uses only to
predict whether the next point fits the time and memory budgets.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from taylorshift.analysis import flops_direct, flops_efficient
from taylorshift.ops import taylor_shift_attention
from taylorshift.ops.efficient import DEFAULT_FORM
from taylorshift.ops.features import feature_dim

MODES: tuple[str, ...] = ("forward", "train")
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

# Backward costs about twice the forward (two matmuls per forward matmul).
TRAIN_FLOP_FACTOR = 3.0


@dataclass(frozen=True)
class BenchBackend:
    """One attention implementation under test.

    Attributes:
        name: short name used in tables, files and ``--backends``.
        fn: ``(q, k, v) -> out``, all ``(B, H, N, d)``.
        flops: ``(N, d) -> forward FLOPs of one head`` (model; multiply and add count as two).
        extra_entries: ``(N, d, mode) -> tensor entries of one head held at peak beyond the inputs``
            (multiply by the element size for bytes); a rough model, used only for budget predictions.
        description: one line for ``--help``.
    """

    name: str
    fn: Callable[[Tensor, Tensor, Tensor], Tensor]
    flops: Callable[[int, int], float]
    extra_entries: Callable[[int, int, str], float]
    description: str


def naive_softmax_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Explicit softmax attention ``softmax(QKᵀ/√d) V`` (materialises the N×N logits and weights).

    Args:
        q, k, v: ``(B, H, N, d)``.

    Returns:
        ``(B, H, N, d)``.
    """
    logits = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-1, -2)  # (B, H, N, N)
    return torch.softmax(logits, dim=-1) @ v


def _direct(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return taylor_shift_attention(q, k, v, backend="direct")


def _efficient(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return taylor_shift_attention(q, k, v, backend="efficient")


def _sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def _quadratic_flops(n: int, d: int) -> float:
    # Softmax attention has the same two matmuls as direct TaylorShift; the elementwise work differs
    # by a few FLOPs per logit, which the model ignores.
    return float(flops_direct(n, n, d))


def _efficient_flops(n: int, d: int) -> float:
    return float(flops_efficient(n, n, d, form=DEFAULT_FORM))


def _paper_efficient_flops(n: int, d: int) -> float:
    return float(flops_efficient(n, n, d, form="full"))


def _quadratic_entries(n: int, d: int, mode: str) -> float:
    # forward: logits and weights (2 N×N); train: saved logits/weights/intermediates and their grads.
    return (2.0 if mode == "forward" else 5.0) * n * n + 2.0 * n * d


def _direct_entries(n: int, d: int, mode: str) -> float:
    # query blocks of about 2²¹ logits each (see taylorshift.ops.direct.default_block_size)
    block = min(n * n, 1 << 21)
    return (2.0 if mode == "forward" else 3.0) * block + (2.0 if mode == "forward" else 8.0) * n * (d + 1)


def _efficient_entries(n: int, d: int, mode: str) -> float:
    # streaming: chunk buffers of about 2²¹ features, the state, and O(N·d) saved tensors and gradients
    f = feature_dim(d, DEFAULT_FORM)
    return (1.0 if mode == "forward" else 2.0) * min(n * f, 1 << 21) + 2 * f * (d + 1) + (
        3.0 if mode == "forward" else 10.0) * n * (d + 1)


def _paper_efficient_entries(n: int, d: int, mode: str) -> float:
    f = d * d + d + 1
    return (3.0 if mode == "forward" else 6.0) * n * f + f * (d + 1) + 2.0 * n * d


def _linear_entries(n: int, d: int, mode: str) -> float:
    return (2.0 if mode == "forward" else 6.0) * n * (d + 1)


def paper_efficient_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The paper's efficient form as written: materialised full ``N × d²`` features ``Q⊠Q`` and ``K⊠K``,
    the ones-column trick, plain autograd (the baseline the streaming path is measured against).

    Args:
        q, k, v: ``(B, H, N, d)``; logits ``q·k/√d`` as in the other backends.

    Returns:
        ``(B, H, N, d)``.
    """
    q = q * (1.0 / math.sqrt(q.shape[-1]))
    qq = (q.unsqueeze(-1) * q.unsqueeze(-2)).flatten(-2)  # (B, H, N, d²)
    kk = (k.unsqueeze(-1) * k.unsqueeze(-2)).flatten(-2)
    vp = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1) / v.shape[-2]  # (B, H, N, d+1)
    y = 0.5 * (qq @ (kk.transpose(-1, -2) @ vp)) + q @ (k.transpose(-1, -2) @ vp) + vp.sum(-2, keepdim=True)
    return y[..., :-1] / y[..., -1:]


BACKENDS: dict[str, BenchBackend] = {
    b.name: b
    for b in (
        BenchBackend("direct", _direct, _quadratic_flops, _direct_entries,
                     "TaylorShift, backend='direct' (O(N²d) time, query blocks, recomputing backward)"),
        BenchBackend("efficient", _efficient, _efficient_flops, _efficient_entries,
                     "TaylorShift, backend='efficient' (O(Nd³) time, streaming symmetric features)"),
        BenchBackend("paper_efficient", paper_efficient_attention, _paper_efficient_flops,
                     _paper_efficient_entries,
                     "the paper's efficient form: materialised full N×d² features, autograd (baseline)"),
        BenchBackend("sdpa", _sdpa, _quadratic_flops, _linear_entries,
                     "torch scaled_dot_product_attention, softmax (fused kernel; speed anchor)"),
        BenchBackend("naive_softmax", naive_softmax_attention, _quadratic_flops, _quadratic_entries,
                     "explicit softmax(QKᵀ/√d)V (the paper's baseline)"),
    )
}


def get_backend(backend: str | BenchBackend) -> BenchBackend:
    """Look a backend up by name (a :class:`BenchBackend` passes through)."""
    if isinstance(backend, BenchBackend):
        return backend
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {tuple(BACKENDS)}")
    return BACKENDS[backend]


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def check_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def make_workload(
    backend: str | BenchBackend,
    mode: str,
    batch: int,
    heads: int,
    n: int,
    d: int,
    dtype: str = "float32",
    device: str = "cpu",
    seed: int = 0,
) -> Callable[[], None]:
    """Build random inputs and return a callable that runs one step of ``backend`` on them.

    Args:
        backend: a name from :data:`BACKENDS` or a :class:`BenchBackend`.
        mode: ``"forward"`` (one call under ``torch.inference_mode``) or ``"train"`` (forward, then the
            gradients of q, k, v for a fixed random upstream gradient).
        batch, heads, n, d: the input shape ``(batch, heads, n, d)`` of q, k and v.
        dtype: ``"float32"``, ``"float64"``, ``"float16"`` or ``"bfloat16"``.
        device: a torch device string.
        seed: seed of the inputs.

    Returns:
        A zero-argument callable; each call runs the step and frees its outputs.
    """
    b = get_backend(backend)
    mode = check_mode(mode)
    dt = check_dtype(dtype)
    g = torch.Generator(device="cpu").manual_seed(seed)
    shape = (batch, heads, n, d)
    q, k, v = (torch.randn(shape, generator=g).to(device=device, dtype=dt) for _ in range(3))
    fn = b.fn

    if mode == "forward":
        def step() -> None:
            with torch.inference_mode():
                fn(q, k, v)
        return step

    for t in (q, k, v):
        t.requires_grad_(True)
    upstream = torch.randn(shape, generator=g).to(device=device, dtype=dt)

    def train_step() -> None:
        out = fn(q, k, v)
        torch.autograd.grad(out, (q, k, v), upstream)

    return train_step
