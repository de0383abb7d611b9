"""Can a model learn a Pathfinder variant on this machine? A short probe, kept as evidence.

Generates a seeded Pathfinder variant in memory (``taylorshift.data.pathfinder``; train ``--train-size`` examples
from index 0, validation 2,000 from the next index), trains one model and writes the validation accuracy every
``--eval-every`` steps as a probe file (``docs/results/probes/<name>.csv``: a ``#`` line saying what ran, then
``step,split,loss,accuracy`` rows), which ``benchmarks/lra_report.py`` lists under "Probes".

Models:

* ``taylorshift`` / ``softmax``: the library's sequence classifier (preset ``pathfinder_cpu``: D = 64, 2 blocks,
  4 heads of 16) on grey-level tokens (``--patch 0``, 256 tokens for 16×16) or on ``p×p`` patches of grey values
  in [0, 1] as float features (``--patch p``: ``(16/p)²`` tokens of ``p²`` values), with 2-D positions for both;
  ``--set key=value`` overrides preset fields (``depth=4``, ``layer_scale_init=null``, ...).
* ``mlp``: a two-hidden-layer MLP (512 units) on the flattened grey values in [0, 1]: no attention, a
  reference for what the data allows in the same number of steps.

Training: AdamW (lr ``--lr``, weight decay 0.05), batch 32, linear warm-up over a tenth of the steps (at most
100) then cosine, label smoothing 0.1, gradient clipping at 1, one thread.

Self-pretraining (``--pretrain-steps K``, patches only): before the classification steps, the encoder first learns
to fill in masked patches of the *training images* (no labels): a fraction ``--mask-ratio`` of the patches is
replaced by the value -1 and a linear head on every token's output predicts the patch's grey values (mean squared
error on the masked patches), with its own warm-up and cosine schedule; the reconstruction head is then dropped and
classification training starts from the pretrained encoder, as above. Pretraining on the task's own data is the
remedy Amos, Berant and Gupta ("Never Train from Scratch", ICLR 2024) report for transformers on LRA; it is used
here because it gives the attention a reason to relate neighbouring patches before any label is seen.

    python benchmarks/pathfinder_probe.py --contour-length 2 --model mlp --steps 1000 --name pf_L2_mlp
    python benchmarks/pathfinder_probe.py --contour-length 4 --model taylorshift --patch 2 --steps 15000 \\
        --set embed_std=1.0 --set layer_scale_init=0.1 --set temperature_init=4.0 --name pf_L4_p2_ts
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from taylorshift.data.pathfinder import PathfinderConfig, generate_pathfinder  # noqa: E402
from taylorshift.files import atomic_open  # noqa: E402
from taylorshift.models.registry import create_model  # noqa: E402

MODELS = ("taylorshift", "softmax", "mlp")


def tokens(images, patch: int) -> torch.Tensor:
    """``uint8 (B, S, S)`` images → grey-level ids ``(B, S²)`` (``patch`` 0) or float patches
    ``(B, (S/patch)², patch²)`` in [0, 1], row-major."""
    x = torch.as_tensor(images)
    if not patch:
        return x.flatten(1).long()
    B, S = x.shape[0], x.shape[1]
    g = S // patch
    return (x.float() / 255).reshape(B, g, patch, g, patch).permute(0, 1, 3, 2, 4).reshape(B, g * g, patch * patch)


def build(model: str, size: int, patch: int, overrides: dict) -> nn.Module:
    if model == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(size * size, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                             nn.Linear(512, 2))
    grid = size // patch if patch else size
    extra = {"max_len": grid * grid, "pos_grid_width": grid, **overrides}
    if patch:
        extra["input_dim"] = patch * patch
    return create_model("pathfinder_cpu", attention=model, **extra)


def token_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The classifier's normalised outputs at every patch token ``(B, N, D)`` (the CLS token is run but dropped)."""
    h = model.pos(model.embed(x))
    h = torch.cat([model.cls_token.expand(len(h), -1, -1), h], dim=1)
    for block in model.blocks:
        h = block(h)
    return model.norm(h[:, 1:])


