"""Sequence parallelism (taylorshift.distributed) with 2 and 3 gloo processes on CPU: outputs and gradients equal
the single-process op on the concatenated sequence (float64 to 1e-10, float32 to 1e-5), causal and not, with key
padding, unequal and empty shards; bad inputs raise the same clear error on every rank."""

from __future__ import annotations

import json
import os
import socket
import zlib
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from taylorshift import taylor_shift_attention
from taylorshift.distributed import sequence_parallel_attention

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built in")

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
N, D, DV = 19, 6, 5
# shard lengths per world size: unequal, and (3 ranks) an empty middle shard
SHARDS = {2: (8, 11), 3: (7, 0, 12)}


def _init(rank: int, world: int, rendezvous: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)


def _inputs(dtype: torch.dtype, masked: bool, seed: int):
    """Full-sequence q, k, v (2, 3, N, ·), a key mask (2, 1, 1, N) or None, a per-head scale and an upstream
    gradient, identical on every rank."""
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(2, 3, N, D, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(2, 3, N, DV, generator=g, dtype=torch.float64)
    grad = torch.randn(2, 3, N, DV, generator=g, dtype=torch.float64)
    scale = (0.5 + torch.rand(3, 1, 1, generator=g, dtype=torch.float64)).to(dtype)
    mask = None
    if masked:  # batch 0: padding at the end; batch 1: the first 9 positions masked (the causal rows see none)
        mask = torch.ones(2, 1, 1, N, dtype=torch.bool)
        mask[0, ..., N - 6 :] = False
        mask[1, ..., :9] = False
    return q.to(dtype), k.to(dtype), v.to(dtype), mask, scale, grad.to(dtype)


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def _compare(rank: int, world: int, dtype, causal: bool, masked: bool, seed: int) -> dict:
    """Max abs difference of this rank's output and input gradients (and the all-reduced scale gradient) to the
    single-process op, and the size of the reference."""
    q, k, v, mask, scale, grad = _inputs(dtype, masked, seed)
    ref_in = [_leaf(t) for t in (q, k, v, scale)]
    ref = taylor_shift_attention(*ref_in[:3], attn_mask=mask, is_causal=causal, scale=ref_in[3], backend="efficient")
    (ref * grad).sum().backward()
    lengths = SHARDS[world]
    lo = sum(lengths[:rank])
    hi = lo + lengths[rank]
    part = [_leaf(t[..., lo:hi, :]) for t in (q, k, v)]
    s = _leaf(scale)
    out = sequence_parallel_attention(
        *part, group=None, is_causal=causal, scale=s, attn_mask=None if mask is None else mask[..., lo:hi]
    )
    (out * grad[..., lo:hi, :]).sum().backward()
    ds = s.grad.clone()
    dist.all_reduce(ds)  # each rank holds its queries' share of the replicated scale's gradient
    pairs = [(out, ref[..., lo:hi, :])] + [(p.grad, r.grad[..., lo:hi, :]) for p, r in zip(part, ref_in, strict=False)]
    pairs.append((ds, ref_in[3].grad))
    return {
        "err": max(float((a - b).detach().abs().max()) if b.numel() else 0.0 for a, b in pairs),
        "size": max(float(b.detach().abs().max()) if b.numel() else 0.0 for _, b in pairs),
        "dtype": str(out.dtype),
    }


def _errors(rank: int, world: int) -> dict:
    """The message each bad call raises on this rank (every rank must raise)."""
    q = torch.randn(2, 3, 4, D, dtype=torch.float64)
    found = {}
    cases = {
        # rank 1's shard has another batch size
        "batch": lambda: sequence_parallel_attention(
            q[:1] if rank == 1 else q, q[:1] if rank == 1 else q, q[:1] if rank == 1 else q
        ),
        # rank 0's shard has another head count
        "heads": lambda: sequence_parallel_attention(
            q[:, :2] if rank == 0 else q, q[:, :2] if rank == 0 else q, q[:, :2] if rank == 0 else q
        ),
        # the last rank passes a mask that is not a key mask: rejected there, every rank stops
        "mask": lambda: sequence_parallel_attention(
            q, q, q, attn_mask=torch.ones(4, 4, dtype=torch.bool) if rank == world - 1 else None
        ),
        # causal shards need L == S on every rank
        "causal_lengths": lambda: sequence_parallel_attention(
            q, q[..., :3, :] if rank == 0 else q, q[..., :3, :] if rank == 0 else q, is_causal=True
        ),
    }
    for name, call in cases.items():
        try:
            call()
            found[name] = None
        except (ValueError, TypeError) as err:
            found[name] = f"{type(err).__name__}: {err}"
    return found


def _model_case(rank: int, world: int, name: str) -> dict:
    """A tiny classifier (padding, non-causal) or LM (causal) in float64: this rank's logits and the parameter
    gradients summed over ranks against the whole sequence in one process."""
    from taylorshift.distributed import set_sequence_parallel, split_sequence
    from taylorshift.models import create_model

    torch.manual_seed(0)
    small = dict(depth=2, dim=16, num_heads=2, drop_path=0.0, temperature_init=2.0)
    if name == "classifier":
        model = create_model("listops_cpu", **small).double()
        ids = torch.randint(0, 17, (2, N))
        pad = torch.zeros(2, N, dtype=torch.bool)
        pad[1, N - 5 :] = True
    else:
        model = create_model("fortunes_lm", **small).double()
        ids, pad = torch.randint(0, 64, (2, N)), None
    call = (lambda m, x, p: m(x, key_padding_mask=p)) if name == "classifier" else (lambda m, x, p: m(x))
    ref = call(model, ids, pad)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (ref * g).sum().backward()
    ref_grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    set_sequence_parallel(model)
    lengths = [t.shape[1] for t in torch.tensor_split(ids, world, dim=1)]
    lo = sum(lengths[:rank])
    out = call(model, split_sequence(ids, rank, world), split_sequence(pad, rank, world))
    if name == "classifier":  # every rank has the logits of the whole sequence: each backpropagates its share
        err = float((out - ref).detach().abs().max())
        (out * g / world).sum().backward()
    else:
        err = float((out - ref[:, lo : lo + out.shape[1]]).detach().abs().max())
        (out * g[:, lo : lo + out.shape[1]]).sum().backward()
    for k, p in model.named_parameters():
        grad = torch.zeros_like(p) if p.grad is None else p.grad
        dist.all_reduce(grad)
        err = max(err, float((grad - ref_grads[k]).abs().max()))
    return {"err": err, "size": float(ref.abs().max()), "dtype": str(out.dtype)}


def _worker(rank: int, world: int, rendezvous: str, out_dir: str) -> None:
    _init(rank, world, rendezvous)
    results = {"errors": _errors(rank, world)}
    for name in ("classifier", "lm"):
        results[name] = _model_case(rank, world, name)
    for dtype in (torch.float64, torch.float32):
        for causal in (False, True):
            for masked in (False, True):
                kind = f"{'causal' if causal else 'full'}-{'mask' if masked else 'nomask'}"
                name = f"{str(dtype).removeprefix('torch.')}-{kind}"
                results[name] = _compare(rank, world, dtype, causal, masked, seed=zlib.crc32(name.encode()) % 1000)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def run_spawned(fn, world: int, tmp_path: Path, *args) -> list[dict]:
    """Run ``fn(rank, world, rendezvous_file, out_dir, *args)`` in ``world`` spawned processes; their
    ``rank{r}.json``."""
    out = tmp_path / f"w{world}"
    out.mkdir()
    mp.spawn(fn, args=(world, str(tmp_path / f"rdv{world}"), str(out), *args), nprocs=world, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.fixture(scope="module", params=[2, 3], ids=["2ranks", "3ranks"])
def results(request, tmp_path_factory) -> list[dict]:
    return run_spawned(_worker, request.param, tmp_path_factory.mktemp("sp"))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("causal", ["full", "causal"])
@pytest.mark.parametrize("masked", ["nomask", "mask"])
def test_matches_single_process(results, dtype, causal, masked):
    tol = TOL[getattr(torch, dtype)]
    for rank, r in enumerate(results):
        case = r[f"{dtype}-{causal}-{masked}"]
        assert case["dtype"] == f"torch.{dtype}"
        assert case["size"] > 0.1  # the comparison is not vacuous
        assert case["err"] <= tol * max(1.0, case["size"]), (rank, case)


@pytest.mark.parametrize("name", ["classifier", "lm"])
def test_models_match_single_process(results, name):
    """Logits and every parameter's gradient (summed over ranks) of a 2-block model equal the whole sequence's."""
    for rank, r in enumerate(results):
        assert r[name]["size"] > 0.1
        assert r[name]["err"] <= 1e-10 * max(1.0, r[name]["size"]), (rank, r[name])


def test_bad_shards_raise_on_every_rank(results):
    needles = {
        "batch": ["batch (1, 3)", "batch (2, 3)"],
        "heads": ["batch (2, 2)"],
        "mask": ["rejected their inputs", "key-padding masks"],
        "causal_lengths": ["L == S", "L=4, S=3"],
    }
    world = len(results)
    for rank, r in enumerate(results):
        for name, message in r["errors"].items():
            assert message is not None and message.startswith("ValueError"), (rank, name, message)
            wanted = needles[name]
            if name == "mask":  # the rejecting rank names its own problem, the others point to it
                wanted = wanted[1:] if rank == world - 1 else wanted[:1]
            assert all(w in message for w in wanted), (rank, name, message)


def test_without_initialised_process_group_raises():
    assert not dist.is_initialized()
    q = torch.randn(1, 4, 3)
    with pytest.raises(ValueError, match=r"group: torch.distributed has no initialised.*init_process_group"):
        sequence_parallel_attention(q, q, q)


def test_bad_group_type(monkeypatch):
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    q = torch.randn(1, 4, 3)
    with pytest.raises(TypeError, match="group must be a torch.distributed.ProcessGroup"):
        sequence_parallel_attention(q, q, q, group="world")


# ------------------------------------------------------------------------------------------------ trainer
def _train_worker(rank: int, world: int, rendezvous: str, out_dir: str, ports: list, configs: list) -> None:
    """One process of ``taylorshift train`` as torchrun starts it (environment variables, env:// rendezvous),
    for each config in turn."""
    from taylorshift.train import TrainConfig, train

    for port, config in zip(ports, configs, strict=True):
        os.environ.update(
            RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
        )
        train(TrainConfig(**config))
    Path(out_dir, f"rank{rank}.json").write_text("{}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """A tiny cache: ListOps 48/8/8 expressions of 20-60 tokens (padded batches) and fortunes-lm from a small
    corpus written here."""
    from taylorshift.data import get_task

    root = tmp_path_factory.mktemp("data")
    get_task("listops").prepare(root, size=48, val_size=8, test_size=8, min_length=20, max_length=60)
    corpus = root / "corpus"
    corpus.mkdir()
    entries = [f"Fortune {i}: {'ab' * (i % 9)} and that is all.\n".encode() for i in range(200)]
    (corpus / "topic").write_bytes(b"%\n".join(entries))
    get_task("fortunes-lm").prepare(root, source=corpus)
    return str(root)


SMALL = {"depth": 2, "dim": 32, "num_heads": 2, "head_dim": 16, "drop_path": 0.0}


def _train_config(data_dir: str, out: Path, task: str = "listops", **kw) -> dict:
    base = dict(
        task=task,
        cache_dir=data_dir,
        out_dir=str(out),
        max_steps=5,
        batch_size=3,
        warmup_steps=1,
        lr=3e-3,
        log_every=1,
        eval_samples=8,
        threads=1,
        progress=False,
        model_overrides=SMALL,
    )
    if task == "fortunes-lm":  # odd length: unequal shards; fixed windows (no random offsets)
        base.update(model_overrides=SMALL | {"max_len": 64}, data_options={"seq_len": 31, "random_offset": False})
    return base | kw


def test_trainer_sequence_parallel_matches_one_process(data_dir, tmp_path):
    """``--sequence-parallel 2`` on 2 processes (every example's sequence split in two: a classifier with padded
    batches, an LM on 31 tokens) follows the loss curve of one process: 5 steps of AdamW within 1e-4 relative
    (float32 summation order). The odd batch size could not be split by data parallelism, so the run is sequence
    parallel."""
    from taylorshift.train import TrainConfig, train
    from taylorshift.train.metrics import read_metrics

    tasks = ("listops", "fortunes-lm")
    for task in tasks:
        train(TrainConfig(**_train_config(data_dir, tmp_path / f"one-{task}", task)))
    configs = [_train_config(data_dir, tmp_path / f"two-{task}", task, sequence_parallel=2) for task in tasks]
    run_spawned(_train_worker, 2, tmp_path, [_free_port() for _ in tasks], configs)
    for task in tasks:
        rows = [
            [r for r in read_metrics(tmp_path / f"{run}-{task}" / "metrics.csv") if r["split"] == "train"]
            for run in ("one", "two")
        ]
        assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] == [str(s) for s in range(1, 6)], task
        losses = [[float(r["loss"]) for r in run] for run in rows]
        assert losses[0][0] != losses[0][-1]  # it trains
        assert losses[1] == pytest.approx(losses[0], rel=1e-4), task
        accuracy = [[float(r["accuracy"]) for r in run] for run in rows]
        assert accuracy[1] == pytest.approx(accuracy[0], abs=1e-6), task
        summary = json.loads((tmp_path / f"two-{task}" / "summary.json").read_text())
        assert summary["world_size"] == 2 and summary["val"]["count"] > 0


def test_trainer_sequence_parallel_errors(data_dir, tmp_path):
    from taylorshift.train import TrainConfig, Trainer
    from taylorshift.train.config import ConfigError

    with pytest.raises(ValueError, match=r"sequence_parallel=2 needs 2 or a multiple of 2 processes.*torchrun"):
        Trainer(TrainConfig(**_train_config(data_dir, tmp_path / "a", sequence_parallel=2)))
    with pytest.raises(ConfigError, match="sequence_parallel must be an int >= 1"):
        TrainConfig(**_train_config(data_dir, tmp_path / "b", sequence_parallel=0))


@pytest.mark.slow
def test_trainer_sequence_and_data_parallel(data_dir, tmp_path):
    """4 processes as 2 data-parallel groups of 2 sequence-parallel ranks (global batch 4 = 2 groups x 2 examples)
    follow the loss curve of one process within 1e-4 relative."""
    from taylorshift.train import TrainConfig, train
    from taylorshift.train.metrics import read_metrics

    train(TrainConfig(**_train_config(data_dir, tmp_path / "one", batch_size=4)))
    config = _train_config(data_dir, tmp_path / "four", batch_size=4, sequence_parallel=2)
    run_spawned(_train_worker, 4, tmp_path, [_free_port()], [config])
    losses = [
        [float(r["loss"]) for r in read_metrics(tmp_path / run / "metrics.csv") if r["split"] == "train"]
        for run in ("one", "four")
    ]
    assert len(losses[0]) == 5 and losses[1] == pytest.approx(losses[0], rel=1e-4)
