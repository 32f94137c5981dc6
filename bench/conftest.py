"""Micro-benchmark configuration: one torch thread, as the runner (``xaikernels.benchmark``).

``pytest tests`` (``make test``) never collects this folder: pyproject's ``testpaths`` is
``tests``; run the micro-benchmarks explicitly with
``.venv/bin/python -m pytest bench/test_micro_grad_cam.py --benchmark-only``.
"""

import os

os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("XAIKERNELS_BENCH_THREADS", "1")))
