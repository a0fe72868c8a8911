import numpy as np
import pytest

from workbench import figures


def test_figures_carry_the_data_and_labels():
    ts = [999, 979, 959, 939]
    vals = np.array([[np.nan, 0.9, 0.95, 0.97], [np.nan, 0.8, 0.85, 0.9]])
    fig = figures.blocks_steps_heatmap(vals, ["a.b", "c.d"], ts)
    np.testing.assert_array_equal(fig.data[0].z, vals)
    assert list(fig.data[0].y) == ["a.b", "c.d"] and "t=999" in fig.layout.xaxis.ticktext[0]

    curves = figures.similarity_curves({"a.b": np.ones((4, 3)) * 0.5}, ts)
    assert len(curves.data) == 2 and np.allclose(curves.data[1].y, 0.5)

    m = figures.steps_matrix(np.eye(4), ts, "a.b")
    assert m.layout.title.text.startswith("a.b")

    spec = figures.spectra_over_time_figure(np.ones((4, 17)), ts, "x0")
    assert np.asarray(spec.data[0].z).shape == (17, 4)

    bands = figures.band_energy_figure({"low": [0.5, 0.9, 0.95, 0.97], "high": [0.3, 0.05, 0.02, 0.01]}, ts, "x0")
    assert [d.name for d in bands.data] == ["low", "high"] and np.allclose(bands.data[1].y, [0.3, 0.05, 0.02, 0.01])
    assert "t=999" in bands.layout.xaxis.ticktext[0] and list(bands.data[0].customdata) == ts

    err = figures.error_spectra_figure({"M=2": np.arange(1, 5.0), "25 steps": np.ones(4)})
    assert [d.name for d in err.data] == ["M=2", "25 steps"] and err.layout.yaxis.type == "log"

    img = np.zeros((8, 8, 3))
    grid = figures.image_grid({"full": img, "M=2": img + 0.5}, reference="full")
    heat = [d for d in grid.data if d.type == "heatmap"]
    assert len(heat) == 2 and np.allclose(heat[1].z, 0.5)


def test_difference_maps_share_a_scale_from_zero_and_titles_fit():
    """A zero difference map is the scale's zero colour (not a tile stretched to its own maximum), every map uses
    one scale, and titles are wrapped to their column so six variants' titles do not overlap."""
    img = np.zeros((8, 8, 3))
    names = {"reference": img, **{f"a rather long variant name {i}": img + 0.1 * i for i in range(5)}}
    grid = figures.image_grid(names, reference="reference")
    heat = [d for d in grid.data if d.type == "heatmap"]
    assert len({(d.zmin, d.zmax) for d in heat}) == 1  # one shared scale …
    assert heat[0].zmin == 0 and heat[0].zmax == pytest.approx(0.4)  # … from 0 to the largest difference
    assert np.all(np.asarray(heat[0].z) == heat[0].zmin)  # |reference − reference| sits at the scale's zero
    width = 72 // 6
    for ann in grid.layout.annotations:
        assert all(len(line) <= width for line in ann.text.split("<br>")), ann.text
    spec = figures.spectra_over_time_figure(np.array([[1.0, 10.0, 0.0], [1.0, 100.0, 0.0]]), [999, 499], "x")
    z = np.asarray(spec.data[0].z, dtype=float)
    assert np.isnan(z[2]).all() and z[1].tolist() == [1.0, 2.0]  # empty bins blank, not log10(1e-12)


def test_no_heatmap_colour_is_one_streamlit_swaps():
    """st.plotly_chart's theme swaps the colours #000001–#000040 in the browser for theme colours; Inferno and
    Magma start at #000004, so their zero showed pink. Every heatmap scale here avoids that range and keeps the
    named scale's look (the zero colour one unit of green away)."""
    import re

    import plotly.colors as pc

    placeholder = re.compile(r"^#0000[0-9]{2}$")
    assert pc.get_colorscale("Inferno")[0][1] == "#000004"  # the collision this guards against
    img = np.zeros((8, 8, 3))
    grid = figures.image_grid({"reference": img, "M=2": img + 0.5}, reference="reference")
    spec = figures.spectra_over_time_figure(np.array([[1.0, 10.0, 0.0], [1.0, 100.0, 0.0]]), [999, 499], "x")
    heat = figures.blocks_steps_heatmap(np.ones((2, 3)), ["a", "b"], [999, 500, 1])
    scales = [d.colorscale for fig in (grid, spec, heat) for d in fig.data if d.type == "heatmap"]
    assert scales and all(not placeholder.match(c) for scale in scales for _, c in scale)
    zero = grid.data[[d.type for d in grid.data].index("heatmap")].colorscale[0][1]
    assert zero == "#000104"  # Inferno's black, not a theme colour
