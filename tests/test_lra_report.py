"""docs/results.md is rendered from summary.json and runs.json only: check the numbers and verdicts it prints on
synthetic run data (benchmarks/lra_report.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import lra_report  # noqa: E402


def _runs(ts, sm):
    return [{"attention": a, "seed": i, "steps": 2000, "test_accuracy": acc}
            for a, accs in (("taylorshift", ts), ("softmax", sm)) for i, acc in enumerate(accs)]


def _summary(tasks):
    recipes = {"paper": {}, "r": {"model_overrides.temperature_init": 4.0}}
    return {"tasks": tasks, "lm": [], "protocol": {"chosen_recipe": "r", "recipe": recipes["r"], "recipes": recipes,
                                                   "seeds": [0, 1, 2]}}


def _task(name, majority, ts, sm):
    return {"name": name, "stands_in_for": "X", "data": "d", "train_size": 1000, "test_size": 200,
            "majority_rate": majority, "runs": _runs(ts, sm)}


META = {"generated": "now", "commit": "abc", "torch": "t", "python": "p", "machine": "m"}


def test_report_numbers_and_generated_verdicts():
    summary = _summary([
        _task("learned", 17.6, [40.0, 41.0, 40.5], [40.2, 40.8, 40.6]),
        _task("flat", 50.0, [50.0, 51.0, 50.5], [50.0, 50.0, 50.0]),
        _task("half", 10.0, [60.0], [61.0]),
    ])
    text = lra_report.render_protocol_report(summary, [], META)
    row = next(line for line in text.splitlines() if line.startswith("| learned"))
    assert "| 40.50 ± 0.50 | 40.53 ± 0.31 |" in row and "| 17.6 |" in row and "1,000 / 200" in row
    # paired differences -0.2, +0.2, -0.1: mean -0.033, interval inside ±1 -> within 1 point
    assert "-0.03 [" in row and row.endswith("| within 1 point |")
    assert "| flat (X)" in text and "not learned (excluded)" in text
    assert "Not learned by both attentions (excluded from the verdict): flat." in text
    assert "half (1 seed pair(s) finished)" in text
    assert "**Over the 1 task(s) that learned, TaylorShift vs softmax: 1 within 1 point**" in text


def test_report_says_worse_and_better_when_the_interval_says_so():
    summary = _summary([
        _task("worse", 10.0, [30.0, 31.0, 30.5], [40.0, 41.0, 40.8]),
        _task("better", 10.0, [50.0, 51.0, 50.5], [40.0, 41.0, 40.8]),
    ])
    text = lra_report.render_protocol_report(summary, [], META)
    assert next(ln for ln in text.splitlines() if ln.startswith("| worse")).endswith("| worse |")
    assert next(ln for ln in text.splitlines() if ln.startswith("| better")).endswith("| better |")
    assert "TaylorShift vs softmax: 1 better, 1 worse**" in text


def test_sweep_table_shares_the_softmax_run_across_temperatures():
    records = [
        {"protocol": "sweep", "task": "t", "recipe": "paper", "attention": "softmax", "val_accuracy": 33.3,
         "steps": 100},
        {"protocol": "sweep", "task": "t", "recipe": "r", "attention": "taylorshift", "val_accuracy": 30.0,
         "steps": 100},
    ]
    text = lra_report.render_protocol_report(_summary([]), records, META)
    assert "| t | taylorshift | – | 30.0 (100) |" in text
    assert "| t | softmax | 33.3 (100) | 33.3 (100) |" in text


def test_lm_section_reads_bits_per_byte_lower_is_better():
    lm = [{"name": "fortunes-lm", "runs": [
        {"attention": a, "seed": i, "steps": 600, "test_bits_per_byte": v}
        for a, vals in (("taylorshift", [2.10, 2.12, 2.11]), ("softmax", [2.30, 2.31, 2.33]))
        for i, v in enumerate(vals)
    ]}]
    summary = _summary([])
    summary["lm"] = lm
    text = lra_report.render_protocol_report(summary, [], META)
    row = next(ln for ln in text.splitlines() if ln.startswith("| fortunes-lm"))
    assert "| 2.110 ± 0.010 | 2.313 ± 0.015 | -0.203 [" in row and row.endswith("| better |")


def test_lm_rows_per_step_count_and_a_longer_single_seed_run_survives_the_merge():
    """A longer run of seed 0 is kept beside the 3-seed shorter runs (steps are part of the record key) and gets its
    own row, with values and no interval."""
    def rec(a, seed, steps, v):
        return {**_record("fortunes-lm", a, seed, 0.0), "steps": steps, "test_bits_per_byte": v}

    old = [rec(a, s, 400, 3.78 + 0.001 * s) for a in ("taylorshift", "softmax") for s in range(3)]
    merged = lra_report.merge_records(old, [rec("taylorshift", 0, 1500, 3.55), rec("softmax", 0, 1500, 3.27)])
    assert len(merged) == 8
    lm = [{"name": "fortunes-lm", "baselines": {"unigram": 4.8, "bigram": 3.78},
           "runs": [{k: r[k] for k in ("attention", "seed", "steps", "test_bits_per_byte")} for r in merged]}]
    text = "\n".join(lra_report._lm_section(lm))
    row400 = next(ln for ln in text.splitlines() if "| 400 |" in ln)
    row1500 = next(ln for ln in text.splitlines() if "| 1,500 |" in ln)
    assert "| 3 |" in row400 and row400.endswith("| within 0.05 bits/byte |")
    assert "| 1 (seed 0) | 3.550 | 3.270 | +0.280 (one seed: no interval) | – |" in row1500
    assert "The best model's 3.270 lies 0.510 bits/byte below the bigram reference" in text


def test_cost_section_sums_the_recorded_cpu_time():
    records = [{"protocol": "matched", "task": "a", "steps": 100, "cpu_seconds": 1800.0},
               {"protocol": "matched", "task": "a", "steps": 100, "cpu_seconds": 1800.0},
               {"protocol": "embed", "task": "b", "steps": 50, "cpu_seconds": 7200.0},
               {"protocol": "sweep", "task": "c", "steps": 10}]  # no time recorded: not counted
    text = "\n".join(lra_report._cost_section(records))
    assert "| matched | a | 2 | 100 | 1.00 |" in text and "| embed | b | 1 | 50 | 2.00 |" in text
    assert "Total: 3 runs, 3.0 CPU hours, so about 1.5 hours of wall time" in text and "| c |" not in text
    assert lra_report._cost_section([{"protocol": "sweep", "task": "c", "steps": 10}]) == []


def test_embedding_section_pairs_conv_with_the_linear_matched_runs():
    def rec(protocol, seed, acc):
        return {"protocol": protocol, "task": "pixels", "attention": "taylorshift", "seed": seed, "steps": 100,
                "test_accuracy": acc, "recipe": "r"}

    records = [rec("matched", s, a) for s, a in enumerate([50.0, 51.0, 52.0])]
    records += [rec("embed", s, a) for s, a in enumerate([60.0, 61.5, 62.0])]
    text = lra_report.render_protocol_report(_summary([]), records, META)
    row = next(ln for ln in text.splitlines() if ln.startswith("| pixels | 100"))
    assert "| 51.00 ± 1.00 | 61.17 ± 1.04 | +10.17 [" in row and row.endswith("| better |")


def _record(task, attention, seed, acc, protocol="matched"):
    return {"protocol": protocol, "task": task, "recipe": "r", "attention": attention, "seed": seed,
            "steps": 100, "test_accuracy": acc, "test_bits_per_byte": 1.0, "data_options": {}, "test_count": 10}


def test_records_of_earlier_sessions_survive_a_merge():
    # run folders are lost between sessions: the committed records stay unless a folder re-produces the same run
    old = [_record("a", "taylorshift", 0, 30.0), _record("a", "softmax", 0, 31.0)]
    new = [_record("a", "softmax", 0, 35.0), _record("b", "softmax", 1, 50.0)]
    merged = lra_report.merge_records(old, new)
    by = {(r["task"], r["attention"], r["seed"]): r["test_accuracy"] for r in merged}
    assert by == {("a", "taylorshift", 0): 30.0, ("a", "softmax", 0): 35.0, ("b", "softmax", 1): 50.0}


def test_summary_takes_data_sizes_from_data_or_from_the_committed_summary():
    recipes = {"recipes": {"r": {}}, "chosen": "r", "seeds": [0]}
    records = [_record("a", "taylorshift", 0, 30.0), _record("b", "softmax", 0, 40.0),
               _record("fortunes-lm", "softmax", 0, 0.0)]

    def stats(task, data_options, test_count):
        if task == "b":
            raise FileNotFoundError("b not prepared")
        return {"train_size": 7, "test_size": test_count, "majority_rate": 12.5}

    def lm_stats(options):
        raise FileNotFoundError("no fortunes here")

    previous = {"tasks": [{"name": "b", "train_size": 70, "test_size": 20, "majority_rate": 50.0}],
                "lm": [{"name": "fortunes-lm", "baselines": {"unigram": 4.8, "bigram": 3.8}}]}
    summary = lra_report.build_summary(records, recipes, previous, stats=stats, lm_stats=lm_stats)
    tasks = {t["name"]: t for t in summary["tasks"]}
    assert (tasks["a"]["train_size"], tasks["a"]["test_size"], tasks["a"]["majority_rate"]) == (7, 10, 12.5)
    assert (tasks["b"]["train_size"], tasks["b"]["majority_rate"]) == (70, 50.0)
    assert summary["lm"] == [{"name": "fortunes-lm", "runs": [{"attention": "softmax", "seed": 0, "steps": 100,
                                                               "test_bits_per_byte": 1.0}],
                              "baselines": {"unigram": 4.8, "bigram": 3.8}}]  # from the committed summary
    with pytest.raises(SystemExit, match="not prepared"):
        lra_report.build_summary(records, recipes, {}, stats=stats)


def test_probe_files_are_read_from_their_rows(tmp_path):
    """A probe's numbers come from its validation rows (train rows ignored), and the section lists it."""
    folder = tmp_path / "probes"
    folder.mkdir()
    (folder / "pf_x_s0.csv").write_text(
        "# pf, TaylorShift, seed 0\n"
        "step,split,epoch,loss,accuracy,lr,samples,train_seconds,cpu_seconds,samples_per_second\n"
        "10,train,0.01,0.69,0.90,0.001,320,1,1,1\n"
        "250,val,0.4,0.69,0.503,,2000,1,1,\n"
        "500,val,0.8,0.69,0.497,,2000,1,1,\n")
    p = lra_report.read_probe(folder / "pf_x_s0.csv")
    assert p["steps"] == 500 and p["last"] == pytest.approx(49.7) and p["best"] == pytest.approx(50.3)
    assert p["about"] == "pf, TaylorShift, seed 0"
    text = "\n".join(lra_report._probes_section(folder))
    assert "| pf_x_s0 | pf, TaylorShift, seed 0 | 500 | 49.7 / 50.3 |" in text
    (folder / "empty.csv").write_text("step,split,accuracy\n1,train,0.5\n")
    with pytest.raises(ValueError, match="no validation rows"):
        lra_report.read_probe(folder / "empty.csv")


