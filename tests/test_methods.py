"""Gradient-family and CAM methods against independent oracles."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xaikernels as xk

from _models import MLP, DeconvReluFn, GuidedReluFn, SmallCNN, rule_copy


def _per_sample_grads(model, x, target):
    """Oracle: one autograd call per example."""
    out = []
    for i in range(x.shape[0]):
        xi = x[i:i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(xi)[0, target[i]], xi)
        out.append(g)
    return torch.cat(out)


CASES = [
    (SmallCNN, (1, 3, 9, 11)),
    (SmallCNN, (3, 3, 8, 8)),
    (MLP, (5, 13)),
    (MLP, (1, 13)),
]


@pytest.mark.parametrize("cls,shape", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_family_vs_oracle(cls, shape, dtype):
    model = cls().to(dtype).eval()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=gen, dtype=dtype)
    n = shape[0]
    target = [(2 * i + 1) % 4 for i in range(n)]
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    plain = _per_sample_grads(model, x, target)
    torch.testing.assert_close(xk.saliency(model, x, target, abs=False), plain, **tol)
    torch.testing.assert_close(xk.saliency(model, x, target), plain.abs(), **tol)
    torch.testing.assert_close(xk.input_x_gradient(model, x, torch.tensor(target)), plain * x, **tol)
    guided = _per_sample_grads(rule_copy(model, GuidedReluFn), x, target)
    torch.testing.assert_close(xk.guided_backprop(model, x, target), guided, **tol)
    deconv = _per_sample_grads(rule_copy(model, DeconvReluFn), x, target)
    torch.testing.assert_close(xk.deconvnet(model, x, target), deconv, **tol)
    # The rules must actually change something on these models (the test could otherwise pass
    # with a no-op rule).
    assert not torch.allclose(guided, plain) and not torch.allclose(deconv, plain)


def test_target_forms_and_predicted_class():
    model = MLP().eval()
    x = torch.randn(4, 13)
    pred = model(x).argmax(1)
    a = xk.saliency(model, x)  # predicted class
    torch.testing.assert_close(a, xk.saliency(model, x, pred))
    torch.testing.assert_close(xk.saliency(model, x, 2), xk.saliency(model, x, [2, 2, 2, 2]))
    torch.testing.assert_close(xk.saliency(model, x, torch.tensor(2)), xk.saliency(model, x, 2))


def _gradcam_oracle(model, x, target, relu=True):
    """Grad-CAM at features.5 (the last conv, before its in-place ReLU)."""
    acts = model.features[:6](x)
    acts_d = acts.detach().requires_grad_(True)
    out = model.fc(model.pool(torch.relu(acts_d)).flatten(1))
    (g,) = torch.autograd.grad(out.gather(1, torch.tensor(target)[:, None]).sum(), acts_d)
    w = g.mean(dim=(2, 3), keepdim=True)
    cam = (w * acts).sum(1, keepdim=True)
    return cam.clamp_min(0) if relu else cam, acts.detach()


@pytest.mark.parametrize("shape", [(1, 3, 9, 11), (3, 3, 8, 8)])
def test_grad_cam_family_vs_oracle(shape):
    model = SmallCNN().eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    target = [i % 5 for i in range(shape[0])]
    raw_exp, pre = _gradcam_oracle(model, x, target)
    acts = torch.relu(pre)  # features.6 output, for CAM
    up, raw = xk.grad_cam(model, x, target, layer="features.5", return_raw=True)
    torch.testing.assert_close(raw, raw_exp)
    assert up.shape == (shape[0], 1, *shape[2:])
    torch.testing.assert_close(up, F.interpolate(raw_exp, size=shape[2:], mode="bilinear", align_corners=False))
    # by module as well as by dotted name; signed map without relu
    signed = xk.grad_cam(model, x, target, layer=model.features[5], relu=False, upsample_mode="nearest")
    torch.testing.assert_close(signed, F.interpolate(_gradcam_oracle(model, x, target, relu=False)[0],
                                                     size=shape[2:], mode="nearest"))
    # Guided Grad-CAM = guided backprop x nearest-upsampled relu Grad-CAM
    gbp = _per_sample_grads(rule_copy(model, GuidedReluFn), x, target)
    ggc = xk.guided_grad_cam(model, x, target, layer="features.5")
    torch.testing.assert_close(ggc, gbp * F.interpolate(raw_exp, size=shape[2:], mode="nearest"))
    # CAM with GAP+linear head: sum_c W[t, c] A_c; Grad-CAM without relu is CAM / (h*w)
    cam_up, cam_raw = xk.cam(model, x, target, layer="features.6", return_raw=True)
    cam_exp = torch.einsum("nc,nchw->nhw", model.fc.weight.detach()[target], acts).unsqueeze(1)
    torch.testing.assert_close(cam_raw, cam_exp)
    gc_lin = xk.grad_cam(model, x, target, layer="features.6", relu=False, return_raw=True)[1]
    torch.testing.assert_close(gc_lin * acts[0, 0].numel(), cam_raw, rtol=1e-5, atol=1e-5)
    assert cam_up.shape == (shape[0], 1, *shape[2:])


def test_relu6_activation_types():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU6(), nn.Linear(8, 3)).eval()
    x = torch.randn(3, 6) * 4
    with pytest.warns(UserWarning, match="changes nothing"):
        plain = xk.guided_backprop(model, x, 1)  # ReLU6 not a rule target by default
    torch.testing.assert_close(plain, xk.saliency(model, x, 1, abs=False))
    got = xk.guided_backprop(model, x, 1, activation_types=(nn.ReLU6,))
    h = model[0](x)
    mask = ((h > 0) & (h < 6)).to(x.dtype)
    g_h = model[2].weight[1].expand(3, -1).clamp(min=0) * mask
    torch.testing.assert_close(got, g_h @ model[0].weight)


def test_warns_when_rule_has_no_target():
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    with pytest.warns(UserWarning, match="changes nothing"):
        xk.guided_backprop(model, torch.randn(2, 4), 0)


def test_grad_cam_layer_followed_by_inplace_relu():
    """The captured map must be the layer's own output, not the in-place ReLU's result."""
    conv = nn.Conv2d(2, 3, 3, padding=1)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    model = nn.Sequential(conv, nn.ReLU(inplace=True), head).eval()
    x = torch.randn(2, 2, 5, 5)
    acts = conv(x).detach().requires_grad_(True)
    out = head(torch.relu(acts))
    (g,) = torch.autograd.grad(out[:, 1].sum(), acts)
    exp = (g.mean((2, 3), keepdim=True) * acts).sum(1, keepdim=True).detach()
    _, raw = xk.grad_cam(model, x, 1, layer="0", relu=False, return_raw=True)
    torch.testing.assert_close(raw, exp)
    assert (acts < 0).any()  # the ReLU would have changed them
