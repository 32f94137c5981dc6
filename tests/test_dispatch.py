"""Backend dispatch: explicit requests, the environment override, and degraded installs."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import xaikernels
from xaikernels import BackendUnavailableError, _backend
from xaikernels.ops.grad_cam import grad_cam_reduce

A = torch.randn(2, 3, 5)
G = torch.randn(2, 3, 5)


def test_auto_picks_cpp_on_cpu_and_records_it():
    grad_cam_reduce(A, G)
    assert xaikernels.last_backend("grad_cam") == "cpp"
    grad_cam_reduce(A, G, backend="reference")
    assert xaikernels.last_backend("grad_cam") == "reference"


def test_explicit_backend_without_kernel_raises():
    with pytest.raises(BackendUnavailableError, match="no 'numba' kernel"):
        grad_cam_reduce(A, G, backend="numba")


def test_unfit_backends_are_passed_over_in_auto_mode_only(monkeypatch):
    """An op marks backends that cannot take a call's shapes: auto goes on down the order, an
    explicit request (argument or environment) still resolves to the named backend."""
    op = _backend.Op("unfit_probe", {"cpu": ("numba", "reference")})
    op.register("numba", lambda: "numba")
    op.register("reference", lambda: "reference")
    cpu = torch.device("cpu")
    assert op.resolve(cpu) == "numba"
    assert op.resolve(cpu, unfit=("numba",)) == "reference"
    assert op.resolve(cpu, "numba", unfit=("numba",)) == "numba"
    monkeypatch.setenv(_backend.ENV_VAR, "numba")
    assert op.resolve(cpu, unfit=("numba",)) == "numba"


def test_launcher_cache_follows_environment_and_registration(monkeypatch):
    """launcher caches its resolutions, keyed on what resolve reads: a change of
    XAIKERNELS_BACKEND or of the unfit set resolves again, a cached hit still records the
    backend, a newly registered backend is seen, and an explicit request for a missing one
    raises every time (errors are never cached)."""
    op = _backend.define_op("cache_probe", {"cpu": ("numba", "reference")})
    op.register("reference", lambda: "reference")
    cpu = torch.device("cpu")
    monkeypatch.delenv(_backend.ENV_VAR, raising=False)
    assert op.launcher(cpu)[0] == "reference"
    op.register("numba", lambda: "numba")
    assert op.launcher(cpu)[0] == "numba"
    assert op.launcher(cpu, unfit=("numba",))[0] == "reference"
    _backend._LAST.pop("cache_probe")
    name, fn = op.launcher(cpu)
    assert (name, fn()) == ("numba", "numba") and _backend.last_backend("cache_probe") == "numba"
    monkeypatch.setenv(_backend.ENV_VAR, "reference")
    assert op.launcher(cpu)[0] == "reference" and _backend.last_backend("cache_probe") == "reference"
    for _ in range(2):
        with pytest.raises(BackendUnavailableError, match="no 'cpp' kernel"):
            op.launcher(cpu, "cpp")
    with pytest.raises(ValueError, match="unknown backend"):  # unhashable: not a cache key
        op.launcher(cpu, ["numba"])
    _backend._OPS.pop("cache_probe")


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        grad_cam_reduce(A, G, backend="cuda-magic")


def test_env_override(monkeypatch):
    monkeypatch.setenv(_backend.ENV_VAR, "reference")
    grad_cam_reduce(A, G)
    assert xaikernels.last_backend("grad_cam") == "reference"
    # An explicit argument wins over the environment.
    grad_cam_reduce(A, G, backend="cpp")
    assert xaikernels.last_backend("grad_cam") == "cpp"
    monkeypatch.setenv(_backend.ENV_VAR, "numba")
    with pytest.raises(BackendUnavailableError):
        grad_cam_reduce(A, G)


def test_backend_reaches_methods():
    from torch import nn

    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).eval()
    x = torch.randn(2, 1, 6, 6)
    a = xaikernels.grad_cam(m, x, 0, layer="0", backend="reference")
    assert xaikernels.last_backend("grad_cam") == "reference"
    b = xaikernels.grad_cam(m, x, 0, layer="0", backend="cpp")
    assert xaikernels.last_backend("grad_cam") == "cpp"
    torch.testing.assert_close(a, b)


def _run(code, **env):
    full = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full, timeout=120)


BLOCKER = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('triton', 'numba') or name == 'xaikernels._C':
            raise ImportError('blocked for test: ' + name)
        return None
sys.meta_path.insert(0, Block())
"""


def test_import_and_run_without_extension_triton_numba():
    r = _run(BLOCKER + """
import warnings, torch
from torch import nn
import xaikernels
from xaikernels import _backend
assert 'triton' not in sys.modules and 'numba' not in sys.modules
st = xaikernels.backend_status()
assert st['cpp'].startswith('missing') and st['triton'].startswith('missing') and st['numba'].startswith('missing'), st
m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)).eval()
x = torch.randn(2, 1, 6, 6)
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter('always')
    xaikernels.grad_cam(m, x, 0, layer='0')
    xaikernels.grad_cam(m, x, 0, layer='0')
msgs = [str(i.message) for i in w if 'unavailable' in str(i.message)]
assert len(msgs) == 1, msgs   # reported once
assert xaikernels.last_backend('grad_cam') == 'reference'
for b in ('cpp', 'triton', 'numba'):
    try:
        xaikernels.grad_cam(m, x, 0, layer='0', backend=b)
    except xaikernels.BackendUnavailableError as e:
        assert 'unavailable' in str(e) or 'no ' in str(e)
    else:
        raise SystemExit('explicit ' + b + ' did not raise')
print('OK')
""")
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr + r.stdout


def test_triton_on_cpu_needs_interpreter():
    r = _run("""
import torch, xaikernels
from xaikernels.ops.grad_cam import grad_cam_reduce
try:
    grad_cam_reduce(torch.randn(1, 2, 3), torch.randn(1, 2, 3), backend='triton')
except xaikernels.BackendUnavailableError as e:
    assert 'TRITON_INTERPRET' in str(e), e
    print('OK')
""", TRITON_INTERPRET="0")
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr + r.stdout


def test_info_cli():
    r = subprocess.run([sys.executable, "-m", "xaikernels.info"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "torch" in r.stdout and "cpp" in r.stdout and "grad_cam" in r.stdout