def test_sweep_names_the_best_recipe_on_validation_from_the_runs():
    records = [
        {"protocol": "sweep", "task": "t", "recipe": "paper", "attention": "softmax", "val_accuracy": 20.0,
         "steps": 100},
        {"protocol": "sweep", "task": "t", "recipe": "paper", "attention": "taylorshift", "val_accuracy": 22.0,
         "steps": 100},
        {"protocol": "sweep", "task": "t", "recipe": "r", "attention": "taylorshift", "val_accuracy": 30.0,
         "steps": 100},
    ]
    summary = _summary([])
    summary["protocol"]["recipes"] = {"paper": {}, "r": {"model_overrides.temperature_init": 4.0}}
    summary["protocol"]["chosen_recipe"] = "paper"
    text = lra_report.render_protocol_report(summary, records, META)
    assert "- t: best on validation `r` (25.0 %, mean of the two attentions); the matched protocol's `paper`: " \
           "21.0 %." in text


def test_ngram_references_and_where_the_lm_lies():
    """The n-gram references are cross-entropies in bits per byte, and the LM section places the models
    against them from the numbers (not from prose)."""
    import numpy as np

    stream = np.frombuffer(b"abababababababab" * 5000, dtype=np.uint8)
    ref = lra_report.ngram_bits_per_byte(stream, stream)
    assert 0.9 < ref["unigram"] < 1.1  # two equally frequent bytes: ~1 bit
    assert ref["bigram"] < 0.1  # fully predictable from the previous byte
    lm = [{"name": "lm", "baselines": {"unigram": 4.0, "bigram": 3.3},
           "runs": [{"attention": a, "seed": s, "steps": 400, "test_bits_per_byte": 3.7 + 0.01 * s}
                    for a in ("taylorshift", "softmax") for s in range(3)]}]
    text = "\n".join(lra_report._lm_section(lm))
    assert "unigram 4.000 bits/byte, bigram 3.300" in text and "between the unigram and bigram" in text
    lm[0]["baselines"] = {"unigram": 4.0, "bigram": 3.9}
    assert "0.190 bits/byte below the bigram reference" in "\n".join(lra_report._lm_section(lm))


