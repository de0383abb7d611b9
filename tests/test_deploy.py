"""Deployment: ONNX export of every model family with a dynamic sequence axis, ONNX Runtime against eager
PyTorch, the LM's decoding step graph and runner, int8 quantization, and the errors.

Tolerances (float32 throughout): an exported graph within a relative Frobenius error of ``1e-5`` of the eager
model (the graph runs the same operations in another order, e.g. the unblocked kernels); the int8 graph
within ``INT8_TOL`` of the float32 graph's logits (dynamic int8 weights and activations of the linear layers).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnxruntime", reason="the deploy extra (onnx, onnxscript, onnxruntime) is not installed")

import numpy as np  # noqa: E402

from conftest import rel_err  # noqa: E402
from taylorshift.deploy import (  # noqa: E402
    OnnxLMRunner,
    OnnxModel,
    export_lm_step,
    export_onnx,
    quantize_int8,
    read_metadata,
)
from taylorshift.models import create_model  # noqa: E402

FP32_TOL = 1e-5
INT8_TOL = 0.1  # relative Frobenius error of the logits; measured about 0.01 on these tiny random models
TINY = {"depth": 1, "dim": 32, "num_heads": 2, "head_dim": 8}
EXPORT_LEN = 12  # the example's length; the graph is checked at TEST_LENS
TEST_LENS = (5, 41)


def _model(family: str, attention: str = "taylorshift") -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "classifier":
        return create_model("pixels_cpu", attention, **TINY).eval()
    if family == "vit":
        return create_model("vit_tiny_fmnist", attention, **TINY).eval()
    return create_model("fortunes_lm", attention, max_len=128, **TINY).eval()


def _inputs(family: str, n: int, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    if family == "vit":
        return (torch.randn(batch, 1, 28, 28, generator=g),)
    ids = torch.randint(0, 256, (batch, n), generator=g)
    if family == "lm":
        return (ids,)
    pad = torch.zeros(batch, n, dtype=torch.bool)
    pad[0, n // 2 + 1 :] = True  # one padded sequence
    return (ids, pad)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(family, backend) -> (eager model, path of its graph), exported once per module."""
    folder = tmp_path_factory.mktemp("onnx")
    cache = {}

    def get(family: str, backend: str):
        if (family, backend) not in cache:
            model = _model(family)
            path = export_onnx(model, folder / f"{family}_{backend}.onnx", _inputs(family, EXPORT_LEN), backend=backend)
            cache[family, backend] = (model, path)
        return cache[family, backend]

    return get


@pytest.mark.parametrize("backend", ["efficient", "direct"])
@pytest.mark.parametrize("family", ["classifier", "lm"])
def test_exported_sequence_models_match_eager_at_other_lengths(exported, family, backend):
    model, path = exported(family, backend)
    runtime = OnnxModel(path)
    assert runtime.meta["backend"] == backend and runtime.meta["family"] == family
    for n in TEST_LENS:
        inputs = _inputs(family, n, batch=3, seed=n)  # another batch size too
        with torch.no_grad():
            ref = model(*inputs)
        out = torch.from_numpy(runtime(*inputs))
        assert out.shape == ref.shape
        assert rel_err(out, ref) < FP32_TOL, (family, backend, n)


@pytest.mark.parametrize("backend", ["efficient", "direct"])
def test_exported_vit_matches_eager_at_other_batch_sizes(exported, backend):
    """A ViT's token count is fixed by its image size (a learned position per patch), so only the batch axis
    is dynamic; the graph is checked at two batch sizes other than the example's."""
    model, path = exported("vit", backend)
    runtime = OnnxModel(path)
    for batch in (1, 5):
        (images,) = _inputs("vit", 0, batch=batch, seed=batch)
        with torch.no_grad():
            ref = model(images)
        assert rel_err(torch.from_numpy(runtime(images)), ref) < FP32_TOL, (backend, batch)
    with pytest.raises(ValueError, match=r"images must have shape \(B, 1, 28, 28\)"):
        runtime(torch.zeros(1, 1, 32, 32))


@pytest.mark.slow
def test_softmax_models_export_the_same_way(tmp_path):
    model = _model("classifier", "softmax")
    path = export_onnx(model, tmp_path / "softmax.onnx", _inputs("classifier", EXPORT_LEN))
    assert read_metadata(path)["attention"] == "softmax" and read_metadata(path)["backend"] is None
    inputs = _inputs("classifier", 33, seed=1)
    with torch.no_grad():
        assert rel_err(torch.from_numpy(OnnxModel(path)(*inputs)), model(*inputs)) < FP32_TOL


