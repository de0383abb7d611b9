"""The causal LM's single-token decoding step as a graph of its own: token and state in, logits and state out.

TaylorShift decodes with a constant-size state per block (``Z = Σ_j φ(k_j) [v_j | 1]ᵀ`` per head, shape
``(B, H, F, d + 1)``), so one step is a fixed computation on fixed shapes, whatever the context length. The
graph::

    inputs:  token (B, 1) int64, position (B,) int64 (tokens seen so far), state_0 … state_{L-1}
    outputs: logits (B, vocab) float32, new_state_0 … new_state_{L-1} (same shapes as the inputs)

:class:`LMStep` is a thin adapter over the modules' own decoding API (``Block.step`` with the attention's
cache, as :meth:`taylorshift.models.CausalLM.step` runs it): it builds each block's cache from the state and
position tensors (the state becomes the sums of the cache's :class:`taylorshift.CausalState`), runs the
step (:func:`taylorshift.taylor_shift_causal`'s single-position update, which exports), and returns the
updated states. Only the position differs from ``CausalLM.step``: there it is the cache's Python ``int``, here
a tensor, so the positional table is read with a gather instead of a slice. The batch size is fixed at export
(the cache's constant tensors are made for it).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from taylorshift.deploy.graphs import attention_kind, quiet_exporter, require, write_metadata


def _check_lm(model: nn.Module) -> None:
    from taylorshift.models import CausalLM

    if not isinstance(model, CausalLM):
        raise TypeError(f"the decoding step graph is for a CausalLM, got {type(model).__name__}")
    if model.config.attention != "taylorshift":
        raise ValueError(
            f"the decoding step graph needs TaylorShift attention (a constant-size state); this LM uses "
            f"{model.config.attention!r}, whose key/value cache grows with the context"
        )


def _new_layer_cache(block: nn.Module, batch_size: int, state: Tensor, position: Tensor):
    """A block's decoding cache whose state holds the running sums ``state (B, H, F, d + 1)`` of ``position``
    tokens (no padding: every token counted, for every head)."""
    cache = block.attn.new_cache(batch_size, device=state.device, dtype=state.dtype)
    current = cache.state.current  # the CausalState of taylor_shift_causal, a value: replaced, never modified
    n_keys = position.unsqueeze(-1).expand(current.n_keys.shape).clone()  # (B, H)
    cache.state.current = dataclasses.replace(current, sums=state, n_keys=n_keys)
    cache.n_valid = position.clone()  # the step counts its token in place
    return cache


class LMStep(nn.Module):
    """One decoding step of a TaylorShift :class:`~taylorshift.models.CausalLM` as a pure function.

    Args:
        model: the LM (used as it is; put it in eval mode).

    Shapes:
        ``forward(token, position, *states)``: ``token (B, 1)`` int64, ``position (B,)`` int64 in
        ``[0, max_len)``, ``states`` one ``(B, H, F, d + 1)`` tensor per block →
        ``(logits (B, vocab), *new_states)``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        _check_lm(model)
        self.model = model

    def state_shapes(self, batch_size: int) -> list[tuple[int, ...]]:
        """The shape of each block's state for ``batch_size`` sequences (constant in the context length)."""
        return [tuple(b.attn.new_cache(batch_size).state.state.shape) for b in self.model.blocks]

    def initial_states(self, batch_size: int) -> list[Tensor]:
        """Zero states: nothing seen yet."""
        return [b.attn.new_cache(batch_size).state.state for b in self.model.blocks]

    def forward(self, token: Tensor, position: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        m = self.model
        B = token.shape[0]
        pe = m.pos.pe.index_select(0, position).unsqueeze(1)  # (B, 1, D): the encoding of each sequence's position
        h = m.embed(token) + pe.to(m.embed.weight.dtype)  # (B, 1, D)
        new_states = []
        for block, state in zip(m.blocks, states, strict=True):
            cache = _new_layer_cache(block, B, state, position)
            h = block.step(h, cache)
            new_states.append(cache.state.state)
        return (m._logits(h)[:, -1], *new_states)  # (B, V), states


def step_input_names(depth: int) -> list[str]:
    return ["token", "position", *(f"state_{i}" for i in range(depth))]


def step_output_names(depth: int) -> list[str]:
    return ["logits", *(f"new_state_{i}" for i in range(depth))]


def export_lm_step(model: nn.Module, path: str | os.PathLike, *, batch_size: int = 1) -> Path:
    """Export the decoding step of a TaylorShift causal LM (see the module docstring) to an ONNX file.

    Args:
        model: a :class:`~taylorshift.models.CausalLM` with TaylorShift attention.
        path: the ``.onnx`` file to write.
        batch_size: sequences decoded together (fixed in the graph).

    Raises:
        TypeError: not a CausalLM. ValueError: softmax attention, or a bad ``batch_size``.
        ImportError: onnx / onnxscript missing (the ``deploy`` extra).
    """
    require("onnx")
    require("onnxscript")
    _check_lm(model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    import copy

    step = LMStep(copy.deepcopy(model).eval()).eval()
    depth = len(model.blocks)
    states = step.initial_states(batch_size)
    token = torch.zeros(batch_size, 1, dtype=torch.long)
    position = torch.zeros(batch_size, dtype=torch.long)
    path = Path(path)
    with torch.no_grad(), quiet_exporter():
        program = torch.onnx.export(
            step,
            (token, position, *states),
            dynamo=True,
            input_names=step_input_names(depth),
            output_names=step_output_names(depth),
            verbose=False,
        )
        program.save(str(path))
    cfg = model.config
    write_metadata(
        path,
        {
            "graph": "lm_step",
            "family": "lm",
            "backend": "recurrent",
            "attention": attention_kind(model),
            "max_len": cfg.max_len,
            "vocab_size": cfg.vocab_size,
            "depth": depth,
            "batch_size": batch_size,
            "state_shapes": [list(s) for s in step.state_shapes(batch_size)],
            "state_dtype": str(states[0].dtype),
        },
    )
    return path
