"""Bad input gets a clear error before any work is done."""
import pytest
import torch
from torch import nn

import xaikernels as xk

from _models import MLP, SmallCNN

CNN = SmallCNN().eval()
X = torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("fn", [xk.saliency, xk.input_x_gradient, xk.guided_backprop, xk.deconvnet])
def test_gradient_methods_reject_bad_inputs(fn):
    with pytest.raises(TypeError, match="floating-point"):
        fn(CNN, X.to(torch.int64), 0)
    with pytest.raises(TypeError, match="floating-point"):
        fn(CNN, X > 0, 0)
    with pytest.raises(ValueError, match="rank"):
        fn(MLP().eval(), torch.randn(13), 0)
    bad = X.clone()
    bad[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        fn(CNN, bad, 0)
    bad[1, 0, 2, 2] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        fn(CNN, bad, 0)
    with pytest.raises(IndexError, match="out of range"):
        fn(CNN, X, 5)
    with pytest.raises(IndexError, match="out of range"):
        fn(CNN, X, [0, -1])
    with pytest.raises(ValueError, match="2 examples"):
        fn(CNN, X, [0, 1, 2])
    with pytest.raises(TypeError, match="integer dtype"):
        fn(CNN, X, torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError):
        fn(CNN, X, "cat")
    with pytest.raises(TypeError, match="nn.Module"):
        fn(lambda x: x, X, 0)


@pytest.mark.parametrize("fn", [xk.grad_cam, xk.guided_grad_cam, xk.cam])
def test_cam_methods_reject_bad_inputs(fn):
    with pytest.raises(ValueError, match="no layer named 'features.55'.*features.5"):
        fn(CNN, X, 0, layer="features.55")
    with pytest.raises(ValueError, match="not a submodule"):
        fn(CNN, X, 0, layer=nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="rank"):
        fn(CNN, torch.randn(2, 3), 0, layer="features.5")
    with pytest.raises(TypeError, match="floating-point"):
        fn(CNN, X.int(), 0, layer="features.5")


def test_cam_layer_must_be_spatial_and_run_once():
    with pytest.raises(ValueError, match="spatial"):
        xk.grad_cam(CNN, X, 0, layer="fc")

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(self.conv(self.conv(x)).mean((2, 3)))

    with pytest.raises(ValueError, match="ran 2 times"):
        xk.grad_cam(Twice().eval(), X, 0, layer="conv")


def test_model_output_checks():
    class TupleOut(nn.Module):
        def forward(self, x):
            return x.flatten(1), x

    with pytest.raises(TypeError, match="single tensor"):
        xk.saliency(TupleOut().eval(), X, 0)

    class Spatial(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(ValueError, match=r"\(N, classes\)"):
        xk.saliency(Spatial().eval(), X, 0)


def test_train_mode_policy():
    bn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 2))
    bn.train()
    running = bn[1].running_mean.clone()
    with pytest.raises(ValueError, match="model.eval"):
        xk.saliency(bn, X, 0)
    assert torch.equal(bn[1].running_mean, running) and bn.training
    drop = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(192, 2)).train()
    with pytest.raises(ValueError, match="BatchNorm/Dropout"):
        xk.grad_cam(nn.Sequential(nn.Conv2d(3, 2, 3), drop).train(), X, 0, layer="0")
    plain = MLP().train()
    with pytest.warns(UserWarning, match="train mode"):
        xk.saliency(plain, torch.randn(2, 13), 0)
    assert plain.training
