"""Running exported graphs with ONNX Runtime: :class:`OnnxModel` (a forward graph, inputs checked against
what the graph was exported for) and :class:`OnnxLMRunner` (prefill and generation through the decoding step
graph, with a state whose size does not depend on the context).

Neither needs torch at run time: inputs and outputs are NumPy arrays (torch tensors are accepted and
converted).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from taylorshift.deploy.graphs import read_metadata, require


def session(path: str | os.PathLike, threads: int = 1, arena: bool = True) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU with ``threads`` intra-op threads and one inter-op thread
    (``threads=1`` is the small-device proxy of ``benchmarks/deploy.py``). ``arena=False`` turns off ONNX
    Runtime's memory arena, which otherwise keeps the largest allocation of a run for the next one (the
    benchmark measures each run's peak without it)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no ONNX file at {path}")
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = bool(arena)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "numpy"):  # a torch tensor
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array or a torch tensor, got {type(x).__name__}")
    return x


class OnnxModel:
    """An exported forward graph (from :func:`taylorshift.deploy.export_onnx`) in ONNX Runtime.

    Args:
        path: the ``.onnx`` file (or its int8 version from :func:`taylorshift.deploy.quantize_int8`).
        threads: intra-op threads.
        arena: keep ONNX Runtime's memory arena (see :func:`session`).

    Calling it with the model's inputs (``x`` and optionally ``key_padding_mask`` for a classifier, ``images``
    for a ViT, ``ids`` for an LM; NumPy or torch) returns the logits as a NumPy array. A length the graph was
    not exported for (longer than ``max_len``, or empty) is a ``ValueError`` before anything runs.
    """

    def __init__(self, path: str | os.PathLike, threads: int = 1, arena: bool = True) -> None:
        self.session = session(path, threads, arena)
        self.meta = read_metadata(self.session)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.input_types = {i.name: i.type for i in self.session.get_inputs()}

    def __repr__(self) -> str:
        m = self.meta
        return (
            f"OnnxModel(family={m.get('family')!r}, attention={m.get('attention')!r}, "
            f"backend={m.get('backend')!r}, inputs={self.input_names})"
        )

    def __call__(self, *inputs: Any) -> np.ndarray:
        if len(inputs) > len(self.input_names) or not inputs:
            raise ValueError(f"the graph takes inputs {self.input_names}, got {len(inputs)} arrays")
        names = self.input_names[: len(inputs)]
        if len(names) < len(self.input_names):
            raise ValueError(f"the graph takes inputs {self.input_names}; pass all of them")
        arrays = [_numpy(x, n) for x, n in zip(inputs, names, strict=True)]
        first = arrays[0]
        max_len = self.meta.get("max_len")
        if self.meta.get("family") in ("classifier", "lm"):
            if first.ndim < 2:
                raise ValueError(f"{names[0]} must be (B, N, ...), got shape {first.shape}")
            n = first.shape[1]
            if n < 1 or (max_len is not None and n > max_len):
                raise ValueError(
                    f"{names[0]} has length {n}; this graph takes 1 to {max_len} tokens (max_len of the exported model)"
                )
        elif self.meta.get("family") == "vit":
            expected = tuple(self.meta["example_shape"][1:])
            if first.ndim != 4 or tuple(first.shape[1:]) != expected:
                raise ValueError(
                    f"{names[0]} must have shape (B, {', '.join(map(str, expected))}) (the exported "
                    f"ViT's image size), got {first.shape}"
                )
        feed = {}
        for name, a in zip(names, arrays, strict=True):
            if self.input_types[name] == "tensor(int64)" and a.dtype != np.int64:
                a = a.astype(np.int64)
            elif self.input_types[name] == "tensor(float)" and a.dtype != np.float32:
                a = a.astype(np.float32)
            feed[name] = a
        return self.session.run(None, feed)[0]


@dataclass
class LMState:
    """Decoding state of :class:`OnnxLMRunner`: one array per block (fixed shapes) and the position.

    Attributes:
        states: ``(B, H, F, d + 1)`` float32 per block.
        position: ``(B,)`` int64, tokens seen so far.
    """

    states: list[np.ndarray]
    position: np.ndarray
    last_logits: np.ndarray | None = field(default=None, repr=False)

    @property
    def length(self) -> int:
        return int(self.position[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the state arrays (constant: they do not grow with the context)."""
        return sum(s.nbytes for s in self.states) + self.position.nbytes