def _quadratic_intermediates(path) -> list[str]:
    """Names of the graph's intermediate tensors with two sequence axes (shape inference's symbolic dims)."""
    onnx = pytest.importorskip("onnx")
    found = []
    for info in onnx.load(str(path)).graph.value_info:
        dims = [d.dim_param for d in info.type.tensor_type.shape.dim]
        if sum("N" in d for d in dims) >= 2:
            found.append(info.name)
    return found


def test_the_backend_is_fixed_in_the_graph(exported):
    """The efficient graph holds nothing of size N × N (memory linear in N); the direct graph holds the weights
    (batch, heads, N + 1, N + 1) (the CLS token is the + 1)."""
    assert _quadratic_intermediates(exported("classifier", "efficient")[1]) == []
    assert _quadratic_intermediates(exported("classifier", "direct")[1]) != []


def test_int8_outputs_stay_close_to_fp32(exported, tmp_path):
    model, path = exported("classifier", "efficient")
    q_path = quantize_int8(path, tmp_path / "int8.onnx")
    assert q_path.stat().st_size < path.stat().st_size
    assert read_metadata(q_path)["quantized"] == "int8"
    fp32, int8 = OnnxModel(path), OnnxModel(q_path)
    inputs = _inputs("classifier", 40, batch=8, seed=3)  # a fixed batch
    a, b = torch.from_numpy(fp32(*inputs)), torch.from_numpy(int8(*inputs))
    err = rel_err(b, a)
    assert 0 < err < INT8_TOL, err  # quantized (not the same graph), and close


# ------------------------------------------------------------------------------ decoding step and runner


@pytest.fixture(scope="module")
def lm_step(tmp_path_factory):
    model = _model("lm")
    path = export_lm_step(model, tmp_path_factory.mktemp("step") / "step.onnx")
    return model, path


def test_runner_greedy_generation_equals_pytorch(lm_step):
    model, path = lm_step
    runner = OnnxLMRunner(path)
    prompt = torch.tensor([list(b"Once upon a time")])
    ref = [int(t[0]) for t in model.generate(prompt, 60, temperature=0)]
    got = [int(t[0]) for t in runner.generate(prompt[0].numpy(), 60)]
    assert bytes(got) == bytes(ref)


def test_runner_sampling_is_reproducible_and_follows_the_temperature(lm_step):
    runner = OnnxLMRunner(lm_step[1])
    prompt = np.frombuffer(b"abc", np.uint8)
    draw = [int(t[0]) for t in runner.generate(prompt, 30, temperature=1.0, seed=3)]
    assert draw == [int(t[0]) for t in runner.generate(prompt, 30, temperature=1.0, seed=3)]
    assert draw != [int(t[0]) for t in runner.generate(prompt, 30, temperature=1.0, seed=4)]
    greedy = [int(t[0]) for t in runner.generate(prompt, 30)]
    assert greedy == [int(t[0]) for t in runner.generate(prompt, 30, temperature=1e-6, seed=5)]  # cold = argmax


def test_step_graph_matches_module_step_and_state_size_is_constant(lm_step):
    model, path = lm_step
    runner = OnnxLMRunner(path)
    ids = torch.randint(0, 256, (1, 30), generator=torch.Generator().manual_seed(0))
    cache = model.new_cache(1)
    with torch.no_grad():
        ref = model.prefill(ids[:, :10], cache)[:, -1]
    logits, state = runner.prefill(ids[0, :10].numpy())
    assert rel_err(torch.from_numpy(logits), ref) < FP32_TOL
    size, shapes = state.nbytes, [s.shape for s in state.states]
    for t in range(10, 30):
        with torch.no_grad():
            ref = model.step(ids[:, t : t + 1], cache)[:, -1]
        logits = runner.step(ids[:, t].numpy(), state)
        assert rel_err(torch.from_numpy(logits), ref) < FP32_TOL, t
        assert state.nbytes == size and [s.shape for s in state.states] == shapes
    assert state.length == 30
    for s, layer in zip(state.states, cache.layers, strict=True):
        assert rel_err(torch.from_numpy(s), layer.state.state) < FP32_TOL


# ------------------------------------------------------------------------------------------- errors


