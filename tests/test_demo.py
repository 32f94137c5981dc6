"""The demo (``xaikernels demo --quick``) and the gallery plotting it relies on."""
import re

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

from xaikernels import viz  # noqa: E402
from xaikernels.demo import DIGITS_EXTRA, METHODS, forward_backward  # noqa: E402


def _table_rows(section: str):
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\| (\S[^|]*?) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", line)
        if m:
            rows[m.group(1)] = tuple(float(v) for v in m.group(2, 3, 4))
    return rows


def _check_table(section: str, batch: int, extra=()):
    rows = _table_rows(section)
    # Extras (LIME, KernelSHAP) are timed on the gallery's images: "lime (6 images)".
    sizes = {}
    for name in list(rows):
        m = re.match(r"(\w+) \((\d+) images\)$", name)
        if m:
            rows[m.group(1)] = rows.pop(name)
            sizes[m.group(1)] = int(m.group(2))
    assert set(sizes) == set(extra)
    assert set(rows) == {"forward+backward (baseline)", *METHODS, *extra}, rows
    base_ms = rows["forward+backward (baseline)"][0]
    for name, (ms, ratio, ips) in rows.items():
        assert ms > 0 and ratio > 0 and ips > 0, name
        n = sizes.get(name, batch)
        # The columns must agree with each other (2-decimal rounding in the table); the ratio
        # is per image against the baseline's per-image time.
        assert ratio == pytest.approx((ms / n) / (base_ms / batch), rel=0.02, abs=0.01), name
        assert ips == pytest.approx(n / (ms / 1e3), rel=0.02, abs=0.1), name
    assert rows["forward+backward (baseline)"][1] == 1.0


@pytest.mark.slow
def test_demo_quick_writes_galleries_and_report(tmp_path, capsys):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("skimage")
    from xaikernels.demo import main

    out = tmp_path / "demo"
    assert main(["--quick", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "chelsea →" in printed

    import matplotlib.image as mpimg

    for name in ("gallery_digits.png", "gallery_imagenet.png"):
        img = mpimg.imread(out / name)
        assert img.shape[0] > 200 and img.shape[1] > img.shape[0], name
        assert float(img[..., :3].std()) > 0.05, name  # not a blank canvas

    report = (out / "report.md").read_text()
    digits_sec, imagenet_sec = report.split("## EfficientNet-Lite0")
    acc = float(re.search(r"Test accuracy: \*\*([\d.]+)%\*\*", digits_sec).group(1))
    assert acc >= 95.0
    _check_table(digits_sec, batch=32, extra=DIGITS_EXTRA)
    _check_table(imagenet_sec, batch=2)
    top = re.search(r"\| chelsea \| ([^(]+) \(", imagenet_sec).group(1).strip()
    assert top in {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


def test_demo_digits_only_via_cli(tmp_path, capsys):
    from xaikernels.__main__ import main

    out = tmp_path / "d"
    assert main(["demo", "--quick", "--no-imagenet", "--repeats", "2", "--out", str(out),
                 "--no-progress"]) == 0
    assert (out / "gallery_digits.png").is_file() and not (out / "gallery_imagenet.png").exists()
    report = (out / "report.md").read_text()
    assert "median of 2 timed run(s)" in report
    _check_table(report, batch=32, extra=DIGITS_EXTRA)
    assert "skipped (--no-imagenet)" in capsys.readouterr().out


def test_demo_rejects_bad_repeats(tmp_path):
    from xaikernels.demo import main

    assert main(["--repeats", "0", "--out", str(tmp_path)]) == 2


def test_forward_backward_is_the_input_gradient():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    x = torch.randn(5, 4)
    t = torch.tensor([0, 1, 2, 0, 1])
    g = forward_backward(model, x, t)
    torch.testing.assert_close(g, model[0].weight.detach()[t])


# ------------------------------------------------------------------------------- viz

def _images_of(fig):
    """Per axes (row-major), the list of AxesImage on it."""
    return [ax.get_images() for ax in fig.axes]


def test_gallery_colour_conventions():
    n, h, w = 2, 8, 8
    rng = np.random.default_rng(0)
    images = [rng.random((h, w)) for _ in range(n)]
    signed = torch.tensor(rng.standard_normal((n, 3, h, w)), dtype=torch.float32)
    unsigned = signed.abs()
    cam = torch.tensor(rng.random((n, 1, h, w)), dtype=torch.float32)
    fig = viz.gallery_figure(images, {"input_x_gradient": signed, "saliency": unsigned,
                                      "grad_cam": cam, "cam": cam - 0.5},
                             row_labels=["a", "b"], title="t")
    axes = _images_of(fig)
    assert len(axes) == n * 5
    titles = [ax.get_title() for ax in fig.axes[:5]]
    assert titles == ["input", "Input × Gradient", "Saliency |∇|", "Grad-CAM", "CAM"]
    for r in range(n):
        inp, sgn, uns, gc, c = axes[r * 5:(r + 1) * 5]
        (im,) = sgn
        lo, hi = im.get_clim()
        assert lo == -hi and hi > 0 and im.get_cmap().name == "RdBu_r"
        # Channels are summed for display.
        np.testing.assert_allclose(im.get_array(), signed[r].sum(0).numpy(), rtol=1e-6)
        (im,) = uns
        assert im.get_clim()[0] == 0 and im.get_cmap().name != "RdBu_r"
        # CAM-like maps sit over the image: a base image plus a translucent heatmap.
        assert len(gc) == 2 and gc[1].get_alpha() < 1 and gc[1].get_clim()[0] == 0
        assert len(c) == 2 and c[1].get_cmap().name == "RdBu_r"
        lo, hi = c[1].get_clim()
        assert lo == -hi


def test_gallery_rejects_mismatched_maps(tmp_path):
    with pytest.raises(ValueError, match="entries for 2 images"):
        viz.gallery([np.zeros((4, 4))] * 2, {"saliency": torch.zeros(3, 1, 4, 4)},
                    tmp_path / "x.png")
    with pytest.raises(ValueError, match="the image is"):
        viz.gallery([np.zeros((4, 4))], {"saliency": torch.zeros(1, 1, 5, 5)}, tmp_path / "x.png")
    path = viz.gallery([np.zeros((4, 4, 3))], {"saliency": torch.ones(1, 3, 4, 4)},
                       tmp_path / "ok.png")
    assert (tmp_path / "ok.png").is_file() and path.endswith("ok.png")