class OnnxLMRunner:
    """Prefill and generate with an exported decoding step (:func:`taylorshift.deploy.export_lm_step`).

    The prompt is run token by token through the step graph (prefill), so memory is the state's whatever the
    prompt length, and the cost is linear in it; then each new token is one more step.

    Args:
        path: the step graph's ``.onnx`` file.
        threads: intra-op threads.
        arena: keep ONNX Runtime's memory arena (see :func:`session`).

    Example::

        runner = OnnxLMRunner("lm_step.onnx")
        tokens = list(runner.generate(np.frombuffer(b"The ", np.uint8), max_new_tokens=50))  # greedy
    """

    def __init__(self, path: str | os.PathLike, threads: int = 1, arena: bool = True) -> None:
        self.session = session(path, threads, arena)
        self.meta = read_metadata(self.session)
        if self.meta.get("graph") != "lm_step":
            raise ValueError(
                f"{path} is not a decoding step graph (export it with export_lm_step or "
                "'taylorshift export --graph step')"
            )
        self.depth = int(self.meta["depth"])
        self.batch_size = int(self.meta["batch_size"])
        self.max_len = int(self.meta["max_len"])
        self.vocab_size = int(self.meta["vocab_size"])
        self.state_shapes = [tuple(s) for s in self.meta["state_shapes"]]
        self._state_names = [f"state_{i}" for i in range(self.depth)]

    def new_state(self) -> LMState:
        """Zero state: nothing seen."""
        return LMState([np.zeros(s, np.float32) for s in self.state_shapes], np.zeros(self.batch_size, np.int64))

    def step(self, token: Any, state: LMState) -> np.ndarray:
        """Run one token per sequence, ``token (B,)`` or ``(B, 1)`` ints; updates ``state``; returns the
        next-token logits ``(B, vocab)``."""
        tok = np.asarray(_numpy(token, "token") if not isinstance(token, (list, int)) else token, np.int64)
        tok = tok.reshape(-1, 1)
        if tok.shape[0] != self.batch_size:
            raise ValueError(f"token has batch size {tok.shape[0]}; the graph was exported for {self.batch_size}")
        if tok.min() < 0 or tok.max() >= self.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got [{tok.min()}, {tok.max()}]")
        if state.length >= self.max_len:
            raise ValueError(f"the context is full: {state.length} tokens = max_len of the exported model")
        feed = {"token": tok, "position": state.position, **dict(zip(self._state_names, state.states, strict=True))}
        logits, *states = self.session.run(None, feed)
        state.states = states
        state.position = state.position + 1
        state.last_logits = logits
        return logits

    def prefill(self, ids: Any, state: LMState | None = None) -> tuple[np.ndarray, LMState]:
        """Run the prompt ``ids (B, N)`` (or ``(N,)`` for batch 1) after ``state`` (default: a new one).

        Returns:
            ``(logits of the last token (B, vocab), state)``.
        """
        ids = np.asarray(_numpy(ids, "ids") if not isinstance(ids, (list, bytes)) else list(ids), np.int64)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.shape[1] < 1:
            raise ValueError(f"ids must be a non-empty prompt (B, N) or (N,), got shape {ids.shape}")
        state = self.new_state() if state is None else state
        if state.length + ids.shape[1] > self.max_len:
            raise ValueError(
                f"{state.length + ids.shape[1]} tokens exceed max_len={self.max_len} of the exported model"
            )
        logits = None
        for t in range(ids.shape[1]):
            logits = self.step(ids[:, t], state)
        return logits, state

    def generate(
        self, ids: Any, max_new_tokens: int, temperature: float = 0.0, seed: int | None = None
    ) -> Iterator[np.ndarray]:
        """Continue the prompt ``ids``, yielding each new token ``(B,)`` as it is chosen.

        ``temperature == 0`` is greedy (the argmax, as :meth:`taylorshift.models.CausalLM.generate` with
        ``temperature=0``); otherwise tokens are drawn from ``softmax(logits / temperature)`` with NumPy's
        generator seeded by ``seed``.
        """
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        if not float(temperature) >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
        ids = np.asarray(_numpy(ids, "ids") if not isinstance(ids, (list, bytes)) else list(ids), np.int64)
        n = ids.shape[-1]
        if n + max_new_tokens > self.max_len:
            raise ValueError(f"prompt ({n}) + max_new_tokens ({max_new_tokens}) exceed max_len={self.max_len}")
        return self._generate(ids, max_new_tokens, float(temperature), np.random.default_rng(seed))

    def _generate(
        self, ids: np.ndarray, max_new_tokens: int, temperature: float, rng: np.random.Generator
    ) -> Iterator[np.ndarray]:
        if max_new_tokens == 0:
            return
        logits, state = self.prefill(ids)
        for i in range(max_new_tokens):
            token = _choose(logits, temperature, rng)
            yield token
            if i + 1 < max_new_tokens:
                logits = self.step(token, state)


def _choose(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """Next token per row of ``logits (B, V)``: argmax for ``temperature == 0``, else a softmax draw."""
    if temperature == 0:
        return logits.argmax(-1).astype(np.int64)
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.array([rng.choice(p.shape[-1], p=row) for row in p], np.int64)
