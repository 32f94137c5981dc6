"""Run a snippet in a fresh process with ``NUMBA_BOUNDSCHECK=1`` and an empty Numba cache, so
that every kernel it calls is compiled with bounds checks: an out-of-bounds index raises
``IndexError`` there instead of reading or corrupting other memory."""
import os
import subprocess
import sys


def assert_in_bounds(code: str, cache_dir, timeout: int = 900, **env) -> None:
    """Run ``code`` (which prints ``OK`` when it is done) bounds-checked; fail with its output
    otherwise.  ``env``: further environment variables."""
    full = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(cache_dir), **env)
    r = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0 and "OK" in r.stdout, f"rc={r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"
