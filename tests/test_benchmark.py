"""The benchmark runner (``xaikernels.benchmark``) and the benchmark models (``models.zoo``).

Quick: tiny models and two timed rounds.  No test asserts a timing; they check that the runner
produces complete, sane rows and that its peak-memory measurement is right.
"""

import json
import math
import warnings

import pytest
import torch
from torch import nn

from xaikernels import benchmark as B
from xaikernels.models import zoo


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def _layer_output_shape(model, name, x):
    seen = {}

    def hook(module, inputs, output):
        seen["shape"] = tuple(output.shape)  # returning None keeps the output as is

    h = dict(model.named_modules())[name].register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        h.remove()
    return tuple(out.shape), seen["shape"]


def test_vgg16_like_shapes_and_size():
    model = zoo.vgg16_like()
    assert not model.training
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert (len(convs), len(linears)) == (13, 3)
    # VGG-16's convolutions are exactly torchvision's; the small classifier adds ~1.3 M.
    assert sum(_n_params(c) for c in convs) == 14_714_688
    assert 15_000_000 < _n_params(model) < 17_000_000
    out, cam = _layer_output_shape(model, zoo.VGG16_CAM_LAYER, torch.randn(2, 3, 64, 64))
    assert out == (2, 10) and cam == (2, 512, 4, 4)


def test_resnet18_like_shapes_and_size():
    model = zoo.resnet18_like()
    assert not model.training
    assert _n_params(model) == 11_689_512  # torchvision's resnet18
    assert all(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))
    out, cam = _layer_output_shape(model, zoo.RESNET18_CAM_LAYER, torch.randn(1, 3, 224, 224))
    assert out == (1, 1000) and cam == (1, 512, 7, 7)
    assert zoo.cam_layer("resnet18") == "layer4"


def test_zoo_init_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    a = torch.rand(3)
    torch.manual_seed(123)
    m1 = zoo.resnet18_like(10, width=8, seed=1)
    assert torch.equal(torch.rand(3), a)
    m2 = zoo.resnet18_like(10, width=8, seed=1)
    m3 = zoo.resnet18_like(10, width=8, seed=2)
    assert torch.equal(m1.conv1.weight, m2.conv1.weight)
    assert not torch.equal(m1.conv1.weight, m3.conv1.weight)


