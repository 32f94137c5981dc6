"""``python -m xaikernels``: explain with TorchScript and Python-factory models, and errors."""
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from xaikernels.__main__ import main

mpimg = pytest.importorskip("matplotlib.image")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WINNER = 2  # the tiny model's bias makes this class win on any input


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        m[4].bias.copy_(torch.tensor([0.0, 0.0, 50.0]))
    return m.eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in 2.13
        torch.jit.script(_tiny()).save(str(d / "tiny.pt"))
    rng = np.random.default_rng(0)
    mpimg.imsave(d / "img.png", rng.random((20, 24, 3)))
    (d / "tinymod.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def make():
            torch.manual_seed(0)
            m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                              nn.Flatten(), nn.Linear(4, 3))
            return m

        NOT_A_MODEL = 3
    """))
    return d


def _run(*args, cwd=None, extra_path=None):
    env = dict(os.environ)
    paths = [ROOT] + ([str(extra_path)] if extra_path else [])
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, "-m", "xaikernels", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def _png_shape(path):
    return mpimg.imread(path).shape


def test_explain_torchscript_model(files, tmp_path):
    out = tmp_path / "sub" / "heat.png"
    r = _run("explain", files / "img.png", "--model", files / "tiny.pt", "--method",
             "saliency", "input_x_gradient", "--size", "16", "--out", out)
    assert r.returncode == 0, r.stderr
    assert f"predicted: {WINNER} " in r.stdout
    assert "wrote" in r.stdout and out.is_file()
    h, w, _ = _png_shape(out)
    assert w > 2 * h  # one row: the input and two maps side by side
    # The progress bar is on by default (it writes to stderr).
    assert "explain" in r.stderr and "2/2" in r.stderr


def test_explain_python_factory_with_layer_methods(files, tmp_path):
    out = tmp_path / "f.png"
    r = _run("explain", files / "img.png", "--model", "tinymod:make", "--layer", "0",
             "--method", "grad_cam,guided_backprop", "cam", "--target", "1", "--out", out,
             "--no-progress", extra_path=files)
    assert r.returncode == 0, r.stderr
    assert "explaining: 1 " in r.stdout and out.is_file()
    assert r.stderr.strip() == ""


def test_version(capsys):
    import xaikernels

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"xaikernels {xaikernels.__version__}"


@pytest.mark.parametrize("args, message", [
    (["explain", "{d}/missing.png"], "image file not found"),
    (["explain", "{d}/img.png", "--model", "{d}/tiny.pt", "--method", "gradcam"],
     "unknown method 'gradcam' (did you mean 'grad_cam'?)"),
    (["explain", "{d}/img.png", "--model", "{d}/tiny.pt", "--method", "grad_cam", "--layer", "0"],
     "TorchScript"),
    (["explain", "{d}/img.png", "--model", "tinymod:make", "--method", "grad_cam",
      "--layer", "nope"], "no layer named 'nope'"),
    (["explain", "{d}/img.png", "--model", "tinymod:make", "--method", "grad_cam"],
     "--layer is required for grad_cam"),
    (["explain", "{d}/img.png", "--model", "tinymod:NOT_A_MODEL"], "not a torch.nn.Module"),
    (["explain", "{d}/img.png", "--model", "tinymod:absent"], "no attribute 'absent'"),
    (["explain", "{d}/img.png", "--model", "no_such_pkg_xk:f"], "cannot import 'no_such_pkg_xk'"),
    (["explain", "{d}/img.png", "--model", "not-a-model"], "model not found"),
    (["explain", "{d}/img.png", "--model", "{d}/tinymod.py"], "cannot load"),
    (["explain", "{d}/img.png", "--model", "{d}/tiny.pt", "--method", "saliency",
      "--target", "7"], "out of range"),
    (["explain", "{d}/img.png", "--model", "{d}/tiny.pt", "--size", "big"], "--size"),
])
def test_explain_errors_are_clear(files, monkeypatch, capsys, args, message):
    monkeypatch.syspath_prepend(str(files))
    argv = [a.format(d=files) for a in args] + ["--no-progress", "--out", str(files / "x.png")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err, err
    assert "Traceback" not in err


def test_help_and_unknown_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["explain", "--help"])
    assert e.value.code == 0
    assert "--layer" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2
    assert main([]) == 2
