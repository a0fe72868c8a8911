from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")


def models_page(timeout: int) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=timeout).run()
    return at.switch_page("pages/models.py").run()


def test_app_starts_on_the_tour():
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception
    assert at.title[0].value == "Temporal redundancy in diffusion models"


def test_models_page_lists_the_shipped_models():
    at = models_page(120)
    assert not at.exception
    assert at.title[0].value == "Shipped models"
    table = at.dataframe[0].value
    assert set(table["model"]) == {"tiny-unet", "tiny-dit", "tiny-sd"}


def test_models_page_samples_tiny_sd_from_a_prompt():
    at = models_page(180)
    at.selectbox(key="models_model").select("tiny-sd").run()
    assert at.text_input(key="models_prompt").value == "a red star at the top left on a blue background"
    at.slider(key="models_steps").set_value(5)
    at.button(key="models_run").click().run()
    assert not at.exception and not at.error
    assert at.metric[0].label == "Prompt adherence (scene judge)" and at.metric[0].value.endswith("%")
    assert len(at.image) >= 1  # the eight samples


def test_models_page_samples_and_judges():
    at = models_page(180)
    at.selectbox(key="models_model").select("tiny-dit")
    at.slider(key="models_steps").set_value(5)
    at.button(key="models_run").click().run()
    assert not at.exception
    assert at.metric[0].label == "Class accuracy"
    assert at.metric[0].value.endswith("%")


def test_icons_are_material_icons_not_emoji():
    """Emoji render as empty boxes where no emoji font is installed (Debian's chromium): every page and link icon is
    one of Streamlit's Material icons."""
    import re

    root = Path(__file__).resolve().parents[1]
    sources = [root / "streamlit_app.py", *sorted((root / "pages").glob("*.py")),
               *sorted((root / "workbench" / "app").glob("*.py"))]
    icons = [m.group(2) for f in sources for m in re.finditer(r"(page_)?icon=\"([^\"]*)\"", f.read_text())]
    assert icons and all(i.startswith(":material/") and i.endswith(":") for i in icons), icons
