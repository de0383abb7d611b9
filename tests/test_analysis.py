"""The analytic cost model (taylorshift.analysis): paper values, crossover algebra, errors, purity, CLI, docs."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from taylorshift.analysis import (
    BACKENDS,
    BACKWARD_FACTOR,
    FORMS,
    MODES,
    cost_ratio,
    crossover,
    crossover_exact,
    flop_terms,
    flops,
    flops_direct,
    flops_efficient,
    head_split,
    matmul_flops,
    memory_bytes,
    memory_entries,
    memory_terms,
    multihead_table,
    num_features,
    second_order_features,
)
from taylorshift.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "complexity.md"

# --------------------------------------------------------------------------------------------------------
# the paper's model, reproduced exactly


@pytest.mark.parametrize(("d", "speed", "memory"), [(16, 273, 158), (32, 1057, 574), (64, 4161, 2174)])
def test_paper_crossover_values(d, speed, memory):
    assert crossover(d) == crossover(d, "speed") == speed
    assert crossover(d, "memory") == memory


@pytest.mark.parametrize("d", [1, 2, 3, 8, 16, 17, 64, 100, 128, 1000])
def test_speed_crossover_is_d2_plus_d_plus_1(d):
    assert crossover_exact(d) == float(d * d + d + 1)


@pytest.mark.parametrize("d", [1, 4, 16, 32, 64, 128, 512])
def test_memory_crossover_solves_paper_equation(d):
    n0 = crossover_exact(d, "memory")
    lhs, rhs = 2 * n0 * n0, (d + 1) ** 2 * n0 + d * d * (d + 1)
    assert n0 > 0
    assert abs(lhs - rhs) <= 1e-9 * rhs
    # the closed form of the positive root
    b = (d + 1) ** 2
    assert n0 == pytest.approx((b + math.sqrt(b * b + 8 * d * d * (d + 1))) / 4, rel=1e-14)


@pytest.mark.parametrize(("N", "d"), [(1, 1), (7, 3), (100, 16), (4096, 64), (513, 128)])
def test_paper_flop_polynomials(N, d):
    assert flops("direct", N, N, d) == N * N * (4 * d + 6)
    assert flops("efficient", N, N, d) == N * (4 * d**3 + 10 * d**2 + 10 * d + 6)
    assert flops("softmax", N, N, d) == N * N * (4 * d + 5)
    # the names kept from the first version agree with the general function
    assert flops_direct(N, N, d) == flops("direct", N, N, d)
    assert flops_efficient(N, N, d) == flops("efficient", N, N, d)


@pytest.mark.parametrize(("L", "S", "d", "dv"), [(5, 9, 4, 7), (300, 20, 16, 8), (1, 1000, 32, 64)])
def test_general_shapes_flops_written_out(L, S, d, dv):
    """L ≠ S and dv ≠ d, each formula written out independently of the term table."""
    assert flops_direct(L, S, d, dv) == L * S * (2 * d + 2 * dv + 6)
    f2 = d * d
    expected = (S + L) * f2 + 2 * (S + L) * (f2 + d) * (dv + 1) + (S + 5 * L) * (dv + 1)
    assert flops_efficient(L, S, d, dv) == expected
    assert flops("softmax", L, S, d, dv) == L * S * (2 * d + 2 * dv + 5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", FORMS)
def test_terms_sum_and_kinds(backend, form):
    terms = flop_terms(backend, 33, 47, 16, 8, form=form)
    assert sum(t.value for t in terms) == flops(backend, 33, 47, 16, 8, form=form)
    assert {t.kind for t in terms} == {"matmul", "elementwise"}
    assert all(t.value > 0 for t in terms)


def test_paper_memory_model():
    for d, N in itertools.product([1, 8, 16, 64], [1, 10, 1000, 4096]):
        assert memory_entries("direct", N, N, d) == 2 * N * N
        assert memory_entries("softmax", N, N, d) == 2 * N * N
        assert memory_entries("efficient", N, N, d) == (d + 1) ** 2 * N + d * d * (d + 1)
        # training: stored tensors plus the gradients of the busiest backward step
        assert memory_entries("direct", N, N, d, mode="train") == 3 * N * N
        assert memory_entries("softmax", N, N, d, mode="train") == 3 * N * N
        assert memory_entries("efficient", N, N, d, mode="train") == N * (3 * d * d + 3 * d + 2) + 2 * d * d * (d + 1)


def test_memory_terms_and_bytes():
    terms = memory_terms("efficient", 100, 100, 16, mode="train")
    assert sum(t.value for t in terms) == memory_entries("efficient", 100, 100, 16, mode="train")
    assert {t.kind for t in terms} == {"activation", "gradient"}
    assert {t.kind for t in memory_terms("efficient", 100, 100, 16)} == {"activation"}
    assert memory_bytes("direct", 1024, 1024, 64) == 4 * 2 * 1024 * 1024
    assert memory_bytes("direct", 1024, 1024, 64, bytes_per_entry=2) == 2 * 2 * 1024 * 1024


def test_efficient_memory_peak_phase_for_cross_attention():
    """Few queries, many keys: the key phase (K⊠K, V', state) is the peak, not the query phase."""
    L, S, d, dv = 4, 10_000, 16, 16
    assert memory_entries("efficient", L, S, d, dv) == S * d * d + S * (dv + 1) + d * d * (dv + 1)
    names = {t.name for t in memory_terms("efficient", L, S, d, dv)}
    assert "key features K⊠K" in names and "query features Q⊠Q" not in names


# --------------------------------------------------------------------------------------------------------
# symmetric form, training mode, other baselines


@pytest.mark.parametrize("d", [1, 2, 5, 16, 33, 64])
def test_symmetric_feature_count(d):
    distinct = {tuple(sorted(pair)) for pair in itertools.product(range(d), repeat=2)}
    assert second_order_features(d, "symmetric") == len(distinct) == d * (d + 1) // 2
    assert second_order_features(d, "full") == d * d
    assert num_features(d, "symmetric") == (d + 1) * (d + 2) // 2
    assert num_features(d) == d * d + d + 1


def test_symmetric_values():
    assert num_features(16, "symmetric") == 153  # fla's TaylorFeatureMap size for d = 16
    assert crossover(16, form="symmetric") == 153
    for d in (16, 32, 64):
        assert crossover_exact(d, form="symmetric") < crossover_exact(d)
        assert crossover_exact(d, "memory", form="symmetric") < crossover_exact(d, "memory")


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("d", [4, 16, 64])
def test_speed_crossover_is_feature_count(form, mode, d):
    """With dv = d both costs share the factor (4d + 6): N0 = F for every form and mode."""
    assert crossover_exact(d, form=form, mode=mode) == float(num_features(d, form))


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_flops_are_three_times_forward(backend):
    assert BACKWARD_FACTOR == 2
    for form in FORMS:
        fwd = flops(backend, 40, 60, 16, 24, form=form)
        assert flops(backend, 40, 60, 16, 24, form=form, mode="train") == 3 * fwd
        # direct's backward recomputes QKᵀ; its completed square's extra columns (4LS forward, 2LS backward) are
        # not tripled
        recompute = 2 * 40 * 60 * 16 - 6 * 40 * 60 if backend == "direct" else 0
        assert matmul_flops(backend, 40, 60, 16, 24, form=form, mode="train") == 3 * matmul_flops(
            backend, 40, 60, 16, 24, form=form
        ) + recompute


def test_train_memory_crossover_closed_form():
    for d in (8, 16, 64):
        n0 = crossover_exact(d, "memory", mode="train")
        assert 3 * n0 * n0 == pytest.approx(n0 * (3 * d * d + 3 * d + 2) + 2 * d * d * (d + 1), rel=1e-12)
        assert n0 > crossover_exact(d, "memory")  # storing both feature maps delays the memory win


@pytest.mark.parametrize("criterion", ["speed", "memory"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("baseline", ["direct", "softmax"])
@pytest.mark.parametrize(("d", "dv"), [(8, None), (16, None), (16, 8), (32, 64)])
def test_crossover_separates_the_two_regimes(criterion, form, mode, baseline, d, dv):
    """Below N0 the baseline is cheaper, above it efficient; at an integer N0 they are equal."""
    model = flops if criterion == "speed" else memory_entries
    n0 = crossover_exact(d, criterion, form=form, mode=mode, dv=dv, baseline=baseline)

    def diff(N):
        return model(baseline, N, N, d, dv, form=form, mode=mode) - model(
            "efficient", N, N, d, dv, form=form, mode=mode
        )

    above = math.floor(n0) + 1
    assert diff(above) > 0
    below = math.ceil(n0) - 1
    if below >= 1:
        assert diff(below) < 0
    if n0 == int(n0):
        assert diff(int(n0)) == 0


def test_softmax_baseline_crossover():
    # softmax costs N²(4d + 5), one FLOP per entry less than direct TaylorShift: N0 = (4d + 6)F / (4d + 5)
    for d in (16, 64):
        assert crossover_exact(d, baseline="softmax") == pytest.approx((4 * d + 6) * (d * d + d + 1) / (4 * d + 5))


def test_cost_ratio():
    for d in (16, 32, 64):
        n0 = crossover_exact(d)
        assert cost_ratio(4096, d) == pytest.approx(n0 / 4096, rel=1e-14)
    assert cost_ratio(10_000, 16, "memory") < 1 < cost_ratio(100, 16, "memory")
    expected = memory_entries("efficient", 4096, 4096, 16) / memory_entries("direct", 4096, 4096, 16)
    assert cost_ratio(4096, 16, "memory") == expected


# --------------------------------------------------------------------------------------------------------
# multi-head view


def test_multihead_scaling():
    D, N = 768, 4096
    rows = multihead_table(D, [6, 12, 24, 48], n=N)
    assert [r.d for r in rows] == [128, 64, 32, 16]
    for r in rows:
        assert r.width == D and r.heads * r.d == D
        assert r.n0_speed == (D / r.heads) ** 2 + D / r.heads + 1
        assert r.flops_direct == N * N * (4 * D + 6 * r.heads)
        assert r.flops_efficient == r.heads * flops("efficient", N, N, r.d)
        assert r.memory_direct == 2 * r.heads * N * N
        assert r.memory_efficient == r.heads * memory_entries("efficient", N, N, r.d)
        assert r.flop_ratio == pytest.approx(r.n0_speed / N)
    # doubling the heads roughly quarters N0 (it falls like (D/h)²)
    for coarse, fine in itertools.pairwise(rows):
        assert 3.5 < coarse.n0_speed / fine.n0_speed < 4.0
        assert 3.0 < coarse.n0_memory / fine.n0_memory < 4.0


def test_head_split_per_layer_is_heads_times_per_head():
    one, eight = head_split(32, 1, n=1000, mode="train"), head_split(32, 8, n=1000, mode="train")
    assert eight.flops_efficient == 8 * one.flops_efficient
    assert eight.memory_direct == 8 * one.memory_direct
    assert eight.n0_speed == one.n0_speed and eight.n0_memory == one.n0_memory
    assert eight.flop_ratio == one.flop_ratio


# --------------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: crossover(16.0), TypeError, "d must be an int"),
        (lambda: crossover(True), TypeError, "d must be an int"),
        (lambda: crossover(0), ValueError, "d must be >= 1"),
        (lambda: crossover(16, "time"), ValueError, "criterion"),
        (lambda: crossover(16, form="half"), ValueError, "form"),
        (lambda: crossover(16, mode="backward"), ValueError, "mode"),
        (lambda: crossover(16, baseline="efficient"), ValueError, "baseline"),
        (lambda: crossover(16, dv=0), ValueError, "dv must be >= 1"),
        (lambda: flops("flash", 1, 1, 1), ValueError, "backend"),
        (lambda: flops("direct", 0, 1, 1), ValueError, "L must be >= 1"),
        (lambda: flops("direct", 1, "2", 1), TypeError, "S must be an int"),
        (lambda: flops("direct", 1, 1, 1, mode="eval"), ValueError, "mode"),
        (lambda: matmul_flops("efficient", 1, 1, 1, form="tri"), ValueError, "form"),
        (lambda: memory_entries("direct", 1, 1, -3), ValueError, "d must be >= 1"),
        (lambda: memory_bytes("direct", 1, 1, 1, bytes_per_entry=0), ValueError, "bytes_per_entry"),
        (lambda: cost_ratio(0, 16), ValueError, "N must be >= 1"),
        (lambda: cost_ratio(100, 16, "flops"), ValueError, "criterion"),
        (lambda: multihead_table(512, [3]), ValueError, "heads: 3 does not divide width 512"),
        (lambda: multihead_table(512, []), ValueError, "heads must not be empty"),
        (lambda: multihead_table(512, 8), TypeError, "heads must be a tuple or list"),
        (lambda: multihead_table(512, [2.0]), TypeError, "heads must be an int"),
        (lambda: head_split(16, 0), ValueError, "heads must be >= 1"),
        (lambda: second_order_features(16, "diag"), ValueError, "form"),
    ],
)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# --------------------------------------------------------------------------------------------------------
# purity: no torch


def test_analysis_imports_and_runs_without_torch():
    """Import the real package, its analysis and the ``taylorshift crossover`` command in a fresh
    interpreter where importing torch fails."""
    code = textwrap.dedent(
        """
        import argparse, sys

        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
                return None

        sys.meta_path.insert(0, BlockTorch())

        import taylorshift
        import taylorshift.analysis as A
        from taylorshift.analysis import cli
        from taylorshift.cli import main

        assert taylorshift.analysis is A
        assert main(["crossover", "--head-dims", "32"]) == 0

        assert A.crossover(64) == 4161 and A.crossover(64, "memory") == 2174
        parser = argparse.ArgumentParser()
        cli.add_arguments(parser)
        assert cli.run(parser.parse_args(["--head-dims", "16", "--mode", "train"])) == 0
        try:
            import torch  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("the torch blocker did not work")
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch was imported"
        print("PURE-OK")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "PURE-OK" in proc.stdout
    assert "273" in proc.stdout  # the CLI table was printed


# --------------------------------------------------------------------------------------------------------
# CLI


def test_cli_default_table_shows_what_auto_uses(capsys):
    """One cost model: the table's N0 auto is where backend="auto" switches (the implemented symmetric form),
    with the paper's full-form figure beside it."""
    from taylorshift.analysis import auto_crossover

    assert main(["crossover"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("form")).split("  ")
    header = [h.strip() for h in header if h.strip()]
    assert header[4:8] == ["N0 auto", "N0 auto causal", "N0 paper", "N0 memory"]
    for d, auto, paper, memory in [(16, 153, 273, 96), (32, 561, 1057, 323), (64, 2145, 4161, 1163)]:
        row = next(line for line in lines if line.split()[:2] == ["symmetric", str(d)])
        cells = row.split()
        assert cells[4:8] == [str(auto), str(round(auto_crossover(d, causal=True))), str(paper), str(memory)]
        assert float(cells[8]) == pytest.approx(cost_ratio(4096, d, form="symmetric"), rel=1e-3)
        assert float(cells[9]) == pytest.approx(cost_ratio(4096, d, "memory", form="symmetric"), rel=1e-3)
    assert "N = 4096" in out


def test_cli_json_matches_model(capsys):
    argv = ["crossover", "--head-dims", "16", "64", "--heads", "1", "4", "--n", "1000", "--form", "both", "--json"]
    assert main([*argv, "--mode", "train"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["mode"] == "train" and data["n"] == 1000
    rows = data["rows"]
    assert len(rows) == 2 * 2 * 2
    for row in rows:
        d, form = row["d"], row["form"]
        assert row["n0_speed"] == crossover(d, form=form, mode="train")
        assert row["n0_memory"] == crossover(d, "memory", form=form, mode="train")
        assert row["flop_ratio"] == pytest.approx(cost_ratio(1000, d, form=form, mode="train"))
        assert row["memory_efficient"] == row["heads"] * memory_entries(
            "efficient", 1000, 1000, d, form=form, mode="train"
        )
    assert {(r["form"], r["d"]) for r in rows if r["n0_speed"] == 153} == {("symmetric", 16)}


def test_cli_width_split(capsys):
    assert main(["crossover", "--width", "512", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["d"], r["heads"]) for r in rows] == [(16, 32), (32, 16), (64, 8), (128, 4)]
    assert main(["crossover", "--width", "768", "--heads", "12", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert (row["d"], row["heads"], row["n0_speed"], row["n0_paper"], row["n0_auto"]) == (64, 12, 2145, 4161, 2145)


def test_cli_errors(capsys):
    assert main(["crossover", "--width", "100", "--heads", "3"]) == 2
    assert "do not divide --width 100" in capsys.readouterr().err
    assert main(["crossover", "--head-dims", "0"]) == 2
    assert "argument --head-dims" in capsys.readouterr().err
    assert main(["crossover", "--form", "half"]) == 2
    assert "argument --form" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------
# the numbers in docs/complexity.md


def crossover_doc_row(d: int) -> str:
    """One row of the per-head table in docs/complexity.md."""
    cells = [
        d,
        num_features(d),
        crossover(d),
        crossover(d, "memory"),
        num_features(d, "symmetric"),
        crossover(d, form="symmetric"),
        crossover(d, "memory", form="symmetric"),
        crossover(d, "memory", mode="train"),
        crossover(d, "memory", form="symmetric", mode="train"),
        crossover(d, baseline="softmax"),
    ]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def multihead_doc_row(r) -> str:
    """One row of the multi-head table in docs/complexity.md."""
    cells = [
        r.heads,
        r.d,
        round(r.n0_speed),
        round(r.n0_memory),
        f"{r.flops_direct / 1e9:.1f}",
        f"{r.flops_efficient / 1e9:.1f}",
        f"{r.flop_ratio:.3f}",
        f"{r.memory_direct / 1e6:.0f}",
        f"{r.memory_efficient / 1e6:.0f}",
        f"{r.memory_ratio:.3f}",
    ]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def test_doc_tables_match_the_model():
    text = DOC.read_text(encoding="utf-8")
    for d in (8, 16, 32, 64, 128):
        assert crossover_doc_row(d) in text, crossover_doc_row(d)
    for r in multihead_table(768, [6, 12, 24, 48], n=4096):
        assert multihead_doc_row(r) in text, multihead_doc_row(r)


# --------------------------------------------------------------------------------------------------------
# one cost model for the dispatcher and the command


@pytest.mark.parametrize("d", [4, 8, 16])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_auto_switches_where_the_analysis_says(d, causal):
    """``resolve_backend`` flips exactly at :func:`auto_crossover` (per head, one sequence, L = S = N)."""
    import torch

    from taylorshift import resolve_backend
    from taylorshift.analysis import auto_crossover

    n0 = auto_crossover(d, causal=causal)
    if not causal:
        assert n0 == num_features(d, "symmetric")
    below, above = math.floor(n0), math.floor(n0) + 1
    for n, expected in ((below, "direct"), (above, "efficient")):
        q = torch.zeros(1, 1, n, d)
        assert resolve_backend(q, q, q, is_causal=causal) == expected, (n, n0)


def test_the_causal_cost_model_lives_in_analysis():
    from taylorshift.analysis import auto_costs, causal_pairs, default_causal_chunk_size
    from taylorshift.ops import dispatch, efficient

    assert causal_pairs(5, 5) == 15 and causal_pairs(7, 3) == 6 + 4 * 3 and causal_pairs(3, 7) == 6
    d, n = 16, 1000
    chunk = default_causal_chunk_size(1, d, d)
    direct, eff = auto_costs(n, n, d, causal=True, batch=1)
    per_pair = flops_direct(1, 1, d)
    assert direct == per_pair * causal_pairs(n, n)
    assert eff == flops_efficient(n, n, d, form="symmetric") + per_pair * n * chunk
    assert auto_costs(n, n, d) == (flops_direct(n, n, d), flops_efficient(n, n, d, form="symmetric"))
    assert efficient.default_chunk_size is __import__("taylorshift.analysis", fromlist=["x"]).default_chunk_size
    assert not hasattr(dispatch, "_visible_pairs")
