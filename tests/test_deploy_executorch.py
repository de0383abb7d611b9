"""ExecuTorch (XNNPACK): every model family exported with a dynamic sequence axis and run against eager PyTorch at
lengths other than the example's, both TaylorShift backends and softmax; the LM's decoding step; the errors.

Tolerance (float32): relative Frobenius error ``1e-5`` against the eager model, as for the ONNX graphs (XNNPACK
runs the linear layers and matmuls with its own kernels; measured about 1e-7).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("executorch", reason="the executorch extra is not installed")

from conftest import rel_err  # noqa: E402
from taylorshift.deploy.decode import LMStep  # noqa: E402
from taylorshift.deploy.executorch import (  # noqa: E402
    ExecuTorchModel,
    export_executorch,
    export_lm_step_executorch,
    metadata_path,
)
from taylorshift.models import create_model  # noqa: E402

TOL = 1e-5
INT8_TOL = 0.1  # relative error of int8 logits against float32, as for ONNX Runtime (measured ~0.005-0.01)
TINY = {"depth": 1, "dim": 32, "num_heads": 2, "head_dim": 8}
EXPORT_LEN = 12
TEST_LENS = (5, 41)


def _model(family: str, attention: str = "taylorshift") -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "classifier":
        return create_model("pixels_cpu", attention, max_len=64, **TINY).eval()
    if family == "vit":
        return create_model("vit_tiny_fmnist", attention, **TINY).eval()
    return create_model("fortunes_lm", attention, max_len=64, **TINY).eval()


def _ids(n: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family,attention,backend", [
    ("classifier", "taylorshift", "efficient"), ("classifier", "taylorshift", "direct"),
    ("classifier", "softmax", "efficient"), ("lm", "taylorshift", "efficient"), ("lm", "softmax", "efficient"),
])
def test_sequence_models_match_eager_at_other_lengths(tmp_path, family, attention, backend):
    model = _model(family, attention)
    path = export_executorch(model, tmp_path / "m.pte", (_ids(EXPORT_LEN),), backend=backend)
    info = ExecuTorchModel(path).info
    assert info["family"] == family and info["attention"] == attention and info["max_len"] == 64
    assert info["backend"] == (backend if attention == "taylorshift" else None)
    program = ExecuTorchModel(path)
    for n in TEST_LENS:
        ids = _ids(n, seed=n)
        with torch.no_grad():
            ref = model(ids)
        out = program(ids)
        assert out.shape == ref.shape
        assert rel_err(out, ref) < TOL, (n, rel_err(out, ref))


def test_vit_matches_eager(tmp_path):
    model = _model("vit")
    images = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    path = export_executorch(model, tmp_path / "vit.pte", (images,))
    with torch.no_grad():
        ref = model(images)
    assert rel_err(ExecuTorchModel(path)(images), ref) < TOL


def test_lm_step_matches_eager_step_and_keeps_its_state_size(tmp_path):
    model = _model("lm")
    path = export_lm_step_executorch(model, tmp_path / "step.pte")
    program, step = ExecuTorchModel(path), LMStep(model).eval()
    states = step.initial_states(1)
    shapes = [tuple(s.shape) for s in states]
    ids = _ids(20, seed=3)[0]
    et_states = [s.clone() for s in states]
    for i, tok in enumerate(ids.tolist()):
        token, position = torch.tensor([[tok]]), torch.tensor([i])
        with torch.no_grad():
            ref_logits, *states = step(token, position, *states)
        logits, *et_states = program(token, position, *et_states)
        assert [tuple(s.shape) for s in et_states] == shapes
        assert rel_err(logits, ref_logits) < TOL, i
    with torch.no_grad():  # and the recurrent logits are the parallel forward's last row
        full = model(ids[None])[:, -1]
    assert rel_err(logits, full) < 1e-4


def test_max_len_bounds_the_program_and_errors(tmp_path):
    model = _model("classifier")
    path = export_executorch(model, tmp_path / "c.pte", (_ids(EXPORT_LEN),), max_len=32)
    assert metadata_path(path).is_file()
    program = ExecuTorchModel(path)
    assert program.info["max_len"] == 32
    with pytest.raises(ValueError, match="1 to 32"):
        program(_ids(33))
    with pytest.raises(ValueError, match="batch size 1"):
        program(_ids(8, batch=2))
    with pytest.raises(ValueError, match="max_len must be an int"):
        export_executorch(model, tmp_path / "d.pte", (_ids(EXPORT_LEN),), max_len=65)
    with pytest.raises(ValueError, match="backend"):
        export_executorch(model, tmp_path / "e.pte", (_ids(EXPORT_LEN),), backend="auto")
    with pytest.raises(TypeError, match="SequenceClassifier"):
        export_executorch(torch.nn.Linear(2, 2), tmp_path / "f.pte", (torch.zeros(1, 2),))
    with pytest.raises(ValueError, match="softmax"):
        export_lm_step_executorch(_model("lm", "softmax"), tmp_path / "g.pte")
    with pytest.raises(FileNotFoundError):
        ExecuTorchModel(tmp_path / "missing.pte")


def test_cli_exports_a_checkpoint_to_executorch(tmp_path, capsys):
    pytest.importorskip("safetensors")
    from taylorshift.cli import main
    from taylorshift.train.checkpoint import model_config_dict, save_checkpoint

    model = _model("classifier")
    ckpt = save_checkpoint(tmp_path / "checkpoint.safetensors", model, None,
                           {"config": {}, "model_config": model_config_dict(model.config)})
    out = tmp_path / "m.pte"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "executorch", "--length", "16",
                 "--out", str(out)]) == 0
    assert "ExecuTorch/XNNPACK" in capsys.readouterr().out
    ids, pad = _ids(23, seed=5), torch.zeros(1, 23, dtype=torch.bool)
    pad[0, 17:] = True
    with torch.no_grad():
        ref = model(ids, key_padding_mask=pad)
    program = ExecuTorchModel(out)
    assert rel_err(program(ids, pad), ref) < TOL
    with pytest.raises(ValueError, match=r"2 input\(s\) \(x, key_padding_mask\), got 1"):
        program(ids)
    int8 = tmp_path / "m.int8.pte"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "executorch", "--quantize", "int8", "--length",
                 "16", "--out", str(int8)]) == 0
    assert "int8 linear layers" in capsys.readouterr().out
    assert ExecuTorchModel(int8).info["quantized"] == "int8"
    err = rel_err(ExecuTorchModel(int8)(ids, pad), ref)
    assert 0 < err < INT8_TOL, err  # quantized, and close
