"""Demo section of the mutual-information maps (both architectures), in quick mode."""
import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


def test_mi_section_quick(tmp_path):
    from matplotlib.image import imread

    from xaikernels.demo_mi import mi_section

    lines, summary = mi_section(tmp_path / "out", quick=True, progress=False)
    png = tmp_path / "out" / "gallery_mi.png"
    assert png.is_file()
    img = imread(str(png))[..., :3]
    # Not blank: many distinct colours (heatmaps), and the 3 rows x 9 panels fill a wide figure.
    assert img.shape[1] > 2 * img.shape[0]
    assert img.std() > 0.1
    assert len(np.unique((img * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 200
    text = "\n".join(lines)
    for needle in ("I(x; y)", "I(x'; y)", "redundant", "IBA", "prototypical", "5-way 1-shot", "gallery_mi.png",
                   "`infonce_lse` backend: `"):
        assert needle in text, needle
    # One table row per architecture, with finite numbers.
    rows = [ln for ln in lines if ln.startswith("| classifier") or ln.startswith("| prototypical")]
    assert len(rows) == 2
    for ln in rows:
        vals = [float(c) for c in ln.strip("|").split("|")[1:]]
        assert all(np.isfinite(vals))
    assert "MI maps" in summary and " s," in summary