def test_export_errors(tmp_path):
    model = _model("classifier")
    with pytest.raises(ValueError, match="backend must be one of"):
        export_onnx(model, tmp_path / "a.onnx", _inputs("classifier", 8), backend="auto")
    with pytest.raises(ValueError, match="length 2000; this model takes sequences of 1 to 1024"):
        export_onnx(model, tmp_path / "a.onnx", torch.zeros(1, 2000, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        export_onnx(model, tmp_path / "a.onnx", torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(TypeError, match="must be a SequenceClassifier, VisionTransformer or CausalLM"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "a.onnx", torch.zeros(1, 2))
    with pytest.raises(TypeError, match="example_input must be a tensor"):
        export_onnx(model, tmp_path / "a.onnx", [[1, 2]])
    with pytest.raises(TypeError, match="for a CausalLM"):
        export_lm_step(model, tmp_path / "a.onnx")
    with pytest.raises(ValueError, match="needs TaylorShift attention"):
        export_lm_step(_model("lm", "softmax"), tmp_path / "a.onnx")


def test_runtime_errors(exported, lm_step, tmp_path):
    _, path = exported("classifier", "efficient")
    runtime = OnnxModel(path)
    long = torch.zeros(1, 1025, dtype=torch.long)
    with pytest.raises(ValueError, match="length 1025; this graph takes 1 to 1024 tokens"):
        runtime(long, torch.zeros(1, 1025, dtype=torch.bool))
    with pytest.raises(ValueError, match="pass all of them"):
        runtime(long)
    with pytest.raises(FileNotFoundError, match="no ONNX file"):
        OnnxModel(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="not a decoding step graph"):
        OnnxLMRunner(path)
    runner = OnnxLMRunner(lm_step[1])
    with pytest.raises(ValueError, match="exceed max_len=128"):
        runner.prefill(np.zeros(129, np.int64))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 256\)"):
        runner.step(np.array([300]), runner.new_state())
    with pytest.raises(ValueError, match="target must differ from source"):
        quantize_int8(path, path)


def test_exported_graph_runs_at_length_one(exported):
    """The example needs 2 tokens or more (the exporter fixes sizes 0 and 1), the graph takes 1 as well."""
    model, path = exported("lm", "efficient")
    (ids,) = _inputs("lm", 1, seed=9)
    with torch.no_grad():
        assert rel_err(torch.from_numpy(OnnxModel(path)(ids)), model(ids)) < FP32_TOL


# ---------------------------------------------------------------------------------------------- the CLI


def _checkpoint(tmp_path, model, name="checkpoint.safetensors", config_class=None):
    pytest.importorskip("safetensors")
    from taylorshift.train.checkpoint import model_config_dict, save_checkpoint

    info = model_config_dict(model.config)
    if config_class is not None:
        info["class"] = config_class
    return save_checkpoint(tmp_path / name, model, None, {"config": {}, "model_config": info})


def test_cli_exports_a_checkpoint_int8(tmp_path, capsys):
    from taylorshift.cli import main

    model = _model("classifier")
    ckpt = _checkpoint(tmp_path, model)
    int8 = tmp_path / "m.int8.onnx"
    args = ["export", "--checkpoint", str(ckpt), "--format", "onnx", "--quantize", "int8", "--out", str(int8)]
    assert main([*args, "--length", "16"]) == 0
    printed = capsys.readouterr().out
    assert "backend efficient, " in printed and "(int8; float32:" in printed
    meta = read_metadata(int8)
    assert meta["quantized"] == "int8" and meta["backend"] == "efficient" and meta["example_shape"] == [2, 16]
    inputs = _inputs("classifier", 30, batch=4, seed=2)
    with torch.no_grad():
        ref = model(*inputs)
    assert 0 < rel_err(torch.from_numpy(OnnxModel(int8)(*inputs)), ref) < INT8_TOL


def test_cli_errors(tmp_path, capsys):
    from taylorshift.cli import main

    model = _model("classifier")
    ckpt = _checkpoint(tmp_path, model)
    out = str(tmp_path / "m.onnx")

    def error(args: list[str]) -> str:
        assert main(["export", *args]) == 2
        return capsys.readouterr().err

    assert "unknown format 'tflite'; supported: onnx, executorch" in error(
        ["--checkpoint", str(ckpt), "--format", "tflite", "--out", out]
    )
    unknown = _checkpoint(tmp_path, model, "unknown.safetensors", config_class="MysteryConfig")
    assert "model config class 'MysteryConfig' is unknown" in error(["--checkpoint", str(unknown), "--out", out])
    assert "--length has length 5000; this model takes sequences of 1 to 1024" in error(
        ["--checkpoint", str(ckpt), "--out", out, "--length", "5000"]
    )
    assert "decoding step graph is for a CausalLM" in error(
        ["--checkpoint", str(ckpt), "--out", out, "--graph", "step"]
    )
    vit = _checkpoint(tmp_path, _model("vit"), "vit.safetensors")
    assert "a ViT's sequence length is set by its image size" in error(
        ["--checkpoint", str(vit), "--out", out, "--length", "20"]
    )
    assert "no checkpoint at" in error(["--checkpoint", str(tmp_path / "missing.safetensors"), "--out", out])
    assert not (tmp_path / "m.onnx").exists()