def cosine_factor(steps: int):
    """Linear warm-up over a tenth of ``steps`` (at most 100), then cosine to 0: a LambdaLR factor."""
    warm = max(1, min(100, steps // 10))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    return factor


def pretrain(model: nn.Module, xt: torch.Tensor, steps: int, lr: float, mask_ratio: float, seed: int, log) -> None:
    """Masked-patch reconstruction on the float patches ``xt (n, N, p²)`` (see the module docstring)."""
    head = nn.Linear(model.config.dim, xt.shape[-1])
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_factor(steps))
    g = torch.Generator().manual_seed(10_000 + seed)
    running = None
    for step in range(1, steps + 1):
        x = xt[torch.randint(len(xt), (32,), generator=g)]
        mask = torch.rand(x.shape[:2], generator=g) < mask_ratio  # (32, N)
        pred = head(token_features(model, x.masked_fill(mask[..., None], -1.0)))
        loss = F.mse_loss(pred[mask], x[mask])
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 250 == 0 or step == steps:
            log(step, running)


def parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set takes key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contour-length", type=int, default=4, help="paddles per path (pathfinder16: 4)")
    p.add_argument("--distractors", type=int, default=0, help="distractor paths (pathfinder16_easy: 0)")
    p.add_argument("--size", type=int, default=16, help="image side")
    p.add_argument("--model", choices=MODELS, default="taylorshift")
    p.add_argument("--patch", type=int, default=0, help="0: grey-level tokens; p: p×p float patches")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train-size", type=int, default=20000)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0, help="weights and batch order (the data seed is 0)")
    p.add_argument("--pretrain-steps", type=int, default=0,
                   help="masked-patch reconstruction steps on the training images before classification (--patch > 0)")
    p.add_argument("--mask-ratio", type=float, default=0.3, help="fraction of patches masked in pretraining")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model preset overrides")
    p.add_argument("--name", required=True, help="probe name: writes <out>/<name>.csv")
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "probes"))
    args = p.parse_args(argv)
    if args.patch < 0 or (args.patch and args.size % args.patch):
        p.error(f"--patch must be 0 or a positive divisor of --size {args.size}, got {args.patch}")
    if args.steps < 1 or args.eval_every < 1 or args.train_size < 1:
        p.error("--steps, --eval-every and --train-size must be positive")
    if args.pretrain_steps < 0 or (args.pretrain_steps and (not args.patch or args.model == "mlp")):
        p.error("--pretrain-steps must be >= 0 and needs --patch > 0 and an attention model")
    if not 0 < args.mask_ratio < 1:
        p.error(f"--mask-ratio must lie in (0, 1), got {args.mask_ratio}")
    torch.set_num_threads(1)
    overrides = parse_sets(args.set)
    try:
        cfg = PathfinderConfig(contour_length=args.contour_length, size=args.size, n_distractors=args.distractors)
    except ValueError as e:
        p.error(str(e))
    xt, yt = generate_pathfinder(args.train_size, 0, cfg, start=0)
    xv, yv = generate_pathfinder(2000, 0, cfg, start=args.train_size)
    patch = args.patch if args.model != "mlp" else 1
    xt, xv = tokens(xt, patch), tokens(xv, patch)
    yt, yv = torch.as_tensor(yt).long(), torch.as_tensor(yv).long()
    torch.manual_seed(args.seed)
    model = build(args.model, args.size, args.patch, overrides)
    rows = ["step,split,loss,accuracy"]
    if args.pretrain_steps:
        t0 = time.time()

        def log(step: int, loss: float) -> None:
            rows.append(f"{step},pretrain,{loss:.6f},")
            print(f"{args.name} pretrain step {step}: masked-patch loss {loss:.5f} ({time.time() - t0:.0f} s)",
                  flush=True)

        pretrain(model, xt, args.pretrain_steps, args.lr, args.mask_ratio, args.seed, log)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_factor(args.steps))
    inputs = "grey-level tokens" if not args.patch else f"{args.patch}x{args.patch} patches"
    about = (f"Pathfinder {args.size}x{args.size}, {args.contour_length}-paddle paths, {args.distractors} distractor "
             f"path(s), {args.train_size:,} train; model {args.model}"
             + ("" if args.model == "mlp" else f", {inputs}, 2-D positions")
             + (f", {' '.join(args.set)}" if args.set else "")
             + (f"; {args.pretrain_steps:,} masked-patch pretraining steps (mask {args.mask_ratio:g})"
                if args.pretrain_steps else "")
             + f"; {args.steps:,} steps, batch 32, lr {args.lr:g}, seed {args.seed}; "
             + time.strftime("%Y-%m-%d", time.gmtime())
             + " (benchmarks/pathfinder_probe.py)")
    out = Path(args.out) / f"{args.name}.csv"
    g = torch.Generator().manual_seed(args.seed)
    perm, pos, t0 = torch.randperm(len(yt), generator=g), 0, time.time()
    for step in range(1, args.steps + 1):
        if pos + 32 > len(yt):
            perm, pos = torch.randperm(len(yt), generator=g), 0
        idx = perm[pos: pos + 32]
        pos += 32
        model.train()
        loss = F.cross_entropy(model(xt[idx]), yt[idx], label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                logits = torch.cat([model(xv[i: i + 500]) for i in range(0, len(yv), 500)])
            acc = (logits.argmax(1) == yv).float().mean().item()
            vloss = F.cross_entropy(logits, yv).item()
            rows.append(f"{step},val,{vloss:.6f},{acc:.4f}")
            out.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(out) as f:
                f.write(f"# {about}\n" + "\n".join(rows) + "\n")
            print(f"{args.name} step {step}: val loss {vloss:.4f} accuracy {acc:.4f} ({time.time() - t0:.0f} s)",
                  flush=True)
    print(f"wrote {os.path.relpath(out)}")


if __name__ == "__main__":
    main()
