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
    assert set(table["model"]) == {"tiny-unet", "tiny-dit"}


def test_models_page_samples_and_judges():
    at = models_page(180)
    at.selectbox(key="models_model").select("tiny-dit")
    at.slider(key="models_steps").set_value(5)
    at.button(key="models_run").click().run()
    assert not at.exception
    assert at.metric[0].label == "Class accuracy"
    assert at.metric[0].value.endswith("%")
