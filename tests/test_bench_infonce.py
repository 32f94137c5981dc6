"""``xaikernels bench infonce`` module: rows, ratios, gradient check and the JSONL it appends."""
import json

import torch

from xaikernels import _backend, bench_infonce


def test_main_writes_rows(tmp_path, capsys):
    threads = torch.get_num_threads()
    argv = ["--n", "3", "32", "--k", "64", "--d", "8", "--repeats", "2", "--out-dir", str(tmp_path)]
    assert bench_infonce.main(argv) == 0
    assert torch.get_num_threads() == threads  # restored
    out = capsys.readouterr().out
    assert "time ratio" in out and "wrote 4 rows" in out
    rows = [json.loads(line) for line in (tmp_path / "infonce_cli.jsonl").read_text().splitlines()]
    assert [(r["provider"], r["N"]) for r in rows] == [("xaikernels", 3), ("reference", 3),
                                                      ("xaikernels", 32), ("reference", 32)]
    for r in rows:
        assert r["K"] == 64 and r["D"] == 8 and r["threads"] == 1 and r["bench"] == "infonce"
        assert len(r["times_ms"]) == 2 and r["median_ms"] > 0 and r["peak_bytes"] > 0
        assert "commit" in r and "torch" in r["versions"]
    fused, ref = rows[2], rows[3]
    # auto picks the compiled op whenever it is built (the reference otherwise).
    has_cpp = _backend._available("cpp", "infonce_lse", torch.device("cpu")) is None
    assert fused["backend"] == ("cpp" if has_cpp else "reference") and ref["backend"] == "torch-autograd"
    assert fused["time_ratio"] == round(fused["median_ms"] / ref["median_ms"], 4)
    assert fused["max_abs_grad_diff"] < 1e-6
    # At N=32 the reference builds a 32 x 2048 score matrix (256 KiB) and its softmax; the fused op
    # needs little beyond the gradients (66 KiB).
    assert fused["score_matrix_bytes"] == 32 * 32 * 64 * 4
    assert fused["peak_bytes"] < ref["peak_bytes"] and fused["peak_ratio"] < 0.5  # 0.20 measured

    # Appending, not overwriting.
    assert bench_infonce.main(argv[:-2] + ["--out-dir", str(tmp_path), "--no-memory"]) == 0
    rows2 = [json.loads(line) for line in (tmp_path / "infonce_cli.jsonl").read_text().splitlines()]
    assert len(rows2) == 8 and rows2[-1]["peak_bytes"] is None and rows2[-2]["peak_ratio"] is None


def test_measure_exclude_self_float64_matches_reference():
    fused, ref = bench_infonce.measure(5, 7, 4, exclude_self=True, dtype=torch.float64, repeats=1, memory=False)
    assert fused["exclude_self"] and fused["dtype"] == "float64"
    assert fused["max_abs_grad_diff"] < 1e-12


def test_bad_arguments(tmp_path, capsys):
    assert bench_infonce.main(["--n", "0", "--no-write"]) == 2
    assert "--n must be >= 1" in capsys.readouterr().err
    assert bench_infonce.main(["--n", "1", "--exclude-self", "--no-write"]) == 2
    assert bench_infonce.main(["--n", "2", "--k", "3", "--d", "2", "--backend", "nope", "--no-write"]) == 2
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "infonce_cli.jsonl").exists()
