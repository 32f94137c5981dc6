"""Stem coalition tables (xaikernels.methods._stem): the gather kernel against its reference
twin, tail∘gather against the model on the perturbed images for several stem geometries, the
tracer's refusals, and lime_image with and without tables."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _boundscheck import assert_in_bounds
from _models import MLP, SmallCNN
from xaikernels.methods import _stem as S
from xaikernels.methods.lime import lime_image
from xaikernels.ops import perturb as P
from xaikernels.reference import perturb as R

from test_lime_ops import BACKENDS, HAS_NUMBA


# --------------------------------------------------------------------------------- the ops
def _segs_case(Q, M, F_, seed):
    rng = np.random.default_rng(seed)
    m = rng.integers(0, min(M, F_) + 1, Q)
    segs = -np.ones((Q, max(M, 1)), np.int32)
    for q in range(Q):
        segs[q, :m[q]] = rng.choice(F_, m[q], replace=False)
    return segs, rng


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("Q,M,F_,S_", [(1, 1, 1, 1), (37, 3, 11, 9), (64, 7, 40, 300), (5, 0, 4, 2), (3, 20, 25, 50)])
def test_stem_rows_number_every_distinct_key(backend, Q, M, F_, S_):
    segs, rng = _segs_case(Q, M, F_, Q + M)
    masks = rng.integers(0, 3, (S_, F_)).astype(np.uint8)  # any non-zero entry keeps its segment
    index, row_pos, row_key = P.stem_rows(segs, masks, backend=backend)
    assert index.dtype == np.int32 and index.shape == (S_, Q)
    keys = np.array([[sum(int(masks[s, f] != 0) << j for j, f in enumerate(segs[q]) if f >= 0) for q in range(Q)]
                     for s in range(S_)])
    np.testing.assert_array_equal(row_key[index], keys)
    np.testing.assert_array_equal(row_pos[index], np.broadcast_to(np.arange(Q), (S_, Q)))
    assert len(set(zip(row_pos.tolist(), row_key.tolist()))) == len(row_pos)  # no duplicate rows
    assert np.all(np.diff(row_pos) >= 0)
    if HAS_NUMBA:
        other = P.stem_rows(segs, masks, backend="reference" if backend == "numba" else "numba")
        for a, b in zip((index, row_pos, row_key), other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("S_,Q,C,T", [(1, 1, 1, 1), (9, 37, 5, 50), (33, 64, 8, 700), (70, 300, 16, 5000)])
def test_stem_gather_equals_indexing(backend, dtype, S_, Q, C, T):
    rng = np.random.default_rng(S_ + Q)
    table = rng.standard_normal((T, C)).astype(dtype)
    index = rng.integers(0, T, (S_, Q)).astype(np.int32)
    out = np.full((S_, Q, C), np.nan, dtype)
    P.stem_gather(table, index, out, backend=backend)
    np.testing.assert_array_equal(out, table[index])
    t = torch.empty(S_, Q, C, dtype=torch.float32 if dtype == np.float32 else torch.float64)
    P.stem_gather(torch.from_numpy(table), index, t, backend=backend)  # tensors in and out
    np.testing.assert_array_equal(t.numpy(), table[index])
    fn = P.stem_gatherer(table, index, backend=backend)  # a loop over batches: rows s0..s1-1
    part = np.full((S_ - S_ // 2, Q, C), np.nan, dtype)
    np.testing.assert_array_equal(fn(S_ // 2, S_, part), table[index[S_ // 2:]])
    with pytest.raises(ValueError, match="out must be"):
        fn(0, S_, part if S_ > 1 else np.empty((S_, Q, C + 1), dtype))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("Hp,Wp,window,step,n_ids", [(1, 1, (1, 1), (1, 1), 1), (11, 9, (3, 3), (2, 1), 7),
                                                      (20, 17, (6, 4), (2, 3), 40), (8, 8, (8, 8), (1, 1), 64)])
def test_stem_windows_list_each_windows_segments(backend, Hp, Wp, window, step, n_ids):
    rng = np.random.default_rng(Hp * Wp)
    seg_pad = rng.integers(0, n_ids, (Hp, Wp))
    seg_pad[:1] = -1  # a padded row
    n_rows, n_cols = (Hp - window[0]) // step[0] + 1, (Wp - window[1]) // step[1] + 1
    segs, rank = P.stem_windows(seg_pad, n_rows, n_cols, window, step, backend=backend)
    assert segs.dtype == np.int32 and rank.shape == (n_rows * n_cols, window[0] * window[1])
    for q in range(n_rows * n_cols):
        i, j = divmod(q, n_cols)
        w = seg_pad[i * step[0]: i * step[0] + window[0], j * step[1]: j * step[1] + window[1]].reshape(-1)
        listed = segs[q][segs[q] >= 0]
        assert sorted(listed.tolist()) == sorted(set(w[w >= 0].tolist()))
        assert np.all(segs[q][len(listed):] == -1)
        np.testing.assert_array_equal(np.where(w >= 0, listed[np.maximum(rank[q], 0)] if len(listed) else -1, -1),
                                      np.where(w >= 0, w, -1))
        assert np.all((rank[q] < 0) == (w < 0))
    if HAS_NUMBA:
        other = P.stem_windows(seg_pad, n_rows, n_cols, window, step,
                               backend="reference" if backend == "numba" else "numba")
        np.testing.assert_array_equal(segs, other[0])
        np.testing.assert_array_equal(rank, other[1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stem_patches_follow_the_keys(backend, dtype):
    rng = np.random.default_rng(0)
    Hp, Wp, C, window, step = 9, 10, 3, (3, 4), (2, 3)
    seg_pad = rng.integers(0, 5, (Hp, Wp))
    seg_pad[0] = -1
    n_rows, n_cols = (Hp - 3) // 2 + 1, (Wp - 4) // 3 + 1
    segs, rank = P.stem_windows(seg_pad, n_rows, n_cols, window, step)
    x, fill = rng.standard_normal((Hp, Wp, C)).astype(dtype), rng.standard_normal((Hp, Wp, C)).astype(dtype)
    x[0], fill[0] = 0, 0  # padding is zero in both
    masks = rng.integers(0, 2, (13, 5)).astype(np.uint8)
    index, row_pos, row_key = P.stem_rows(segs, masks)
    out = P.stem_patches(x, fill, rank, row_pos, row_key, n_cols, step, window, backend=backend)
    assert out.shape == (len(row_pos), C, 3, 4) and out.dtype == dtype
    for s in (0, 7, 12):  # the patch of sample s at position q is its perturbed image's window
        img = np.where(np.where(seg_pad >= 0, masks[s][np.maximum(seg_pad, 0)], 0)[..., None] != 0, x, fill)
        for q in range(len(segs)):
            i, j = divmod(q, n_cols)
            np.testing.assert_array_equal(out[index[s, q]], img[i * 2: i * 2 + 3, j * 3: j * 3 + 4].transpose(2, 0, 1))
    if HAS_NUMBA:
        other = P.stem_patches(x, fill, rank, row_pos, row_key, n_cols, step, window,
                               backend="reference" if backend == "numba" else "numba")
        np.testing.assert_array_equal(out, other)


def test_stem_ops_reject_bad_input():
    segs, rng = _segs_case(6, 2, 5, 0)
    masks = np.ones((4, 5), np.uint8)
    bad = segs.copy()
    bad[0] = [-1, 2]
    with pytest.raises(ValueError, match="then -1"):
        P.stem_rows(bad, masks)
    with pytest.raises(ValueError, match="the masks have 3"):
        P.stem_rows(np.full((1, 1), 4, np.int32), masks[:, :3])
    with pytest.raises(ValueError, match="at most 20"):
        P.stem_rows(np.zeros((1, 21), np.int32), masks)
    table = rng.standard_normal((7, 3))
    index = np.zeros((4, 6), np.int32)
    with pytest.raises(ValueError, match="out must be"):
        P.stem_gather(table, index, np.empty((4, 6, 2)))
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        P.stem_gather(table, index + 7, np.empty((4, 6, 3)))
    with pytest.raises(ValueError, match="int32"):
        P.stem_gather(table, index.astype(np.int64), np.empty((4, 6, 3)))
    with pytest.raises(ValueError, match="float32/float64"):
        P.stem_gather(table.astype(np.int64), index, np.empty((4, 6, 3), np.int64))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H,W,window,step,k", [(9, 7, (3, 3), (1, 1), 4), (1, 1, (1, 1), (1, 1), 1),
                                               (13, 11, (4, 5), (2, 3), 7)])
def test_segment_windows_sum_to_each_rows_window(backend, dtype, H, W, window, step, k):
    """stem_combine over stem_segment_patches' windows (the identity as the linear map) gives
    stem_patches' window of every row; integer-valued images, so the sums are exact."""
    rng = np.random.default_rng(H * W + k)
    RH, RW = window
    pad = ((1, 1), (2, 0))
    seg = np.pad(rng.integers(0, k, (H, W)), pad, constant_values=-1)
    x = np.pad(rng.integers(-8, 9, (H, W, 3)).astype(dtype), pad + ((0, 0),))
    fill = np.pad(rng.integers(-8, 9, (H, W, 3)).astype(dtype), pad + ((0, 0),))
    n_rows, n_cols = (seg.shape[0] - RH) // step[0] + 1, (seg.shape[1] - RW) // step[1] + 1
    segs, pix_rank = P.stem_windows(seg, n_rows, n_cols, window, step, backend=backend)
    masks = (rng.random((29, k)) < 0.5).astype(np.uint8)
    _, row_pos, row_key = P.stem_rows(segs, masks, backend=backend)
    offsets = np.concatenate([[0], np.cumsum(1 + (segs >= 0).sum(1))])
    win = P.stem_segment_patches(x, fill, pix_rank, offsets, n_cols, step, window, backend=backend)
    ref = R.stem_segment_patches(x, fill, pix_rank, offsets, n_cols, step[0], step[1], np.empty_like(win))
    np.testing.assert_array_equal(win, ref)
    assert win.shape == (offsets[-1], 3, RH, RW) and win.dtype == dtype
    rows = P.stem_combine(win.reshape(len(win), -1), offsets, row_pos, row_key, backend=backend)
    want = P.stem_patches(x, fill, pix_rank, row_pos, row_key, n_cols, step, window, backend="reference")
    np.testing.assert_array_equal(rows.reshape(want.shape), want)
    with pytest.raises(ValueError, match="segments"):
        P.stem_combine(win.reshape(len(win), -1), offsets, row_pos, row_key | (1 << 30), backend=backend)
    with pytest.raises(ValueError, match="offsets"):
        P.stem_segment_patches(x, fill, pix_rank, np.zeros_like(offsets), n_cols, step, window, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stem_combine_against_reference_and_batch_one(backend, dtype, tol):
    rng = np.random.default_rng(5)
    n_seg = np.array([0, 3, 1, 5])
    offsets = np.concatenate([[0], np.cumsum(1 + n_seg)])
    z = rng.standard_normal((offsets[-1], 37)).astype(dtype)
    row_pos = np.array([3, 1, 0, 3, 2])
    row_key = np.array([0b10110, 0b101, 0, 0b11111, 1])
    got = P.stem_combine(z, offsets, row_pos, row_key, backend=backend)
    want = np.stack([z[offsets[q]] + sum(z[offsets[q] + 1 + j] for j in range(5) if key >> j & 1)
                     for q, key in zip(row_pos, row_key)])
    rtol, atol = tol[torch.float32 if dtype == np.float32 else torch.float64]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    one = P.stem_combine(z, offsets, row_pos[:1], row_key[:1], backend=backend)
    np.testing.assert_array_equal(one, got[:1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("S_,Q,T", [(1, 1, 1), (7, 5, 9), (40, 13, 60)])
def test_stem_representatives_are_first_samples(backend, S_, Q, T):
    rng = np.random.default_rng(S_ + Q)
    index = rng.integers(0, T, (S_, Q)).astype(np.int32)
    rep = P.stem_representatives(index, backend=backend)
    assert rep.dtype == np.int64 and rep.shape == (int(index.max()) + 1,)
    for t in range(len(rep)):
        hit = np.nonzero((index == t).any(1))[0]
        assert rep[t] == (hit[0] if len(hit) else -1)
    with pytest.raises(ValueError, match="int32"):
        P.stem_representatives(index.astype(np.int64), backend=backend)


_LEVEL_GEOS = [
    dict(map_hw=(6, 5), window=(2, 2), step=(2, 2), origin=(0, 0), stride=(1, 1), pad=(1, 1), dilation=(1, 1),
         kernel=(3, 3)),
    dict(map_hw=(7, 9), window=(3, 3), step=(2, 2), origin=(-1, -1), stride=(2, 1), pad=(2, 0), dilation=(2, 1),
         kernel=(3, 2)),
    dict(map_hw=(1, 1), window=(1, 1), step=(1, 1), origin=(0, 0), stride=(1, 1), pad=(0, 0), dilation=(1, 1),
         kernel=(1, 1)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("geo", _LEVEL_GEOS)
def test_stem_level_ids_against_reference(backend, geo):
    rng = np.random.default_rng(sum(geo["map_hw"]))
    Hi, Wi = geo["map_hw"]
    R1, S_ = 23, 11
    index1 = rng.integers(0, R1, (S_, Hi * Wi)).astype(np.int32)
    n_cols, T = 4, 17
    rep, row_pos = rng.integers(0, S_, T), rng.integers(0, 3 * n_cols, T)
    got = P.stem_level_ids(index1, rep, row_pos, n_cols, n_rows1=R1, backend=backend, **geo)
    K = geo["kernel"][0] * geo["kernel"][1]
    assert got.dtype == np.int32 and got.shape == (T * geo["window"][0] * geo["window"][1], K)
    g = np.array([Hi, Wi, *geo["window"], *geo["step"], *geo["origin"], *geo["stride"], *geo["pad"],
                  *geo["dilation"], *geo["kernel"]])
    want = R.stem_level_ids(index1, rep, row_pos, n_cols, g, R1, np.empty_like(got))
    np.testing.assert_array_equal(got, want)
    assert got.min() >= 0 and got.max() <= R1 * K
    assert np.all((got % K == np.arange(K)) | (got == R1 * K))  # offset k in column k, or the zero row
    assert (got == R1 * K).any() or geo["pad"] == (0, 0)  # the padding reads the zero row
    one = P.stem_level_ids(index1, rep[:1], row_pos[:1], n_cols, n_rows1=R1, backend=backend, **geo)
    np.testing.assert_array_equal(one, got[:len(one)])
    with pytest.raises(ValueError, match="index1 rows"):
        P.stem_level_ids(index1, rep, row_pos, n_cols, n_rows1=R1 - 30, backend=backend, **geo)
    with pytest.raises(ValueError, match="rep"):
        P.stem_level_ids(index1, rep + S_, row_pos, n_cols, n_rows1=R1, backend=backend, **geo)


def _level_case(geo, C, dtype, T=17, seed=0):
    rng = np.random.default_rng(seed + C)
    Hi, Wi = geo["map_hw"]
    R1, S_, n_cols = 23, 11, 4
    K = geo["kernel"][0] * geo["kernel"][1]
    index1 = rng.integers(0, R1, (S_, Hi * Wi)).astype(np.int32)
    rep, row_pos = rng.integers(0, S_, T), rng.integers(0, 3 * n_cols, T)
    u = rng.standard_normal((R1 * K + 1, C)).astype(dtype)
    u[-1] = 0
    return index1, rep, row_pos, n_cols, u, R1, rng


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("geo", _LEVEL_GEOS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("C", [1, 5, 8, 16, 21, 33])
def test_stem_level_max_is_the_max_of_the_bag_sums(backend, geo, dtype, C):
    """The fused level rows equal embedding_bag over stem_level_ids' bags, reduced by max over
    each row's window (masked by ok): bit for bit (both sum in bag order), on whole vectors of
    channels and the channels past them; -inf for a window with nothing ok; one row alone."""
    index1, rep, row_pos, n_cols, u, R1, rng = _level_case(geo, C, dtype)
    T, per = len(rep), geo["window"][0] * geo["window"][1]
    ids = P.stem_level_ids(index1, rep, row_pos, n_cols, n_rows1=R1, **geo)
    z = F.embedding_bag(torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(u), mode="sum").view(T, per, C)
    ok = rng.random((T, per)) < 0.6
    ok[2] = False
    ok[5] = True
    for mask in (None, ok):
        got = P.stem_level_max(index1, rep, row_pos, n_cols, u, n_rows1=R1, ok=mask, backend=backend, **geo)
        assert got.dtype == dtype and got.shape == (T, C)
        zz = z if mask is None else z.masked_fill(~torch.from_numpy(mask)[:, :, None], -math.inf)
        np.testing.assert_array_equal(got, zz.max(1).values.numpy())
    assert np.all(np.isneginf(got[2])) and np.isfinite(got[5]).all()
    one = P.stem_level_max(index1, rep[:1], row_pos[:1], n_cols, u, n_rows1=R1, ok=ok[:1], backend=backend, **geo)
    np.testing.assert_array_equal(one, got[:1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("C", [16, 5])
def test_stem_level_max_propagates_nan_and_checks_input(backend, C):
    geo = _LEVEL_GEOS[0]
    index1, rep, row_pos, n_cols, u, R1, _ = _level_case(geo, C, np.float32)
    ids = P.stem_level_ids(index1, rep, row_pos, n_cols, n_rows1=R1, **geo)
    u[ids[0, 0], C - 1] = np.nan  # in the first row's first window output, last channel
    got = P.stem_level_max(index1, rep, row_pos, n_cols, u, n_rows1=R1, backend=backend, **geo)
    assert np.isnan(got[0, C - 1]) and not np.isnan(np.delete(got[0], C - 1)).any()
    with pytest.raises(ValueError, match="u must be"):
        P.stem_level_max(index1, rep, row_pos, n_cols, u[:-1], n_rows1=R1, backend=backend, **geo)
    with pytest.raises(ValueError, match="u must be"):
        P.stem_level_max(index1, rep, row_pos, n_cols, u.astype(np.float16), n_rows1=R1, backend=backend, **geo)
    with pytest.raises(ValueError, match="ok must be"):
        P.stem_level_max(index1, rep, row_pos, n_cols, u, n_rows1=R1, ok=np.ones((len(rep), 3), bool),
                         backend=backend, **geo)
    with pytest.raises(ValueError, match="index1 rows"):
        P.stem_level_max(index1, rep, row_pos, n_cols, u, n_rows1=R1 - 30, backend=backend, **geo)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk", [1, 4, 17, 100])
def test_stem_level_id_chunks_tile_the_bags(backend, chunk):
    """Chunks of stem_level_ids' bags, yielded in one reused buffer, are the bags."""
    geo = _LEVEL_GEOS[1]
    index1, rep, row_pos, n_cols, _, R1, _ = _level_case(geo, 1, np.float32)
    whole = P.stem_level_ids(index1, rep, row_pos, n_cols, n_rows1=R1, backend=backend, **geo)
    per = geo["window"][0] * geo["window"][1]
    seen = []
    for t0, t1, ids in P.stem_level_id_chunks(index1, rep, row_pos, n_cols, n_rows1=R1, chunk_rows=chunk,
                                              backend=backend, **geo):
        assert t1 - t0 <= chunk and ids.shape == ((t1 - t0) * per, whole.shape[1])
        np.testing.assert_array_equal(ids, whole[t0 * per:t1 * per])
        seen.append((t0, t1))
    assert seen[0][0] == 0 and seen[-1][1] == len(rep) and all(a[1] == b[0] for a, b in zip(seen, seen[1:]))
    with pytest.raises(ValueError, match="chunk_rows"):
        next(P.stem_level_id_chunks(index1, rep, row_pos, n_cols, n_rows1=R1, chunk_rows=0, backend=backend, **geo))


# ------------------------------------------------------------------- tables against the model
class TwoPools(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 5, 3, padding=1)
        self.b = nn.MaxPool2d(2)
        self.c = nn.Conv2d(5, 6, 3, padding=1)
        self.p = nn.MaxPool2d(2)
        self.fc = nn.LazyLinear(4)

    def forward(self, x):
        return self.fc(self.p(torch.relu(self.c(self.b(F.relu(self.a(x)))))).flatten(1))


class Strided(nn.Module):
    """Strided, padded 5×5 conv, eval BatchNorm, LeakyReLU, overlapping average pool; then a
    dilated grouped conv with a GELU (a stage without pool), then a head."""

    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, 4, 5, stride=2, padding=2), nn.BatchNorm2d(4), nn.LeakyReLU(0.2),
                               nn.AvgPool2d(3, stride=2),
                               nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2), nn.GELU(),
                               nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(4, 3)
        bn = self.f[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        return self.fc(self.f(x).flatten(1))


class Rect(nn.Module):
    """Non-square kernel, stride and padding; Tanh; no pool."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, (3, 5), stride=(1, 2), padding=(2, 1))
        self.act = nn.Tanh()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.act(self.conv(x)).mean((2, 3)))


class StaticSame(nn.Module):
    """efficientnet_pytorch's static 'same' padding: an asymmetric ZeroPad2d and a functional
    strided conv2d on the module's own parameters; then ``padding="same"`` convolutions
    (one with an even kernel: the odd pixel of padding goes after)."""

    def __init__(self):
        super().__init__()
        self.pad = nn.ZeroPad2d((0, 1, 1, 0))
        self.w = nn.Parameter(torch.randn(4, 3, 3, 3) * 0.3)
        self.b = nn.Parameter(torch.randn(4) * 0.1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU6()
        self.same = nn.Conv2d(4, 4, 4, padding="same")
        self.same2 = nn.Conv2d(4, 3, 3, padding="same", dilation=2)
        self.head = nn.Linear(3, 2)
        self.bn.running_mean.uniform_(-0.3, 0.3)

    def forward(self, x):
        y = self.act(self.bn(F.conv2d(self.pad(x), self.w, self.b, stride=2)))
        return self.head(torch.tanh(self.same2(F.relu(self.same(y)))).mean((2, 3)))


class ResNetStem(nn.Module):
    """ResNet's stem (7×7/2 conv, BatchNorm, ReLU, 3×3/2 max pool padded by 1), then a conv
    block with a padded average pool that counts its padding, then one that does not (not a
    stem stage: the tracer stops before it)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1)
        self.avg = nn.AvgPool2d(3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(5, 4, 1)
        self.avg_excl = nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False)
        self.fc = nn.LazyLinear(3)
        self.bn1.running_mean.uniform_(-0.2, 0.2)

    def forward(self, x):
        y = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        y = self.avg(torch.relu(self.conv2(y)))
        return self.fc(self.avg_excl(self.conv3(y)).flatten(1))


def _blobs(H, W, k, seed):
    """k Voronoi cells of random centres, relabelled 0..F-1 without gaps."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(0, [H, W], (k, 2))
    yy, xx = np.mgrid[:H, :W]
    lab = np.argmin((yy[..., None] - c[:, 0]) ** 2 + (xx[..., None] - c[:, 1]) ** 2, -1)
    return np.unique(lab, return_inverse=True)[1].reshape(H, W)


def _grid(H, W, r, c):
    return (np.arange(H)[:, None] * r // H) * c + (np.arange(W)[None, :] * c // W)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
@pytest.mark.parametrize("arch,H,W,seg_kind", [(TwoPools, 17, 13, "blobs"), (Strided, 23, 19, "grid"),
                                               (Rect, 11, 14, "blobs"), (SmallCNN, 9, 12, "grid"),
                                               (StaticSame, 15, 12, "blobs"), (ResNetStem, 29, 23, "blobs")])
@pytest.mark.parametrize("by_segment", [False, True])
def test_tail_of_gather_equals_model_on_perturbed_images(arch, H, W, seg_kind, dtype, backend, tol, by_segment):
    torch.manual_seed(0)
    model = arch().eval()
    model(torch.zeros(1, 3, H, W))  # materialise lazy layers
    model = model.to(dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, H, W, generator=g, dtype=dtype)
    fill = torch.rand(3, H, W, generator=g, dtype=dtype)
    seg = _blobs(H, W, 6, 2) if seg_kind == "blobs" else _grid(H, W, 3, 2)
    Fn = int(seg.max()) + 1
    masks = (np.random.default_rng(3).random((23, Fn)) < 0.5).astype(np.uint8)
    masks[0], masks[1] = 1, 0
    imgs = torch.empty(23, 3, H * W, 1, dtype=dtype)
    P.build_perturbed(P.as_apb(x, "chw"), P.as_apb(fill, "chw"), seg.reshape(-1), masks, imgs)
    with torch.no_grad():
        want = model(imgs.reshape(23, 3, H, W))
    stem = S.trace_stem(model)
    rtol, atol = tol[dtype]
    for depth in range(1, len(stem.stages) + 1):
        plan = S.plan_stem(stem, S.windows(stem, depth, seg.reshape(-1), H, W), x, fill, masks, backend=backend,
                           by_segment=by_segment)
        assert plan.rows <= 23 * plan.index.shape[1]
        tail = stem.tail(depth)
        buf = torch.empty((23,) + plan.out_hwc, dtype=dtype)
        plan.gather(0, 23, buf.view(23, -1, plan.out_hwc[2]))
        with torch.no_grad():
            got = tail(buf.permute(0, 3, 1, 2))
        torch.testing.assert_close(got, want, rtol=10 * rtol, atol=10 * atol)
        # batch 1
        plan.gather(5, 6, buf[:1].view(1, -1, plan.out_hwc[2]))
        with torch.no_grad():
            torch.testing.assert_close(tail(buf[:1].permute(0, 3, 1, 2)), want[5:6], rtol=10 * rtol, atol=10 * atol)


@pytest.mark.parametrize("by_segment", [None, False, True])
def test_plan_refuses_tables_past_the_element_cap(monkeypatch, by_segment):
    model = TwoPools().eval()
    model(torch.zeros(1, 3, 17, 13))
    g = torch.Generator().manual_seed(4)
    x, fill = torch.rand(3, 17, 13, generator=g), torch.rand(3, 17, 13, generator=g)
    seg = _blobs(17, 13, 6, 2).reshape(-1)
    masks = (np.random.default_rng(3).random((40, 6)) < 0.5).astype(np.uint8)
    stem = S.trace_stem(model)
    wd = S.windows(stem, 1, seg, 17, 13)
    S.plan_stem(stem, wd, x, fill, masks, by_segment=by_segment)  # fits under the real cap
    monkeypatch.setattr(S, "MAX_TABLE_ELEMENTS", 3 * 4 * 4)
    with pytest.raises(S.StemUnavailable, match="would need"):
        S.plan_stem(stem, wd, x, fill, masks, by_segment=by_segment)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
@pytest.mark.parametrize("arch,H,W", [(TwoPools, 17, 13), (SmallCNN, 9, 12), (StaticSame, 15, 12),
                                      (ResNetStem, 29, 23), (Strided, 23, 19)])
def test_levels_give_the_model_on_perturbed_images(arch, H, W, dtype, backend, tol):
    """Tables built level on level (each stage's rows from the previous table's) give the
    model's outputs through the tail, at every depth; a grouped convolution is refused."""
    torch.manual_seed(0)
    model = arch().eval()
    model(torch.zeros(1, 3, H, W))
    model = model.to(dtype)
    g = torch.Generator().manual_seed(5)
    x, fill = torch.rand(3, H, W, generator=g, dtype=dtype), torch.rand(3, H, W, generator=g, dtype=dtype)
    seg = _blobs(H, W, 7, 1).reshape(-1)
    masks = (np.random.default_rng(2).random((31, 7)) < 0.5).astype(np.uint8)
    imgs = torch.empty(31, 3, H * W, 1, dtype=dtype)
    P.build_perturbed(P.as_apb(x, "chw"), P.as_apb(fill, "chw"), seg, masks, imgs)
    with torch.no_grad():
        want = model(imgs.reshape(31, 3, H, W))
    stem = S.trace_stem(model)
    plan = S.plan_stem(stem, S.windows(stem, 1, seg, H, W), x, fill, masks, backend=backend)
    rtol, atol = tol[dtype]
    built = 0
    while plan.depth < len(stem.stages):
        wd = S.windows(stem, plan.depth + 1, seg, H, W)
        if stem.stages[plan.depth].conv.groups != 1:
            with pytest.raises(S.StemUnavailable, match="grouped"):
                S.level_plan(stem, plan, wd, masks, backend=backend)
            break
        plan = S.level_plan(stem, plan, wd, masks, backend=backend)
        built += 1
        assert plan.levels == built + 1 and plan.rows <= 31 * plan.index.shape[1]
        buf = torch.empty((31,) + plan.out_hwc, dtype=dtype)
        plan.gather(0, 31, buf.view(31, -1, plan.out_hwc[2]))
        with torch.no_grad():
            got = stem.tail(plan.depth)(buf.permute(0, 3, 1, 2))
        torch.testing.assert_close(got, want, rtol=10 * rtol, atol=10 * atol)
    assert built >= (0 if arch is Strided else 1)


class PaddedMaxLevel(nn.Module):
    """A second stage whose max pool is padded (its windows at the border hold padding), 19
    channels (a vector of 16 and 3 more): a level's rows with ``ok`` masks."""

    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                               nn.Conv2d(4, 19, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1))
        self.fc = nn.LazyLinear(3)

    def forward(self, x):
        return self.fc(self.f(x).flatten(1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch,H,W", [(TwoPools, 17, 13), (SmallCNN, 9, 12), (PaddedMaxLevel, 19, 14)])
def test_level_rows_by_max_equal_the_chunked_sums(arch, H, W, backend):
    """A max-pool stage's level rows made by stem_level_max (max of the sums, then bias and
    steps) are the chunked embedding_bag path's (bias, steps, masked max) exactly."""
    torch.manual_seed(0)
    model = arch().eval()
    model(torch.zeros(1, 3, H, W))
    g = torch.Generator().manual_seed(5)
    x, fill = torch.rand(3, H, W, generator=g), torch.rand(3, H, W, generator=g)
    seg = _blobs(H, W, 7, 1).reshape(-1)
    masks = (np.random.default_rng(2).random((31, 7)) < 0.5).astype(np.uint8)
    stem = S.trace_stem(model)
    plan = S.plan_stem(stem, S.windows(stem, 1, seg, H, W), x, fill, masks, backend=backend)
    st = stem.stages[1]
    assert isinstance(st.pool, nn.MaxPool2d) and st.monotone
    wd = S.windows(stem, 2, seg, H, W)
    fused = S.level_plan(stem, plan, wd, masks, backend=backend)
    if arch is PaddedMaxLevel:  # some windows hold the pool's padding
        qt = torch.from_numpy(S.P.stem_rows(wd.segs, masks)[1].astype(np.int64))
        Wo = wd.layout[1][1][-1]
        ok = st.conv_ok(qt // Wo, qt % Wo, (0, 1, 1), (0, 1, 1), *plan.out_hwc[:2])
        assert ok is not None and not bool(ok.all())
    calls = []
    real = P.stem_level_id_chunks

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    P.stem_level_id_chunks = spy
    try:
        st.pool = nn.MaxPool2d(st.pool.kernel_size, st.pool.stride, st.pool.padding)  # same pool ...
        st.monotone = False  # ... steps before it: the chunked path
        chunked = S.level_plan(stem, plan, wd, masks, backend=backend)
    finally:
        P.stem_level_id_chunks = real
    assert calls and fused.levels == chunked.levels == 2
    torch.testing.assert_close(fused.table, chunked.table, rtol=0, atol=0)


def test_build_plans_adds_levels_when_they_pay():
    """On the bench's quickshift-like case (many small segments, 1000 samples) the first
    stage is tabulated and the second built as a level; without levels the plan stops at
    one stage."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 10)).eval()  # bench/run_lime.py's small CNN
    H = W = 64
    x = torch.rand(3, H, W, generator=torch.Generator().manual_seed(3))
    seg = _blobs(H, W, 73, 4).reshape(-1)
    masks = (np.random.default_rng(1).random((1000, 73)) < 0.5).astype(np.uint8)
    stem = S.trace_stem(model)
    plans, tail = S.build_plans(stem, [x], [torch.zeros_like(x)], [seg], [masks], min_gain=S.MIN_GAIN)
    one, _ = S.build_plans(stem, [x], [torch.zeros_like(x)], [seg], [masks], min_gain=S.MIN_GAIN, levels=False)
    assert plans[0].levels > 1 and plans[0].depth > one[0].depth and one[0].levels == 1
    S.check_plans(tail, model, [x], [torch.zeros_like(x)], [seg], [masks], plans)
    # a level whose U (previous rows × kernel × channels) would pass the element cap is refused
    wd = S.windows(stem, one[0].depth + 1, seg, H, W)
    cap = one[0].rows * 9 * 16
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(S, "MAX_TABLE_ELEMENTS", cap - 1)
        with pytest.raises(S.StemUnavailable, match="too large"):
            S.level_plan(stem, one[0], wd, masks)
        capped, _ = S.build_plans(stem, [x], [torch.zeros_like(x)], [seg], [masks], min_gain=S.MIN_GAIN)
    assert capped[0].levels == 1  # extend_plans stops there


def test_trace_reads_static_same_padding_and_functional_convs():
    model = StaticSame().eval()
    stem = S.trace_stem(model)
    assert [st.nodes for st in stem.stages] == [["pad", "conv2d", "bn", "act"], ["same", "relu"], ["same2", "tanh"]]
    c0, c1 = stem.stages[0].conv, stem.stages[1].conv
    assert c0.pad == (1, 0, 0, 1) and c0.stride == (2, 2) and c0.weight is model.w
    assert c1.pad == (1, 2, 1, 2)  # total 3 for a 4-tap kernel: 1 before, 2 after
    tail = stem.tail(1)
    assert not [n for n in tail.graph.nodes if n.op == "get_attr"]  # the functional conv's weights went too


def test_trace_takes_padded_pools():
    model = ResNetStem().eval()
    model(torch.zeros(1, 3, 16, 16))
    assert [st.nodes for st in S.trace_stem(model).stages] == [["conv1", "bn1", "relu", "maxpool"],
                                                                ["conv2", "relu", "avg"], ["conv3"]]


def test_trace_finds_stages_and_shares_parameters():
    model = TwoPools().eval()
    model(torch.zeros(1, 3, 8, 8))
    stem = S.trace_stem(model)
    assert [st.nodes for st in stem.stages] == [["a", "relu", "b"], ["c", "relu", "p"]]
    tail = stem.tail(1)
    assert tail.c.weight is model.c.weight  # shares, not copies
    assert sum(1 for n in tail.graph.nodes if n.op == "placeholder") == 1


class _Hooked(TwoPools):
    pass


def test_trace_refuses_what_it_cannot_reproduce():
    class TwoUses(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            return self.conv(x).mean((2, 3)) + x.mean()

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            return self.conv(x).mean((2, 3)) if x.sum() > 0 else -self.conv(x).mean((2, 3))

    class Reflect(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3, padding=1, padding_mode="reflect")

        def forward(self, x):
            return self.conv(x).mean((2, 3))

    with pytest.raises(S.StemUnavailable, match="alone"):
        S.trace_stem(TwoUses())
    with pytest.raises(S.StemUnavailable, match="cannot trace"):
        S.trace_stem(Branchy())
    with pytest.raises(S.StemUnavailable, match="alone"):
        S.trace_stem(Reflect())
    with pytest.raises(S.StemUnavailable, match="alone"):
        S.trace_stem(MLP(d=12, classes=3))
    hooked = SmallCNN().eval()
    h = hooked.register_forward_hook(lambda m, i, o: o * 2)
    with pytest.raises(S.StemUnavailable, match="hooks"):
        S.trace_stem(hooked)
    h.remove()
    h = hooked.features[0].register_forward_hook(lambda m, i, o: o * 2)
    with pytest.raises(S.StemUnavailable, match="alone"):  # the hooked conv is not part of a stem
        S.trace_stem(hooked)
    h.remove()
    bn = Strided()  # train-mode BatchNorm ends the stem before it: one conv stage without pool
    assert [st.nodes for st in S.trace_stem(bn).stages] == [["f.0"]]


def test_check_plans_catches_an_unfaithful_trace():
    class Counting(nn.Module):
        """Its forward reads Python state the trace freezes."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3, padding=1)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return self.conv(x).mean((2, 3)) * self.calls

    model = Counting().eval()
    x, fill = torch.rand(3, 6, 6), torch.zeros(3, 6, 6)
    seg = _grid(6, 6, 2, 2).reshape(-1)
    masks = P.sample_masks(100, 4, 0, first_row_ones=True)
    stem = S.trace_stem(model)
    plans, tail = S.build_plans(stem, [x], [fill], [seg], [masks])
    with pytest.raises(S.StemUnavailable, match="does not reproduce"):
        S.check_plans(tail, model, [x], [fill], [seg], [masks], plans)


def test_build_plans_picks_a_depth_that_saves_work_and_refuses_otherwise():
    model = SmallCNN().eval()
    x, fill = torch.rand(3, 16, 16), torch.zeros(3, 16, 16)
    stem = S.trace_stem(model)
    masks = P.sample_masks(1000, 4, 0, first_row_ones=True)
    plans, _ = S.build_plans(stem, [x], [fill], [_grid(16, 16, 2, 2).reshape(-1)], [masks])
    assert plans[0].max_segments <= 4 and plans[0].rows <= 16 * plans[0].index.shape[1]
    big = S.MAX_INDEX_ENTRIES
    try:  # an index over the limit at every depth
        S.MAX_INDEX_ENTRIES = 1000 * 8 * 8 - 1  # the deepest stages have 8×8 positions
        with pytest.raises(S.StemUnavailable, match="index would take"):
            S.build_plans(stem, [x], [fill], [_grid(16, 16, 2, 2).reshape(-1)], [masks])
    finally:
        S.MAX_INDEX_ENTRIES = big
    pixels = np.arange(256)  # one segment per pixel: every coalition is new at every position
    with pytest.raises(S.StemUnavailable, match="costs more"):
        S.build_plans(stem, [x], [fill], [pixels], [P.sample_masks(50, 256, 0)])


# ------------------------------------------------------------------- exact rewrites of the tail
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [(2, 2), (3, 2), (1, 3), (2, 1), (4, 4)])
@pytest.mark.parametrize("shape", [(1, 1, 4, 4), (3, 5, 13, 11), (2, 16, 9, 7)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_strided_max_equals_max_pool2d(dtype, k, shape, channels_last):
    g = torch.Generator().manual_seed(sum(shape) + k[0])
    x = torch.randn(shape, generator=g, dtype=dtype)
    x.view(-1)[:: 7] = -math.inf
    x.view(-1)[3:: 11] = math.nan
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got, want = S.strided_max(x, *k), F.max_pool2d(x, k)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    assert not torch.isnan(got).any() or torch.equal(torch.isnan(got), torch.isnan(want))
    if channels_last and shape[1] > 1:  # stays channels-last for the next convolution
        assert got.is_contiguous(memory_format=torch.channels_last)


class ActPool(nn.Module):
    def __init__(self, act, pool, extra_use=False):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.act, self.pool, self.extra_use = act, pool, extra_use
        self.fc = nn.LazyLinear(2)

    def forward(self, x):
        y = self.act(self.c(x))
        out = self.fc(self.pool(y).flatten(1))
        return out + y.mean() if self.extra_use else out


class InPlaceShared(ActPool):
    """An in-place ReLU whose input is read again afterwards: the reader sees the ReLU's
    output, so the ReLU must not move past the pool."""

    def forward(self, x):
        y = self.c(x)
        z = self.pool(self.act(y))
        return self.fc(z.flatten(1)) + y.mean()


class FnActPool(ActPool):
    def forward(self, x):
        return self.fc(self.pool(F.relu(self.c(x))).flatten(1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("make,swapped,fast", [
    (lambda: ActPool(nn.ReLU(), nn.MaxPool2d(2)), True, True),
    (lambda: FnActPool(None, nn.MaxPool2d(2)), True, True),
    (lambda: ActPool(nn.ReLU6(), nn.MaxPool2d((3, 2))), True, True),
    (lambda: ActPool(nn.ReLU(inplace=True), nn.MaxPool2d(2, stride=1)), True, False),
    (lambda: ActPool(nn.Hardtanh(-0.5, 0.5), nn.MaxPool2d(3, stride=2, padding=1)), True, False),
    (lambda: ActPool(nn.LeakyReLU(0.1), nn.MaxPool2d(2, ceil_mode=True)), True, False),
    (lambda: ActPool(nn.LeakyReLU(0.1), nn.MaxPool2d(2, dilation=2)), True, False),
    (lambda: ActPool(nn.LeakyReLU(-0.1), nn.MaxPool2d(2)), False, True),  # not monotone
    (lambda: ActPool(nn.GELU(), nn.MaxPool2d(2)), False, True),
    (lambda: ActPool(nn.Sigmoid(), nn.MaxPool2d(2)), False, True),  # monotone, but not exactly in float
    (lambda: ActPool(nn.ReLU(), nn.MaxPool2d(2), extra_use=True), False, True),  # the map is used again
    (lambda: InPlaceShared(nn.ReLU(inplace=True), nn.MaxPool2d(2)), False, True),  # ... after an in-place ReLU
    (lambda: InPlaceShared(nn.ReLU(), nn.MaxPool2d(2)), True, True),
    (lambda: ActPool(nn.ReLU(), nn.AvgPool2d(2)), False, False),
])
def test_fast_tail_is_exact_and_rewrites_what_it_may(make, swapped, fast, dtype):
    torch.manual_seed(0)
    model = make().eval()
    model(torch.zeros(1, 3, 13, 11))
    model = model.to(dtype)
    x = torch.randn(5, 3, 13, 11, dtype=dtype).contiguous(memory_format=torch.channels_last)
    gm = S.fast_tail(torch.fx.symbolic_trace(model))
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)  # the same values, bit for bit
    order = [n.target for n in gm.graph.nodes]
    act = next(i for i, t in enumerate(order) if t in ("act", F.relu))
    pool = next(i for i, t in enumerate(order) if t in ("pool", S.strided_max))
    assert (act > pool) == swapped
    assert (S.strided_max in order) == fast


def test_fast_tail_leaves_hooked_modules_alone():
    model = ActPool(nn.ReLU(), nn.MaxPool2d(2)).eval()
    model(torch.zeros(1, 3, 8, 8))
    seen = []
    model.pool.register_forward_hook(lambda m, i, o: seen.append("pool"))
    model.act.register_forward_hook(lambda m, i, o: seen.append("act"))
    gm = S.fast_tail(torch.fx.symbolic_trace(model))
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["c", "act", "pool", "fc"]
    with torch.no_grad():
        gm(torch.randn(2, 3, 8, 8))
    assert seen == ["act", "pool"]


# ------------------------------------------------------------------------------- lime_image
@pytest.mark.parametrize("dtype,backend", [(torch.float64, "auto"), (torch.float32, "auto"),
                                           (torch.float64, "reference")])
def test_lime_image_with_tables_equals_without(dtype, backend):
    torch.manual_seed(0)
    model = TwoPools().eval()
    model(torch.zeros(1, 3, 20, 18))
    model = model.to(dtype)
    x = torch.rand(2, 3, 20, 18, dtype=dtype)
    segs = np.stack([_blobs(20, 18, 9, 0), _grid(20, 18, 3, 3)])
    kw = dict(segments=segs, n_samples=150, batch_size=40, top_labels=2, seed=2, output="logits", backend=backend)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    on = lime_image(model, x, stem="on", **kw)
    off = lime_image(model, x, stem="off", **kw)
    assert on.extras["stem"].startswith("tables: a → relu → b") and off.extras["stem"] == "off"
    tight = dtype == torch.float64
    for a, b in zip(on.coef, off.coef):
        np.testing.assert_allclose(a, b, rtol=1e-9 if tight else 1e-4, atol=1e-12 if tight else 1e-5 * np.abs(b).max())
    np.testing.assert_allclose(on.intercept, off.intercept, rtol=1e-9 if tight else 1e-4, atol=1e-6)
    np.testing.assert_array_equal(on.targets, off.targets)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not model._forward_hooks and not model.training


@pytest.mark.parametrize("name", ["vgg16_like", "resnet18_like"])
def test_lime_image_tables_on_the_bench_models(name):
    """The bench's VGG-16-like and ResNet-18 replicas (narrow, float64): tables and the tail's
    rewrites give the explanation of the model run as is; the VGG's tail has ReLU → 2×2 max
    pool pairs, which fast_tail rewrites."""
    from xaikernels.models import zoo

    model = (zoo.vgg16_like(image_size=32, width=4) if name == "vgg16_like" else zoo.resnet18_like(10, width=4))
    model = model.double()
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    kw = dict(segments=_blobs(32, 32, 40, 3), n_samples=120, batch_size=50, top_labels=2, seed=4, output="logits")
    on = lime_image(model, x, stem="on", **kw)
    off = lime_image(model, x, stem="off", **kw)
    assert on.extras["stem"].startswith("tables:")
    for a, b in zip(on.coef, off.coef):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12 * max(1.0, np.abs(b).max()))
    np.testing.assert_array_equal(on.targets, off.targets)
    if name == "vgg16_like":
        stem = S.trace_stem(model)
        tail = stem.tail(1)
        # stage 1 is the first conv + ReLU: all five 2×2 pools are in its tail, each now
        # before the ReLU that preceded it
        nodes = list(tail.graph.nodes)
        pools = [i for i, n in enumerate(nodes) if n.target is S.strided_max]
        assert len(pools) == 5
        assert all(nodes[i + 1].op == 'call_module' and isinstance(tail.get_submodule(nodes[i + 1].target), nn.ReLU)
                   for i in pools)


def test_lime_image_stem_modes():
    x = torch.rand(1, 3, 32, 32)
    kw = dict(segments="grid", segment_kwargs=dict(rows=4, cols=4), n_samples=400)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 3)).eval()
    with pytest.raises(ValueError, match="cannot be tabulated.*alone"):
        lime_image(mlp, x, stem="on", **kw)
    assert lime_image(mlp, x, **kw).extras["stem"].startswith("off: the input does not go into")
    r = lime_image(lambda t: t.mean((2, 3)), x, check_mode=False, **kw)
    assert r.extras["stem"] == "off: the model is not an nn.Module"
    cnn = SmallCNN().eval()
    assert lime_image(cnn, x, **kw).extras["stem"].startswith("tables:")
    assert "float16" in lime_image(SmallCNN().eval().half(), x.half(), **kw).extras["stem"]
    # auto declines work too small for the set-up; "on" still takes the tables
    small = dict(kw, n_samples=30)
    assert lime_image(cnn, x[..., :8, :8], **small).extras["stem"].startswith("off: too little work")
    assert lime_image(cnn, x[..., :8, :8], stem="on", **small).extras["stem"].startswith("tables:")
    with pytest.raises(ValueError, match="stem must be"):
        lime_image(mlp, x, stem="yes", **kw)


def test_stem_gather_prefetch_in_bounds_under_numba_boundscheck(tmp_path):
    """The gather's look-ahead reads ``index`` ahead of the row it copies, into the next
    sample's row: with NUMBA_BOUNDSCHECK=1 (fresh cache) any look-ahead past the index raises
    instead of reading other memory, for samples shorter than the look-ahead, several
    look-aheads and both kernels; the values are ``table[index]`` whatever it is."""
    pytest.importorskip("numba")
    code = (
        "import numpy as np\n"
        "from xaikernels.kernels.numba import perturb as K\n"
        "rng = np.random.default_rng(0)\n"
        "for S, Q, C, T in ((5, 3, 4, 20), (4, 1, 2, 3), (3, 40, 2, 50), (2, 16, 3, 9)):\n"
        "    table = rng.standard_normal((T, C)); index = rng.integers(0, T, (S, Q)).astype(np.int32)\n"
        "    for kern in (K._stem_gather_serial, K._stem_gather):\n"
        "        for ahead in (0, 1, 15, 16, 17, 100):\n"
        "            out = np.full((S, Q, C), np.nan)\n"
        "            kern(table, index, out, np.int64(ahead))\n"
        "            assert (out == table[index]).all()\n"
        "print('OK')\n")
    assert_in_bounds(code, tmp_path)


def test_stem_level_max_in_bounds_under_numba_boundscheck(tmp_path):
    """The fused level kernel's indexing (the bag ring filled ahead, the ok rows, the channels
    past the last whole vector) stays in bounds: with NUMBA_BOUNDSCHECK=1 (fresh cache) an
    out-of-bounds index raises; the rows equal the reference twin's, for border windows,
    rows fewer than the look-ahead and odd channel counts."""
    pytest.importorskip("numba")
    code = (
        "import numpy as np\n"
        "from xaikernels.ops import perturb as P\n"
        "rng = np.random.default_rng(0)\n"
        "geo = dict(map_hw=(5, 4), window=(2, 2), step=(2, 2), origin=(0, 0), stride=(1, 1), pad=(1, 1),\n"
        "           dilation=(1, 1), kernel=(3, 3))\n"
        "for T, C, dt in ((1, 3, np.float32), (2, 17, np.float32), (9, 8, np.float64), (9, 11, np.float64)):\n"
        "    index1 = rng.integers(0, 7, (3, 20)).astype(np.int32)\n"
        "    rep, row_pos = rng.integers(0, 3, T), rng.integers(0, 6, T)\n"
        "    u = rng.standard_normal((7 * 9 + 1, C)).astype(dt)\n"
        "    ok = rng.random((T, 4)) < 0.7\n"
        "    a = P.stem_level_max(index1, rep, row_pos, 2, u, n_rows1=7, ok=ok, backend='numba', **geo)\n"
        "    b = P.stem_level_max(index1, rep, row_pos, 2, u, n_rows1=7, ok=ok, backend='reference', **geo)\n"
        "    assert np.array_equal(a, b)\n"
        "print('OK')\n")
    assert_in_bounds(code, tmp_path)
