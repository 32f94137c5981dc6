"""Compile-only resource report of the Triton kernels (InfoNCE; with --lrp the LRP rules) for an H100 (sm_90), without a GPU.

Triton compiles ahead of time for a named target (``triton.compile(ASTSource, target=GPUTarget(
"cuda", 90, 32))``, with the ``ptxas`` and ``cuobjdump`` its wheel bundles), so the shared memory a
launch needs and each thread's registers and stack (spills) can be read on a machine with no GPU.
For every entry of ``GPU_TILES`` (:mod:`xaikernels.kernels.triton.infonce`) this compiles the
three tile kernels (the forward logsumexp ``lse``; the backward's ``dX`` and ``dY`` branches of
``_grad_kernel``) and reports shared memory, registers and stack bytes; ``--former`` adds the tiles
the kernels used before the table (32 × 64 rows on 4 warps, what the H100 run of ``gpu.md`` used).

Usage (repository root)::

    .venv/bin/python bench/triton_resources.py [--former] [--lrp] [--all]  # → bench/results/triton_resources.md
    .venv/bin/python bench/triton_resources.py --check --widest   # exit 1 if a launch would not fit

``--check`` compiles the widest InfoNCE tiles and every other kernel (``--all``'s set) and fails
when one needs more than 99 KiB of shared memory per block (the smallest opt-in limit among sm_80-sm_90 GPUs; an H100 allows 227 KiB): the launch
would fail there.  The test suite runs it on the widest entries.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # compile, do not interpret (before the kernels are defined)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

ROOT = Path(__file__).resolve().parents[1]
H100_SMEM = 232448  # bytes of shared memory a block may opt in to on sm_90
SMEM_LIMIT = 101376  # 99 KiB: the smallest opt-in limit among sm_80-sm_90 GPUs (sm_86 / sm_89)


def _tools():
    import triton

    base = Path(triton.backends.nvidia.__file__).parent / "bin"
    return base / "cuobjdump"


def usage(fn, signature, constexprs, num_warps):
    """(shared bytes, registers per thread, stack bytes per thread) of one compiled kernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ck = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                        target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(ck.asm["cubin"])
    try:
        out = subprocess.run([str(_tools()), "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    finally:
        os.unlink(f.name)
    fields = dict(tok.split(":", 1) for line in out.splitlines() if line.strip().startswith("REG")
                  for tok in line.split())
    return int(ck.metadata.shared), int(fields["REG"]), int(fields["STACK"])


def kernels(dt: str, br: int, bj: int, bd: int, warps: int):
    """Usage of the three tile kernels for input dtype ``dt`` ("fp32", "bf16", "fp64")."""
    import triton.language as tl

    from xaikernels.kernels.triton import infonce as k

    acc = tl.float64 if dt == "fp64" else tl.float32
    a = "*fp64" if dt == "fp64" else "*fp32"
    lse = {"X": "*" + dt, "Y": "*" + dt, "TAU": a, "LSE": a, "N": "i32", "K": "i32", "D": "i32",
           "EXCLUDE": "constexpr", "BLOCK_R": "constexpr", "BLOCK_J": "constexpr", "BLOCK_D": "constexpr",
           "ACC": "constexpr", "M0": "constexpr"}
    grad = {"X": "*" + dt, "Y": "*" + dt, "TAU": a, "LSE": a, "G": a, "C": a, "DX": "*" + dt, "DY": "*" + dt,
            "N": "i32", "K": "i32", "D": "i32", "EXCLUDE": "constexpr", "GRAD_X": "constexpr",
            "BLOCK_R": "constexpr", "BLOCK_J": "constexpr", "BLOCK_D": "constexpr", "ACC": "constexpr"}
    tiles = {"BLOCK_R": br, "BLOCK_J": bj, "BLOCK_D": bd, "ACC": acc, "EXCLUDE": True}
    return {"lse": usage(k._lse_kernel, lse, {**tiles, "M0": k._M0}, warps),
            "dX": usage(k._grad_kernel, grad, {**tiles, "GRAD_X": True}, warps),
            "dY": usage(k._grad_kernel, grad, {**tiles, "GRAD_X": False}, warps)}


def lrp_kernels(dt: str, rule: int, warps: int = 4):
    """Usage of the LRP rule kernels' forward and backward for ``rule`` (their launch: 32 x 32 x 32
    tiles on ``warps`` warps, for large layers)."""
    import triton.language as tl

    from xaikernels.kernels.triton import lrp as L

    acc = tl.float64 if dt == "fp64" else tl.float32
    a = "*" + dt
    common = {"M": "i32", "O": "i32", "I": "i32", "sxm": "i32", "sxi": "i32", "slm": "i32", "sli": "i32"}
    fwd = {"X": a, "W": a, "B": a, "LO": a, "HI": a, "Z": a, "S1": a, "S2": a, **common,
           **{k: "fp32" for k in ("EPS_HI", "EPS_LO", "GAMMA_HI", "GAMMA_LO")},
           **{k: "constexpr" for k in ("RULE", "HAS_BIAS", "BM", "BO", "BK", "ACC")}}
    bwd = {"R": a, "X": a, "W": a, "LO": a, "HI": a, "S1": a, "S2": a, "OUT": a, **common, "ssm": "i32",
           **{k: "fp32" for k in ("ALPHA_HI", "ALPHA_LO", "BETA_HI", "BETA_LO", "GAMMA_HI", "GAMMA_LO")},
           **{k: "constexpr" for k in ("RULE", "BM", "BO", "BI", "ACC")}}
    return {"fwd": usage(L._fwd_kernel, fwd, {"RULE": rule, "HAS_BIAS": True, "BM": 32, "BO": 32, "BK": 32,
                                              "ACC": acc}, warps),
            "bwd": usage(L._bwd_kernel, bwd, {"RULE": rule, "BM": 32, "BO": 32, "BI": 32, "ACC": acc}, warps)}


def other_kernels():
    """(name, usage) of the remaining Triton kernels at their GPU launch tiles, fp32 and fp64:
    Grad-CAM's two kernels, the bottleneck's (Philox noise or given, forward and backward), the
    path / noise batch and the streaming accumulation (every mode)."""
    import triton.language as tl

    from xaikernels.kernels.triton import bottleneck as B
    from xaikernels.kernels.triton import grad_cam as G
    from xaikernels.kernels.triton import paths as PT

    out = []
    for dt in ("fp32", "fp64"):
        acc = tl.float64 if dt == "fp64" else tl.float32
        p = "*" + dt
        row = {k: p for k in ("G", "A", "GO", "O", "W", "DA", "DG")}
        row.update(C="i32", S="i32", BLOCK_S="constexpr", BACKWARD="constexpr", RELU="constexpr", ACC="constexpr")
        for bw in (False, True):
            out.append((f"grad_cam row {dt} backward={bw}", usage(
                G._row_kernel, row, {"BLOCK_S": 4096, "BACKWARD": bw, "RELU": True, "ACC": acc}, 4)))
        ws = {"A": p, "W": p, "OUT": p, "C": "i32", "S": "i32", "BLOCK_C": "constexpr", "BLOCK_S": "constexpr",
              "RELU": "constexpr", "ACC": "constexpr"}
        out.append((f"grad_cam weighted sum {dt}", usage(
            G._weighted_sum_kernel, ws, {"BLOCK_C": 64, "BLOCK_S": 1024, "RELU": True, "ACC": acc}, 4)))
        ib = {k: p for k in ("X", "AL", "NZ", "MU", "SD", "EPS", "GZ", "GK", "Z", "KL", "DX", "DA")}
        ib.update(C="i32", S="i32", seed="i64", **{k: "constexpr" for k in (
            "ALPHA_PER_CH", "HAS_NOISE", "BACKWARD", "BLOCK_C", "BLOCK_S", "ACC")})
        for noise in (False, True):
            for bw in (False, True):
                out.append((f"info_bottleneck {dt} noise={'given' if noise else 'philox'} backward={bw}", usage(
                    B._bottleneck_kernel, ib, {"ALPHA_PER_CH": False, "HAS_NOISE": noise, "BACKWARD": bw,
                                               "BLOCK_C": 16, "BLOCK_S": 256, "ACC": acc}, 4)))
        batch = {"X": p, "B": p, "ALPHA": "*fp64", "SIGMA": p, "EPS": "*fp32", "OUT": p, "seed": "i64", "p0": "i64",
                 "N": "i32", "M": "i32", **{k: "constexpr" for k in ("NOISE", "HAS_EPS", "ACC", "BLOCK")}}
        for noise in (False, True):
            out.append((f"paths batch {dt} noise={noise}", usage(
                PT._batch_kernel, batch, {"NOISE": noise, "HAS_EPS": False, "ACC": acc, "BLOCK": 4096}, 4)))
        accum = {"A": p, "Bm": p, "G": "*fp32", "W": p, "p0": "i64", "rows": "i32", "N": "i32", "M": "i32",
                 **{k: "constexpr" for k in ("MODE", "ACC", "BLOCK")}}
        for mode in (0, 1, 2):
            out.append((f"paths accumulate {dt} mode={mode}", usage(
                PT._accumulate_kernel, accum, {"MODE": mode, "ACC": acc, "BLOCK": 4096}, 4)))
    return out


def configs(widest: bool, former: bool):
    from xaikernels.kernels.triton.infonce import GPU_TILES

    out = []
    for dt in ("fp32", "bf16", "fp64"):
        table = GPU_TILES[dt == "fp64"]
        bds = [max(table)] if widest else sorted(table)
        for bd in bds:
            out.append((dt, bd, *table[bd], "table"))
            if former and dt != "fp64" and bd in (128, 256):
                out.append((dt, bd, 32, 64, 4, "former"))
    return out


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widest", action="store_true", help="only the widest BLOCK_D of each dtype")
    ap.add_argument("--former", action="store_true", help="add the tiles used before GPU_TILES")
    ap.add_argument("--check", action="store_true", help="exit 1 if shared memory exceeds 99 KiB; write nothing")
    ap.add_argument("--lrp", action="store_true", help="add the LRP rule kernels (report only)")
    ap.add_argument("--all", action="store_true", help="add the other kernels (Grad-CAM, bottleneck, paths)")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    rows, over = [], []
    t0 = time.perf_counter()
    for dt, bd, br, bj, warps, which in configs(args.widest, args.former):
        res = kernels(dt, br, bj, bd, warps)
        rows.append((dt, bd, br, bj, warps, which, res))
        line = " ".join(f"{k}: smem {v[0]} reg {v[1]} stack {v[2]}" for k, v in res.items())
        print(f"{dt} BLOCK_D={bd} {br}x{bj} w{warps} ({which}): {line}", flush=True)
        if which == "table" and max(v[0] for v in res.values()) > SMEM_LIMIT:
            over.append((dt, bd))
    others = other_kernels() if (args.check or args.all) else []
    for name, res in others:
        print(f"{name}: smem {res[0]} reg {res[1]} stack {res[2]}", flush=True)
        if res[0] > SMEM_LIMIT:
            over.append(name)
    print(f"compiled {3 * len(rows) + len(others)} kernels for sm_90")
    if args.check:
        if over:
            print(f"shared memory past {SMEM_LIMIT} bytes: {over}")
            return 1
        return 0
    import triton

    command = shlex.join([".venv/bin/python", os.path.relpath(__file__, ROOT), *argv])
    lines = ["# Triton kernels: compiled resources on sm_90 (no GPU needed)", "", "## InfoNCE tile kernels", "",
             f"`{command}` ({time.strftime('%Y-%m-%d %H:%M')}; Triton {triton.__version__}, compiled for "
             f"`GPUTarget('cuda', 90, 32)`, {time.perf_counter() - t0:.0f} s).  Per kernel: shared memory per block "
             "(bytes; sm_86/89 GPUs allow 101,376, an H100 232,448), registers per thread, stack bytes per thread (spills to local "
             "memory; 0 = none).  `table` = the automatic tiles (`GPU_TILES`), `former` = the tiles before it.", "",
             "| input | BLOCK_D | tiles (R × J, warps) | | lse smem / reg / stack | dX smem / reg / stack "
             "| dY smem / reg / stack |", "|---|---|---|---|---|---|---|"]
    for dt, bd, br, bj, warps, which, res in rows:
        cells = " | ".join(f"{v[0]} / {v[1]} / {v[2]}" for v in res.values())
        lines.append(f"| {dt} | {bd} | {br} × {bj}, {warps} | {which} | {cells} |")
    if args.lrp:
        from xaikernels.kernels.triton.lrp import _CODE

        lines += ["", "## LRP rule kernels (their launch for large layers: 32 × 32 × 32 tiles, 4 warps)", "",
                  "| input | rule | fwd smem / reg / stack | bwd smem / reg / stack |", "|---|---|---|---|"]
        for dt in ("fp32", "fp64"):
            for name, code in _CODE.items():
                res = lrp_kernels(dt, code)
                print(f"lrp {dt} {name}: {res}", flush=True)
                lines.append(f"| {dt} | {name} | " + " | ".join(f"{v[0]} / {v[1]} / {v[2]}" for v in res.values()) + " |")
    if others:
        lines += ["", "## Other kernels (their GPU launch tiles)", "", "| kernel | smem / reg / stack |", "|---|---|"]
        lines += [f"| {name} | {res[0]} / {res[1]} / {res[2]} |" for name, res in others]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "triton_resources.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
