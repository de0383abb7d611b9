"""ListOps (LRA rules): nested list operations on digits, classify the value of the expression (10 classes).

Grammar: ``[MIN``, ``[MAX``, ``[MED``, ``[SM`` open an operator node, ``]`` closes it, values are the digits 0–9.
For example ``[MAX 2 9 [MIN 4 7 ] 0 ]`` has the value 9.

* ``MIN`` / ``MAX``: smallest / largest argument.
* ``MED``: the median **rounded down**, exactly LRA's ``int(np.median(args))``: the middle value for an odd count,
  the floor of the mean of the two middle values for an even count (``[MED 1 2 3 4 ]`` → 2, ``[MED 1 9 ]`` → 5).
  (The TaylorShift code's own Long-ListOps takes the upper median ``sorted(args)[len // 2]`` instead.)
* ``SM``: sum modulo 10.

Generation follows LRA's ``generate_tree``: the root is at depth 1; a node at depth < ``max_depth`` (10) is a
value with probability ``value_prob`` (0.75), otherwise an operator, chosen uniformly, with 2–``max_args`` (10)
arguments; nodes at depth ``max_depth`` are values. The length of a tree is its token count (2 per operator,
1 per value); trees are kept if ``min_length < length < max_length`` (strictly; LRA: 500 and 2,000) and are
deduplicated. LRA used 96,000 / 2,000 / 2,000 train / val / test samples.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from taylorshift.data.cache import DataNotPreparedError, atomic_save_npz, record_files, resolve_cache_dir
from taylorshift.data.sequences import RaggedTokenDataset

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
VALUES = tuple(str(v) for v in range(10))
PAD, CLS = "<pad>", "<cls>"
PARENS = ("(", ")")  # LRA's TSV files bracket every sub-tree in parentheses; they carry no information
SPLITS = ("train", "val", "test")
DEFAULT_SIZE = 96_000  # LRA's training set


class ListOpsTokenizer:
    """Token ids for ListOps: ``<pad>`` = 0, ``<cls>`` = 1, digits 0–9 = 2–11, ``[MIN [MAX [MED [SM`` = 12–15,
    ``]`` = 16 (``vocab_size`` = 17)."""

    vocab = (PAD, CLS, *VALUES, *OPERATORS, END)
    pad_id = 0
    cls_id = 1

    def __init__(self) -> None:
        self.token_to_id = {t: i for i, t in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, expr: str | Sequence[str], add_cls: bool = False) -> list[int]:
        """Ids of the tokens of ``expr`` (a string or a token list); LRA's ``(`` ``)`` tokens are dropped."""
        ids = [self.cls_id] if add_cls else []
        for tok in tokenize(expr):
            if tok not in self.token_to_id or tok in (PAD, CLS):
                raise ValueError(f"unknown ListOps token {tok!r}; expected one of {', '.join(self.vocab[2:])}")
            ids.append(self.token_to_id[tok])
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """The expression string of ``ids``, without ``<pad>`` and ``<cls>``."""
        return " ".join(self.vocab[i] for i in ids if i not in (self.pad_id, self.cls_id))


def tokenize(expr: str | Sequence[str]) -> list[str]:
    """Split on whitespace (if a string) and drop LRA's ``(`` / ``)`` tokens."""
    tokens = expr.split() if isinstance(expr, str) else list(expr)
    return [t for t in tokens if t not in PARENS]


def _median_rounded_down(args: list[int]) -> int:
    s = sorted(args)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) // 2


_APPLY: dict[str, Callable[[list[int]], int]] = {
    "[MIN": min,
    "[MAX": max,
    "[MED": _median_rounded_down,
    "[SM": lambda args: sum(args) % 10,
}


def evaluate(expr: str | Sequence[str]) -> int:
    """Value (0–9) of a ListOps expression given as a string or token list (``(`` / ``)`` are ignored).

    Raises:
        ValueError: the expression is malformed (unknown token, unbalanced ``]``, an operator without
            arguments, or more than one top-level value).
    """
    stack: list[tuple[str, list[int]]] = [("", [])]  # (operator, arguments so far); the bottom frame is the top level
    for tok in tokenize(expr):
        if tok in _APPLY:
            stack.append((tok, []))
        elif tok == END:
            if len(stack) == 1:
                raise ValueError("unbalanced ']' in ListOps expression")
            op, args = stack.pop()
            if not args:
                raise ValueError(f"operator {op} has no arguments")
            stack[-1][1].append(_APPLY[op](args))
        elif len(tok) == 1 and tok.isdigit():
            stack[-1][1].append(int(tok))
        else:
            raise ValueError(f"unknown ListOps token {tok!r}")
    if len(stack) != 1:
        raise ValueError(f"{len(stack) - 1} operator(s) not closed with ']'")
    if len(stack[0][1]) != 1:
        raise ValueError(f"expected one top-level value, got {len(stack[0][1])}")
    return stack[0][1][0]


class _TooLong(Exception):
    pass


def _tree(rng: random.Random, depth: int, max_depth: int, max_args: int, value_prob: float,
          out: list[str], max_length: int) -> None:
    """Append the tokens of a random (sub)tree to ``out`` (LRA's ``generate_tree``); stop early if too long."""
    if depth >= max_depth or rng.random() < value_prob:
        out.append(rng.choice(VALUES))
    else:
        n_args = rng.randint(2, max_args)
        op = rng.choice(OPERATORS)
        out.append(op)
        for _ in range(n_args):
            _tree(rng, depth + 1, max_depth, max_args, value_prob, out, max_length)
        out.append(END)
    if len(out) >= max_length:
        raise _TooLong


def iter_expressions(seed: int = 0, min_length: int = 500, max_length: int = 2000, max_depth: int = 10,
                     max_args: int = 10, value_prob: float = 0.75) -> Iterator[list[str]]:
    """Endless stream of random expressions (token lists) with ``min_length < len < max_length``; not deduplicated.

    Deterministic for a given ``seed`` and parameters.
    """
    if not 0 <= min_length < max_length:
        raise ValueError(f"need 0 <= min_length < max_length, got {min_length} and {max_length}")
    if max_args < 2 or max_depth < 1 or not 0 <= value_prob < 1:
        raise ValueError(f"need max_args >= 2, max_depth >= 1, 0 <= value_prob < 1; got {max_args}, {max_depth}, "
                         f"{value_prob}")
    rng = random.Random(seed)
    while True:
        out: list[str] = []
        try:
            _tree(rng, 1, max_depth, max_args, value_prob, out, max_length)
        except _TooLong:
            continue
        if len(out) > min_length:
            yield out


def generate_listops(n: int, seed: int = 0, min_length: int = 500, max_length: int = 2000, max_depth: int = 10,
                     max_args: int = 10, value_prob: float = 0.75,
                     progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` distinct random expressions, encoded with :class:`ListOpsTokenizer` (no ``<cls>``).

    Args:
        n: number of samples.
        seed: seed of the generator; the same seed and parameters give the same samples.
        min_length, max_length: keep expressions whose token count lies strictly between them.
        max_depth, max_args, value_prob: tree shape (LRA: 10, 10, 0.75).
        progress: called with the number of new samples after each accepted one (e.g. ``tqdm.update``).

    Returns:
        ``tokens`` (uint8, all sequences concatenated), ``offsets`` (int64, shape ``(n + 1,)``) and ``labels``
        (uint8, shape ``(n,)``, the value of each expression from :func:`evaluate`).
    """
    tok = ListOpsTokenizer()
    seen: set[bytes] = set()
    seqs, labels = [], []
    stream = iter_expressions(seed, min_length, max_length, max_depth, max_args, value_prob)
    while len(seqs) < n:
        expr = next(stream)
        ids = np.asarray(tok.encode(expr), dtype=np.uint8)
        key = hashlib.blake2b(ids.tobytes(), digest_size=16).digest()
        if key in seen:
            continue
        seen.add(key)
        seqs.append(ids)
        labels.append(evaluate(expr))
        if progress is not None:
            progress(1)
    offsets = np.zeros(n + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(s) for s in seqs])
    tokens = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.uint8)
    return tokens, offsets, np.asarray(labels, dtype=np.uint8)


def split_sizes(size: int, val_size: int | None = None, test_size: int | None = None) -> dict[str, int]:
    """Samples per split: ``size`` training samples; val and test default to ``max(1, size // 48)`` each
    (2,000 for LRA's 96,000)."""
    default = max(1, size // 48)
    return {"train": size, "val": default if val_size is None else val_size,
            "test": default if test_size is None else test_size}


def prepare_listops(cache_dir: str | os.PathLike | None = None, size: int = DEFAULT_SIZE, val_size: int | None = None,
                    test_size: int | None = None, seed: int = 0, min_length: int = 500, max_length: int = 2000,
                    progress: Callable[[int], None] | None = None, folder: str = "listops") -> list[Path]:
    """Generate train/val/test (distinct across splits) into ``<cache>/<folder>/{split}.npz``; record their sha256.

    ``folder`` names a variant (the ``listops_short`` task writes shorter expressions to ``listops_short``).

    Returns the written paths.
    """
    sizes = split_sizes(size, val_size, test_size)
    if any(v < 0 for v in sizes.values()):
        raise ValueError(f"split sizes must be non-negative, got {sizes}")
    params = {"seed": seed, "min_length": min_length, "max_length": max_length, "max_depth": 10, "max_args": 10,
              "value_prob": 0.75, "sizes": sizes}
    tokens, offsets, labels = generate_listops(sum(sizes.values()), seed, min_length, max_length, progress=progress)
    name, folder = folder, resolve_cache_dir(cache_dir) / folder
    paths, start = [], 0
    for split in SPLITS:
        stop = start + sizes[split]
        off = offsets[start: stop + 1]
        path = folder / f"{split}.npz"
        atomic_save_npz(path, tokens=tokens[off[0]: off[-1]], offsets=off - off[0], labels=labels[start:stop])
        paths.append(path)
        start = stop
    record_files(cache_dir, name, paths, params)
    return paths


def listops_dataset(split: str = "train", cache_dir: str | os.PathLike | None = None, add_cls: bool = False,
                    pad_to: int | None = None, *, folder: str = "listops") -> RaggedTokenDataset:
    """The prepared ListOps ``split`` (``train``, ``val`` or ``test``) as ``(tokens (N,), label)`` pairs.

    Args:
        split: which split.
        cache_dir: the data cache (default ``$TAYLORSHIFT_DATA_DIR`` or ``~/.cache/taylorshift/data``).
        add_cls: put ``<cls>`` (id 1) in front of every sequence.
        pad_to: right-pad every sequence with ``<pad>`` (id 0) to this length; otherwise lengths vary, batch with
            :func:`taylorshift.data.sequences.pad_collate`.
        folder: the variant's folder in the cache (``listops`` or ``listops_short``; the task of that name).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = resolve_cache_dir(cache_dir) / folder / f"{split}.npz"
    if not path.exists():
        raise DataNotPreparedError(f"{path} not found: run 'taylorshift data prepare {folder}' "
                                   f"(with --cache-dir {path.parent.parent} if that is not the default)")
    with np.load(path) as z:
        tokens, offsets, labels = z["tokens"], z["offsets"], z["labels"]
    tok = ListOpsTokenizer()
    return RaggedTokenDataset(tokens, offsets, labels, prefix=(tok.cls_id,) if add_cls else (), pad_to=pad_to,
                              pad_id=tok.pad_id)
