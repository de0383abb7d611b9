"""Magnitudes of the efficient form's intermediates against N and d, with and without normalisation.

The efficient (linear) form adds up N outer products before anything is normalised, so its intermediates
grow with the sequence length unless the inputs are normalised (paper notes §2.3). This module measures,
for random ``q, k, v ~ N(0, 1)`` of shape ``(N, d)`` (one head), the mean L2 norm of

    ``qq``           rows of Q̃⊠Q̃ (Q̃ = the scaled queries)
    ``kk``           rows of K⊠K
    ``kkv``          (K⊠K)ᵀV'                        (Frobenius; d² × (dv+1), ones column included)
    ``state``        Φ_kᵀV' = [K⊠K | K | 1]ᵀV'        (Frobenius; the whole state of the efficient form)
    ``numerator``    rows of the first dv columns of φ_q(Q̃)·state
    ``denominator``  the last column of φ_q(Q̃)·state (absolute value)
    ``output``       rows of numerator / denominator

in three variants (:data:`VARIANTS`):

    ``normalised``   what our library computes for ``TaylorShiftAttention(normalize_qk=True)``: q and k
                     L2-normalised, temperature τ applied to q, V' = [V | 1] / N.
    ``paper``        the released code's scheme: additionally q, k · d^¼ and coefficients (a, √d·b, d·c),
                     so the attention function is the same (the factors cancel).
    ``raw``          the paper's benchmark module: q, k unnormalised, logits q·k/√d (``raw_scale="sdpa"``,
                     applied to q as our ops do) or q·k (``"none"``), V' = [V | 1] with no 1/N.

Every variant is built from :func:`taylorshift.ops.features.taylor_features` (full form) and
:func:`~taylorshift.ops.efficient.augment_values`, so the formulas measured are the ones the library runs.
Norms are measured in float64. The same pipeline is run a second time with every intermediate *stored* in
float16 (matmuls accumulate in float32 and round their result to float16, as autocast does on a GPU) to
detect overflow (a non-finite value; float16's largest finite value is 65504). Note that the library's own
ops never do this: they compute float16 inputs in float32.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from taylorshift.ops.common import divide_rows
from taylorshift.ops.efficient import augment_values
from taylorshift.ops.features import feature_weights, taylor_features
from taylorshift.ops.inputs import DEFAULT_COEFFICIENTS, check_coefficients

Variant = Literal["normalised", "paper", "raw"]
RawScale = Literal["sdpa", "none"]

VARIANTS: tuple[str, ...] = ("normalised", "paper", "raw")
RAW_SCALES: tuple[str, ...] = ("sdpa", "none")
QUANTITIES: tuple[str, ...] = ("qq", "kk", "kkv", "state", "numerator", "denominator", "output")
LABELS: dict[str, str] = {
    "qq": "Q⊠Q (row)",
    "kk": "K⊠K (row)",
    "kkv": "(K⊠K)ᵀV' (Frobenius)",
    "state": "state Φ_kᵀV' (Frobenius)",
    "numerator": "numerator (row)",
    "denominator": "denominator",
    "output": "output (row)",
}
FP16_MAX = float(torch.finfo(torch.float16).max)  # 65504

DEFAULT_NS: tuple[int, ...] = (16, 64, 256, 1024, 4096, 16384, 65536)
DEFAULT_DS: tuple[int, ...] = (8, 16, 32, 64)

# Work per (variant, sequence) is about N·F·(d+1) with F = d² + d + 1; fewer sequences are drawn where
# N·F exceeds _WORK_BUDGET (one sequence of length N already averages N rows).
_WORK_BUDGET = 2**25
# Rows per chunk so that a chunk of features holds about 2**22 elements (32 MiB in float64).
_CHUNK_ELEMENTS = 2**22


@dataclass(frozen=True)
class Prepared:
    """Inputs of the efficient form for one variant.

    Attributes:
        q: scaled queries ``(N, d)`` (float64); the logit is ``q·k``.
        k: keys ``(N, d)`` (float64).
        value_norm: divisor of ``V' = [V | 1]``.
        weights: query feature weights ``(w2, w1, w0)`` of the features (see :func:`_features`).
    """

    q: Tensor
    k: Tensor
    value_norm: float
    weights: tuple[float, float, float]


def prepare(
    variant: Variant,
    q: Tensor,
    k: Tensor,
    *,
    raw_scale: RawScale = "sdpa",
    temperature: float = 1.0,
    coefficients: tuple[float, float, float] = DEFAULT_COEFFICIENTS,
) -> Prepared:
    """Apply a variant's input scalings (see the module docstring).

    Args:
        variant: ``"normalised"``, ``"paper"`` or ``"raw"``.
        q: queries ``(*batch, N, d)``.
        k: keys ``(*batch, S, d)``.
        raw_scale: logit scale of the raw variant: ``"sdpa"`` (``1/√d``) or ``"none"`` (1).
        temperature: τ of the normalised variants (the logit is ``τ·cos(q, k)``).
        coefficients: ``(a, b, c)`` of ``p(x) = a x² + b x + c``.

    Returns:
        :class:`Prepared`; ``p(q̃·k)`` of the prepared tensors equals the variant's attention weight, up to
        a factor common to all keys (``d`` in the paper variant).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if raw_scale not in RAW_SCALES:
        raise ValueError(f"raw_scale must be one of {RAW_SCALES}, got {raw_scale!r}")
    a, b, c = check_coefficients(coefficients)
    d, S = q.shape[-1], k.shape[-2]
    if variant == "raw":
        s = 1.0 / math.sqrt(d) if raw_scale == "sdpa" else 1.0
        return Prepared(q * s, k, 1.0, (a, b, c))
    qn, kn = F.normalize(q, dim=-1) * temperature, F.normalize(k, dim=-1)
    if variant == "normalised":
        return Prepared(qn, kn, float(max(S, 1)), (a, b, c))
    r = d**0.25  # paper: q, k · d^¼, so q·k = √d·τ·cos; (a, √d·b, d·c) makes every term d·p(τ·cos)
    return Prepared(qn * r, kn * r, float(max(S, 1)), (a, math.sqrt(d) * b, d * c))


