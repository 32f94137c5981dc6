"""Channels-last batches for CPU conv nets (``LayoutProbe``): used only where the model's
outputs on the first batch equal its contiguous outputs, otherwise the contiguous layout,
and the explanations equal the contiguous ones to float rounding."""
import numpy as np
import pytest
import torch
from torch import nn

from _models import SmallCNN
from xaikernels.methods.kernel_shap import kernel_shap
from xaikernels.methods.lime import LayoutProbe, channels_last_candidate, lime_image


class ViewNet(nn.Module):
    """Flattens a conv activation with ``.view`` (fails on channels-last activations)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 9 * 8, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.shape[0], -1))


class RawMemoryNet(ViewNet):
    """Reads its input's raw memory as if it were contiguous NCHW (a layout-blind custom op)."""

    def forward(self, x):
        raw = torch.as_strided(x, x.shape, (x.shape[1] * x.shape[2] * x.shape[3], x.shape[2] * x.shape[3],
                                            x.shape[3], 1))
        h = torch.relu(self.conv(raw)).contiguous()
        return self.fc(h.view(h.shape[0], -1))


def _contiguous(model):
    """The same model behind a plain function: never a channels-last candidate."""
    return lambda b, *a: model(b, *a)


def test_candidates():
    m = SmallCNN().eval()
    assert channels_last_candidate(m, (3, 8, 8), torch.float32, "cpu")
    assert not channels_last_candidate(m, (3, 8, 8), torch.float64, "cpu")
    assert not channels_last_candidate(m, (3, 64), torch.float32, "cpu")
    assert not channels_last_candidate(_contiguous(m), (3, 8, 8), torch.float32, "cpu")
    assert not channels_last_candidate(m.train(), (3, 8, 8), torch.float32, "cpu")
    assert not channels_last_candidate(nn.Sequential(nn.Flatten(), nn.Linear(192, 2)).eval(), (3, 8, 8),
                                       torch.float32, "cpu")


@pytest.mark.parametrize("net, expect", [(SmallCNN, "channels_last"), (ViewNet, "contiguous (channels-last input "
                                                                                "raised"),
                                         (RawMemoryNet, "contiguous (channels-last outputs differ")])
def test_probe_keeps_the_models_outputs(net, expect):
    model = net().eval()
    x = torch.rand(5, 3, 9, 8)
    probe = LayoutProbe(model, (), True)
    with torch.no_grad():
        first = probe(x)
        second = probe(x[:3])
        want = model(x)
    assert probe.layout.startswith(expect)
    tol = dict(rtol=1e-5, atol=1e-6) if expect == "channels_last" else dict(rtol=0, atol=0)
    torch.testing.assert_close(first, want, **tol)
    torch.testing.assert_close(second, want[:3], **tol)


def test_probe_slices_batch_arguments():
    class Scaled(SmallCNN):
        def forward(self, x, scale, shift):
            return super().forward(x) * scale[:, None] + shift

    model = Scaled().eval()
    x = torch.rand(4, 3, 9, 8)
    scale = torch.arange(1.0, 5.0)
    probe = LayoutProbe(model, (), True)
    with torch.no_grad():
        got = probe(x, scale, 0.5)
        want = model(x, scale, 0.5)
    assert probe.layout == "channels_last"
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("net", [SmallCNN, ViewNet])
def test_lime_image_layout_equals_contiguous(net):
    model = net().eval()
    x = torch.rand(2, 3, 9, 8)
    kw = dict(segments="grid", segment_kwargs=dict(rows=3, cols=2), n_samples=60, batch_size=16, top_labels=2,
              seed=3, stem="off", output="logits")
    a = lime_image(model, x, **kw)
    b = lime_image(_contiguous(model), x, **kw)
    assert a.extras["layout"] == ("channels_last" if net is SmallCNN else a.extras["layout"])
    assert a.extras["layout"].startswith("channels_last" if net is SmallCNN else "contiguous")
    assert b.extras["layout"] == "contiguous"
    np.testing.assert_allclose(a.attribution().numpy(), b.attribution().numpy(), rtol=1e-4, atol=1e-5)
    # float64: no channels-last kernels, contiguous
    assert lime_image(model.double(), x.double(), **kw).extras["layout"] == "contiguous"


def test_kernel_shap_layout_equals_contiguous():
    model = SmallCNN().eval()
    x = torch.rand(1, 3, 9, 8)
    fm = torch.from_numpy(np.repeat(((np.arange(9)[:, None] // 3) * 2 + np.arange(8)[None] // 4)[None], 3, 0))
    kw = dict(feature_mask=fm[None], n_samples=40, batch_size=8, seed=1, target=2, stem="off")
    a = kernel_shap(model, x, **kw)
    b = kernel_shap(_contiguous(model), x, **kw)
    assert a.extras["layout"] == "channels_last" and b.extras["layout"] == "contiguous"
    np.testing.assert_allclose(a.attribution().numpy(), b.attribution().numpy(), rtol=1e-4, atol=1e-5)


def test_captum_lime_dropin_layout():
    from xaikernels.captum import KernelShap, Lime

    model = SmallCNN().eval()
    x = torch.rand(1, 3, 9, 8)
    fm = torch.from_numpy((np.arange(9)[:, None] // 3) * 2 + np.arange(8)[None] // 4)[None, None].expand(1, 3, 9, 8)
    for cls in (Lime, KernelShap):
        ex = cls(model)
        ex.stem = "off"
        torch.manual_seed(0)
        a = ex.attribute(x, target=1, feature_mask=fm, n_samples=40, perturbations_per_eval=8)
        assert ex.layout_info == "channels_last"
        ref = cls(_contiguous(model))
        torch.manual_seed(0)
        b = ref.attribute(x, target=1, feature_mask=fm, n_samples=40, perturbations_per_eval=8)
        assert ref.layout_info == "contiguous"
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