def test_pathfinder_probe_writes_a_probe_file_the_report_reads(tmp_path):
    """benchmarks/pathfinder_probe.py on a tiny variant: the MLP and the patch-token classifier both write a
    probe file with one validation row per evaluation, which read_probe accepts."""
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "pathfinder_probe.py"
    for model, extra in (("mlp", []), ("taylorshift", ["--patch", "2", "--set", "depth=1"])):
        subprocess.run([sys.executable, str(script), "--contour-length", "2", "--train-size", "64", "--steps", "4",
                        "--eval-every", "2", "--model", model, "--name", f"p_{model}", "--out", str(tmp_path),
                        *extra], check=True, capture_output=True, timeout=300)
        p = lra_report.read_probe(tmp_path / f"p_{model}.csv")
        assert p["steps"] == 4 and 0 <= p["last"] <= 100 and f"model {model}" in p["about"]
        rows = (tmp_path / f"p_{model}.csv").read_text().splitlines()
        assert rows[1] == "step,split,loss,accuracy" and [r.split(",")[0] for r in rows[2:]] == ["2", "4"]
    # masked-patch pretraining first: its rows are kept in the file but are not validation rows
    subprocess.run([sys.executable, str(script), "--contour-length", "2", "--train-size", "64", "--steps", "2",
                    "--eval-every", "2", "--model", "softmax", "--patch", "4", "--set", "depth=1",
                    "--pretrain-steps", "3", "--name", "pre", "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=300)
    rows = (tmp_path / "pre.csv").read_text().splitlines()
    assert "3 masked-patch pretraining steps" in rows[0]
    assert [r.split(",")[:2] for r in rows[2:]] == [["3", "pretrain"], ["2", "val"]]
    assert float(rows[2].split(",")[2]) > 0 and lra_report.read_probe(tmp_path / "pre.csv")["steps"] == 2
    for args, message in ((["--patch", "3"], "positive divisor of --size"),
                          (["--pretrain-steps", "5"], "needs --patch > 0"),
                          (["--patch", "2", "--pretrain-steps", "5", "--mask-ratio", "1"], "--mask-ratio")):
        bad = subprocess.run([sys.executable, str(script), *args, "--name", "x", "--out", str(tmp_path)],
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and message in bad.stderr, (args, bad.stderr)


def test_pathfinder_shortcut_reads_the_prepared_examples(tmp_path):
    """benchmarks/pathfinder_shortcut.py regenerates exactly the prepared split (same labels and images), and its
    threshold rule picks the separating threshold and direction."""
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import pathfinder_shortcut as sc

    from taylorshift.data import get_task
    from taylorshift.data.pathfinder import PathfinderConfig, make_sample

    get_task("pathfinder16_easy").prepare(tmp_path, size=6, val_size=2, test_size=3)
    with np.load(tmp_path / "pathfinder" / "L4-S16-D0" / "test.npz") as z:
        images, labels = z["images"], z["labels"]
    cfg = PathfinderConfig(contour_length=4, size=16, n_distractors=0)
    dist, lab = sc.marker_distances(cfg, 0, 8, 3)
    assert np.array_equal(lab, labels) and (dist > 0).all()
    assert np.array_equal(make_sample(cfg, int(lab[0]), np.random.default_rng([0, 8])).image, images[0])
    d = np.array([1.0, 2.0, 5.0, 6.0])
    assert sc.best_rule(d, np.array([1, 1, 0, 0])) == (2.0, 1)
    assert sc.best_rule(d, np.array([0, 0, 1, 1])) == (5.0, -1)


def test_a_task_run_at_two_schedule_lengths_gets_a_row_for_each():
    """Runs of one task at 5,000 and 10,000 steps are never pooled: each schedule is its own row and verdict."""
    runs = [{"attention": a, "seed": s, "steps": steps, "test_accuracy": acc + s}
            for steps, accs in ((5000, {"taylorshift": 60.0, "softmax": 70.0}), (10000, {"taylorshift": 80.0,
                                                                                        "softmax": 80.2}))
            for a, acc in accs.items() for s in range(3)]
    summary = _summary([])
    summary["tasks"] = [{"name": "pf", "stands_in_for": "P", "data": "", "train_size": 10, "test_size": 10,
                         "majority_rate": 50.0, "runs": runs}]
    text = lra_report.render_protocol_report(summary, [], META)
    row5 = next(ln for ln in text.splitlines() if ln.startswith("| pf (P) | 10 / 10 | 5,000 |"))
    row10 = next(ln for ln in text.splitlines() if ln.startswith("| pf (P) | 10 / 10 | 10,000 |"))
    assert "| 61.00 ± 1.00 | 71.00 ± 1.00 | -10.00 [-10.00, -10.00] | worse |" in row5
    assert "| 81.00 ± 1.00 | 81.20 ± 1.00 | -0.20 [-0.20, -0.20] | within 1 point |" in row10
    assert "pf (5,000 steps): worse" in text and "pf (10,000 steps): within 1 point" in text