@dataclass
class SequenceResult:
    """Statistics of one sequence through the efficient form, in float64 and in float16 storage.

    Attributes:
        norm_sum: per quantity, the sum of float64 L2 norms over rows (one term for matrices).
        norm_count: per quantity, the number of terms in ``norm_sum``.
        amax: per quantity, the largest float64 |entry|.
        nonfinite16: per quantity, whether the float16-storage run produced inf or nan.
        err_sq: ``‖out16 − out64‖²_F`` (inf/nan when the float16 output is not finite).
        ref_sq: ``‖out64‖²_F``.
        output64: the float64 output ``(N, dv)`` when requested, else None.
        output16: the float16-storage output ``(N, dv)`` when requested, else None.
    """

    norm_sum: dict[str, float] = field(default_factory=lambda: dict.fromkeys(QUANTITIES, 0.0))
    norm_count: dict[str, int] = field(default_factory=lambda: dict.fromkeys(QUANTITIES, 0))
    amax: dict[str, float] = field(default_factory=lambda: dict.fromkeys(QUANTITIES, 0.0))
    nonfinite16: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(QUANTITIES, False))
    err_sq: float = 0.0
    ref_sq: float = 0.0
    output64: Tensor | None = None
    output16: Tensor | None = None

    def _rows(self, name: str, x64: Tensor, x16: Tensor, matrix: bool = False) -> None:
        if matrix:
            self.norm_sum[name] += float(torch.linalg.matrix_norm(x64))
            self.norm_count[name] += 1
        else:
            self.norm_sum[name] += float(torch.linalg.vector_norm(x64, dim=-1).sum())
            self.norm_count[name] += x64.shape[0]
        if x64.numel():
            self.amax[name] = max(self.amax[name], float(x64.abs().max()))
        self.nonfinite16[name] |= not bool(torch.isfinite(x16).all())


def _features(x: Tensor, weights: tuple[float, float, float] | None = None) -> Tensor:
    """Token-major full-form features ``[w2·x⊠x, w1·x, w0]`` of ``x (n, d)``: ``(n, d² + d + 1)``."""
    phi = taylor_features(x, "full").transpose(0, 1)
    if weights is None:
        return phi
    return phi * feature_weights(x.shape[-1], "full", weights, dtype=x.dtype, device=x.device)