def test_peak_memory_of_known_allocations():
    mib = 2**20

    def one():
        return torch.ones(mib)  # 4 MiB of float32, kept alive by the caller

    def sequential():
        a = torch.ones(mib)  # 4 MiB, freed before the next allocation
        del a
        b = torch.ones(mib // 2)
        return b

    assert B.peak_memory(one) == pytest.approx(4 * mib, rel=0.10)
    # The peak, not the sum of the allocations.
    assert B.peak_memory(sequential) == pytest.approx(4 * mib, rel=0.10)


def test_noise_note():
    quiet = [{"provider": "unit", "status": "ok", "median_ms": 100.0, "iqr_ms": 5.0}]
    busy = [{"provider": "unit", "status": "ok", "median_ms": 100.0, "iqr_ms": 40.0}]
    assert B.noise_note(quiet) is None
    assert "40%" in B.noise_note(busy)


def test_summarize():
    med, iqr = B.summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (med, iqr) == (3.0, 2.0)
    assert B.summarize([7.0]) == (7.0, 0.0)


REQUIRED = {
    "schema",
    "run_id",
    "date",
    "command",
    "commit",
    "versions",
    "machine",
    "threads",
    "device",
    "model",
    "input_shape",
    "batch",
    "method",
    "provider",
    "status",
    "times_ms",
    "median_ms",
    "iqr_ms",
    "min_ms",
    "ratio_to_unit",
    "peak_bytes",
    "peak_ratio_to_unit",
    "backend",
}


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_quick_run_end_to_end(tmp_path):
    argv = [
        "--quick",
        "--model",
        "vgg16",
        "--methods",
        "saliency,grad_cam",
        "--providers",
        "unit,xaikernels,reference",
        "--repeats",
        "2",
        "--out-dir",
        str(tmp_path),
        "--name",
        "t",
        "--target-ratio",
        "100",
    ]
    assert B.main(argv) == 0
    rows = _rows(tmp_path / "t.jsonl")
    assert [(r["method"], r["provider"]) for r in rows] == [
        ("unit", "unit"),
        ("saliency", "xaikernels"),
        ("grad_cam", "xaikernels"),
        ("grad_cam", "reference"),
    ]
    for r in rows:
        assert REQUIRED <= set(r), REQUIRED - set(r)
        assert r["status"] == "ok" and r["threads"] == 1 and r["batch"] == 2
        assert len(r["times_ms"]) == 2
        assert math.isfinite(r["ratio_to_unit"]) and r["ratio_to_unit"] > 0
        assert r["peak_bytes"] > 0 and r["peak_ratio_to_unit"] > 0
        assert r["versions"]["torch"] == torch.__version__
        assert r["command"].startswith("xaikernels bench --quick")
    unit = rows[0]
    assert unit["ratio_to_unit"] == 1.0 and unit["peak_ratio_to_unit"] == 1.0
    by = {(r["method"], r["provider"]): r for r in rows}
    assert by["grad_cam", "reference"]["backend"] == "reference"
    assert by["grad_cam", "xaikernels"]["backend"] in ("cpp", "reference")
    assert by["saliency", "xaikernels"]["target"]["pass"] is True
    assert by["grad_cam", "reference"]["target"] is None  # not ours
    md = (tmp_path / "t.md").read_text()
    assert "torch.set_num_threads(1)" in md and "| grad_cam | reference |" in md

    # A second run appends its rows; the report keeps one section with the latest run.
    assert B.main(argv + ["--repeats", "1", "--no-memory"]) == 0
    rows2 = _rows(tmp_path / "t.jsonl")
    assert len(rows2) == 8 and rows2[-1]["run_id"] != rows[-1]["run_id"]
    md = (tmp_path / "t.md").read_text()
    assert md.count("## vgg16") == 1 and rows2[-1]["run_id"] not in md
    assert rows2[-1]["date"] in md


def tiny_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()


def test_factory_model_and_provider_extension_point(tmp_path, capsys):
    def build(method, case):
        if method == "saliency":
            return lambda: 1 / 0
        if method == "input_x_gradient":
            return lambda: warnings.warn("careful", UserWarning)
        if method == "deconvnet":
            # Leaves a hook behind: the runner must flag it.
            return lambda: case.model[1].register_forward_hook(lambda *a: None)
        return None

    B.register_provider(B.Provider("broken", build, description="test"))
    try:
        assert B.main(["--model", f"{__name__}:tiny_cnn", "--out-dir", str(tmp_path)]) == 2
        assert "--input-shape is required" in capsys.readouterr().err
        with pytest.raises(B.BenchError, match="unknown provider"):
            B.run(B.BenchConfig(model="vgg16", providers=["nope"], out_dir=tmp_path))
        argv = [
            "--model",
            f"{__name__}:tiny_cnn",
            "--input-shape",
            "3x8x8",
            "--batch",
            "2",
            "--methods",
            "saliency,input_x_gradient,deconvnet,grad_cam",
            "--providers",
            "broken,xaikernels",
            "--repeats",
            "1",
            "--warmup",
            "1",
            "--no-memory",
            "--out-dir",
            str(tmp_path),
            "--name",
            "f",
        ]
        assert B.main(argv) == 0
    finally:
        del B.PROVIDERS["broken"]
    by = {(r["method"], r["provider"]): r for r in _rows(tmp_path / "f.jsonl")}
    assert ("grad_cam", "xaikernels") not in by  # no layer given: skipped
    assert by["saliency", "broken"]["status"] == "error"
    assert "ZeroDivisionError" in by["saliency", "broken"]["error"]
    assert by["deconvnet", "broken"]["leaked_hooks"] is True
    assert by["input_x_gradient", "broken"]["warnings"] == ["UserWarning: careful"]
    assert by["saliency", "xaikernels"]["status"] == "ok"
    assert by["saliency", "xaikernels"]["peak_bytes"] is None
    assert by["unit", "unit"]["model"] == "tiny_cnn"


def test_torchscript_model(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.jit.script(tiny_cnn()).save(str(path))
    argv = [
        "--model",
        str(path),
        "--input-shape",
        "3,8,8",
        "--methods",
        "saliency",
        "--providers",
        "unit",
        "--repeats",
        "1",
        "--out-dir",
        str(tmp_path),
        "--name",
        "s",
    ]
    assert B.main(argv) == 0
    (row,) = _rows(tmp_path / "s.jsonl")
    assert row["status"] == "ok" and row["model"] == "tiny" and row["batch"] == 8


@pytest.mark.parametrize("provider", ["captum", "xaikernels.captum"])
def test_captum_api_providers(tmp_path, provider):
    mod = pytest.importorskip("captum.attr" if provider == "captum" else provider)
    if not hasattr(mod, "Saliency"):
        pytest.skip(f"{provider} has no drop-in classes yet")
    argv = [
        "--quick",
        "--model",
        "vgg16",
        "--methods",
        "saliency,grad_cam",
        "--providers",
        provider,
        "--repeats",
        "1",
        "--no-memory",
        "--out-dir",
        str(tmp_path),
        "--name",
        "c",
    ]
    assert B.main(argv) == 0
    rows = _rows(tmp_path / "c.jsonl")
    assert {(r["method"], r["status"]) for r in rows if r["provider"] == provider} == {
        ("saliency", "ok"),
        ("grad_cam", "ok"),
    }