def run_sequence(
    prep: Prepared,
    v: Tensor,
    *,
    chunk: int | None = None,
    keep_output: bool = False,
) -> SequenceResult:
    """Run one sequence through the efficient form, in float64 and with float16 storage.

    The state is accumulated over key chunks and read by query chunks, so memory is ``O(chunk·d²)``.

    Args:
        prep: prepared float64 inputs, ``q (L, d)``, ``k (S, d)``.
        v: values ``(S, dv)`` (float64).
        chunk: rows per chunk (default: about 2²² feature elements per chunk).
        keep_output: also return the float64 and float16 outputs ``(L, dv)``.

    Returns:
        :class:`SequenceResult`.
    """
    q, k = prep.q, prep.k
    d = k.shape[-1]
    d2, n_features = d * d, d * d + d + 1
    if chunk is None:
        chunk = max(1, _CHUNK_ELEMENTS // n_features)
    res = SequenceResult()
    h, f32 = torch.float16, torch.float32

    # Key pass: state = Φ_kᵀ V'  (F, dv+1). float16 run: features and V' stored in fp16, the matmul
    # accumulates in fp32 and its result is stored in fp16.
    state64 = k.new_zeros(n_features, v.shape[-1] + 1)
    state32 = torch.zeros(n_features, v.shape[-1] + 1, dtype=f32)
    for s in range(0, k.shape[0], chunk):
        kc, vc = k[s : s + chunk], v[s : s + chunk]
        phi64 = _features(kc)  # (n, F)
        phi16 = _features(kc.to(h))
        vp64 = augment_values(vc, None, prep.value_norm)  # (n, dv+1)
        vp16 = augment_values(vc.to(h), None, prep.value_norm)
        res._rows("kk", phi64[:, :d2], phi16[:, :d2])
        state64 += phi64.transpose(0, 1) @ vp64
        state32 += phi16.to(f32).transpose(0, 1) @ vp16.to(f32)
    state16 = state32.to(h)
    res._rows("kkv", state64[:d2], state16[:d2], matrix=True)
    res._rows("state", state64, state16, matrix=True)

    # Query pass: y = φ_q(Q̃) · state  (L, dv+1); numerator y[:, :dv], denominator y[:, dv].
    a = prep.weights[0]
    state16_32 = state16.to(f32)
    outs64, outs16 = [], []
    for s in range(0, q.shape[0], chunk):
        qc = q[s : s + chunk]
        phi64 = _features(qc, prep.weights)  # (n, F); first d² columns are a·q⊠q
        phi16 = _features(qc.to(h), prep.weights)
        res._rows("qq", phi64[:, :d2] / a, phi16[:, :d2])
        y64 = phi64 @ state64
        y16 = (phi16.to(f32) @ state16_32).to(h)
        num64, den64, num16, den16 = y64[:, :-1], y64[:, -1:], y16[:, :-1], y16[:, -1:]
        # this study counts a vanished (or non-finite) half-precision denominator as an output of 0
        out64 = divide_rows(num64, den64, den64 > 0)
        out16 = divide_rows(num16.to(f32), den16.to(f32), den16.to(f32) > 0).to(h)
        res._rows("numerator", num64, num16)
        res._rows("denominator", den64, den16)
        res._rows("output", out64, out16)
        res.err_sq += float((out16.double() - out64).square().sum())
        res.ref_sq += float(out64.square().sum())
        if keep_output:
            outs64.append(out64)
            outs16.append(out16)
    if keep_output:
        res.output64, res.output16 = torch.cat(outs64), torch.cat(outs16)
    return res


def samples_for(n: int, d: int, samples: int) -> int:
    """Number of sequences drawn at length ``n`` and head size ``d``: ``samples``, fewer for large N·d²."""
    return max(1, min(samples, _WORK_BUDGET // (n * (d * d + d + 1))))


def _generator(seed: int, d: int, n: int, i: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}/{d}/{n}/{i}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def random_qkv(n: int, d: int, seed: int, index: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Float64 ``q, k, v ~ N(0, 1)`` of shape ``(n, d)``, reproducible from ``(seed, d, n, index)``."""
    g = _generator(seed, d, n, index)
    qkv = torch.randn(3, n, d, generator=g, dtype=torch.float64)
    return qkv[0], qkv[1], qkv[2]


def _check_sizes(name: str, values: Sequence[int]) -> list[int]:
    out = []
    for x in values:
        if isinstance(x, bool) or not isinstance(x, int) or x < 1:
            raise ValueError(f"{name} must be positive ints, got {x!r}")
        out.append(x)
    if not out:
        raise ValueError(f"{name} must not be empty")
    return out


def measure_scaling(
    ns: Sequence[int] = DEFAULT_NS,
    ds: Sequence[int] = DEFAULT_DS,
    samples: int = 4,
    *,
    variants: Sequence[Variant] = ("normalised", "raw"),
    raw_scale: RawScale = "sdpa",
    temperature: float = 1.0,
    coefficients: tuple[float, float, float] = DEFAULT_COEFFICIENTS,
    seed: int = 0,
    progress: bool = False,
) -> list[dict]:
    """Measure the intermediates' norms and float16 overflow over a grid of N and d.

    Every variant sees the same random sequences. At each ``(d, N)`` :func:`samples_for` sequences are
    drawn (``samples``, fewer where N·d² is large).

    Args:
        ns: sequence lengths N (queries and keys, self-attention).
        ds: head sizes d (values have the same size).
        samples: sequences per point (upper bound).
        variants: any of :data:`VARIANTS`.
        raw_scale: logit scale of the raw variant, ``"sdpa"`` (1/√d) or ``"none"``.
        temperature: τ of the normalised variants.
        coefficients: ``(a, b, c)``.
        seed: base seed; each sequence is seeded from ``(seed, d, N, index)``.
        progress: show a tqdm bar on stderr (needs ``tqdm``: ``pip install taylorshift[bench]``).

    Returns:
        One dict per ``(variant, d, N)`` with keys ``variant, d, N, samples``, for each quantity ``q`` of
        :data:`QUANTITIES` ``{q}_norm`` (mean float64 norm), ``{q}_amax`` (largest |entry|) and
        ``{q}_fp16_nonfinite`` (bool), then ``fp16_overflow`` (any quantity non-finite),
        ``fp16_nonfinite`` (the non-finite quantities joined by ``+``), ``fp16_rel_err``
        (``‖out16 − out64‖_F / ‖out64‖_F``) and ``seconds``.
    """
    ns, ds = _check_sizes("ns", ns), _check_sizes("ds", ds)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    variants = list(variants)
    for var in variants:
        if var not in VARIANTS:
            raise ValueError(f"variants must be drawn from {VARIANTS}, got {var!r}")
    if raw_scale not in RAW_SCALES:
        raise ValueError(f"raw_scale must be one of {RAW_SCALES}, got {raw_scale!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    coefficients = check_coefficients(coefficients)

    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("progress=True needs tqdm: pip install 'taylorshift[bench]'") from err
        bar = tqdm(total=len(ds) * len(ns) * len(variants), desc="scaling", unit="point")

    rows: list[dict] = []
    try:
        for d in ds:
            for n in ns:
                m = samples_for(n, d, samples)
                for var in variants:
                    if bar is not None:
                        bar.set_postfix_str(f"d={d} N={n} {var}")
                    t0 = time.perf_counter()
                    total = SequenceResult()
                    for i in range(m):
                        q, k, v = random_qkv(n, d, seed, i)
                        prep = prepare(var, q, k, raw_scale=raw_scale, temperature=temperature,
                                       coefficients=coefficients)
                        r = run_sequence(prep, v)
                        for name in QUANTITIES:
                            total.norm_sum[name] += r.norm_sum[name]
                            total.norm_count[name] += r.norm_count[name]
                            total.amax[name] = max(total.amax[name], r.amax[name])
                            total.nonfinite16[name] |= r.nonfinite16[name]
                        total.err_sq += r.err_sq
                        total.ref_sq += r.ref_sq
                    rows.append(_row(var, d, n, m, total, time.perf_counter() - t0))
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return rows


def _row(variant: str, d: int, n: int, samples: int, r: SequenceResult, seconds: float) -> dict:
    row: dict = {"variant": variant, "d": d, "N": n, "samples": samples}
    for name in QUANTITIES:
        row[f"{name}_norm"] = r.norm_sum[name] / max(r.norm_count[name], 1)
        row[f"{name}_amax"] = r.amax[name]
        row[f"{name}_fp16_nonfinite"] = r.nonfinite16[name]
    bad = [name for name in QUANTITIES if r.nonfinite16[name]]
    row["fp16_overflow"] = bool(bad)
    row["fp16_nonfinite"] = "+".join(bad)
    rel = math.sqrt(r.err_sq / r.ref_sq) if r.ref_sq > 0 else float("nan")
    row["fp16_rel_err"] = rel if math.isfinite(rel) else float("inf")
    row["seconds"] = seconds
    return row


def first_overflow(rows: Sequence[dict], variant: str, d: int) -> int | None:
    """Smallest N of ``variant`` at head size ``d`` whose float16 run overflowed, or None."""
    hits = [r["N"] for r in rows if r["variant"] == variant and r["d"] == d and r["fp16_overflow"]]
    return min(hits) if hits else None


def summary(rows: Sequence[dict]) -> list[dict]:
    """Per head size d: first float16-overflow N and the largest mean norms, for every variant measured.

    Returns:
        One dict per d with ``d``, ``N_max`` (largest N measured) and for each variant ``v``:
        ``{v}_first_overflow`` (N or None), ``{v}_max_kkv``, ``{v}_max_denominator``,
        ``{v}_max_output`` (max over N of the mean norms) and ``{v}_max_rel_err`` (largest float16
        output error).
    """
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    out = []
    for d in sorted({r["d"] for r in rows}):
        at_d = [r for r in rows if r["d"] == d]
        entry: dict = {"d": d, "N_max": max(r["N"] for r in at_d)}
        for var in variants:
            sel = [r for r in at_d if r["variant"] == var]
            entry[f"{var}_first_overflow"] = first_overflow(rows, var, d)
            for q in ("kkv", "denominator", "output"):
                entry[f"{var}_max_{q}"] = max(r[f"{q}_norm"] for r in sel)
            entry[f"{var}_max_rel_err"] = max(r["fp16_rel_err"] for r in sel)
        out.append(entry)
    return out


def plot_scaling(rows: Sequence[dict], path: str, *, title: str | None = None, dpi: int = 72) -> None:
    """Plot mean norm against N (log-log), one panel per quantity plus the float16 output error.

    One colour per d; solid = normalised, dashed = raw, dotted = paper; the horizontal line is float16's
    largest finite value; a red ``x`` marks a point whose float16 run produced inf/nan in that quantity.
    Needs matplotlib (``pip install 'taylorshift[bench]'``).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'taylorshift[bench]'") from err

    styles = {"normalised": "-", "raw": "--", "paper": ":"}
    ds = sorted({r["d"] for r in rows})
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    colors = {d: f"C{i}" for i, d in enumerate(ds)}
    fig = Figure(figsize=(16, 8.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 4).ravel()
    for ax, name in zip(axes, (*QUANTITIES, "fp16_rel_err"), strict=True):
        for var in variants:
            for d in ds:
                sel = sorted((r for r in rows if r["variant"] == var and r["d"] == d), key=lambda r: r["N"])
                if not sel:
                    continue
                x = [r["N"] for r in sel]
                if name == "fp16_rel_err":
                    y = [min(r["fp16_rel_err"], 10.0) for r in sel]  # inf (nan output) drawn at 10
                    bad = [r["fp16_overflow"] for r in sel]
                else:
                    y = [max(r[f"{name}_norm"], 1e-300) for r in sel]
                    bad = [r[f"{name}_fp16_nonfinite"] for r in sel]
                ax.plot(x, y, styles.get(var, "-."), color=colors[d], lw=1.5)
                xb = [xi for xi, b in zip(x, bad, strict=True) if b]
                yb = [yi for yi, b in zip(y, bad, strict=True) if b]
                if xb:
                    ax.plot(xb, yb, "x", color="red", ms=8, mew=2)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.grid(True, which="major", alpha=0.3)
        ax.set_xlabel("N")
        if name == "fp16_rel_err":
            ax.set_title("fp16 output rel. error (overflow → ≥1)", fontsize=10)
        else:
            ax.axhline(FP16_MAX, color="black", lw=0.8, ls="-.")
            ax.set_title(LABELS[name], fontsize=10)
    # legend: colours = d, line styles = variants
    handles = [axes[0].plot([], [], "-", color=colors[d], label=f"d={d}")[0] for d in ds]
    handles += [axes[0].plot([], [], styles.get(v, "-."), color="gray", label=v)[0] for v in variants]
    handles += [axes[0].plot([], [], "x", color="red", label="fp16 inf/nan")[0]]
    handles += [axes[0].plot([], [], "-.", color="black", lw=0.8, label="fp16 max 65504")[0]]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.suptitle(title or "Mean norms of the efficient form's intermediates (float64)")
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.savefig(path, dpi=dpi)
