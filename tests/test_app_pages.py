"""AppTest drives every page of the Streamlit app: renders, and the key interactions (record, build a preset policy,
export/import it, run a comparison with attribution, the library). Small shapes: 4–6 steps, 1–2 images."""

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")
PAGES = ["tour", "models", "record", "similarity", "frequency", "policy_builder", "compare", "library", "autofr"]


@pytest.fixture(autouse=True)
def folders(tmp_path, monkeypatch):
    monkeypatch.setenv("FRDIFF_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FRDIFF_POLICIES", str(tmp_path / "policies"))
    return tmp_path


def open_page(page: str, timeout: int = 180) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=timeout).run()
    if page != "tour":
        at.switch_page(f"pages/{page}.py").run()
    return at


def ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_with_nothing_configured(page):
    at = open_page(page)
    ok(at)
    assert at.title, page


def test_tour_runs_its_three_live_steps():
    at = open_page("tour")
    assert at.title[0].value == "Temporal redundancy in diffusion models"
    at.slider(key="tour_steps").set_value(4)
    at.slider(key="tour_images").set_value(1)
    at.button(key="tour_watch").click().run()
    ok(at)
    x0 = at.session_state["tour_x0"]
    assert x0["x0"].shape == (4, 32, 32, 3) and len(x0["timesteps"]) == 4
    assert len(at.image) >= 4  # the strip of x̂0 frames

    at.radio(key="tour_step").set_value("2 · Adjacent steps barely change").run()
    at.button(key="tour_record").click().run()
    ok(at)
    heat = at.session_state["tour_heatmap"]
    assert heat["cosine"].shape == (18, 4)  # tiny-unet's 18 blocks × 4 steps
    assert at.metric[0].value != "nan"

    at.radio(key="tour_step").set_value("3 · Reuse instead of recompute").run()
    at.button(key="tour_compare").click().run()
    ok(at)
    texts = " ".join(m.value for m in at.markdown)
    assert "Closest to the full run:" in texts and ("as the paper finds" in texts or "does not hold" in texts)
    res = at.session_state["tour_compare_result"]
    assert [v["name"] for v in res["variants"]] == ["fewer steps", "feature reuse", "reuse + score mixing", "forecast"]
    assert res["variants"][0]["steps"] == 2  # half of the 4 steps
    assert len(at.metric) == 4 and all(m.value.endswith("dB") for m in at.metric)


def test_tour_shows_a_prompt_becoming_an_image_on_tiny_sd():
    at = open_page("tour")
    at.selectbox(key="tour_model").set_value("tiny-sd").run()
    ok(at)
    assert at.text_input(key="tour_prompt").value == "a red star at the top left on a blue background"
    at.slider(key="tour_steps").set_value(4)
    at.slider(key="tour_images").set_value(1)
    at.button(key="tour_watch").click().run()
    ok(at)
    x0 = at.session_state["tour_x0"]
    assert x0["x0"].shape == (4, 64, 64, 3) and x0["image"].shape == (64, 64, 3)  # decoded by the VAE
    assert any("text encoder" in m.value for m in at.markdown)

    at.radio(key="tour_step").set_value("2 · Adjacent steps barely change").run()
    at.button(key="tour_record").click().run()
    ok(at)
    assert at.session_state["tour_heatmap"]["cosine"].shape[1] == 4
    at.selectbox(key="tour_model").set_value("tiny-unet").run()  # another model: the shown results go
    ok(at)
    assert "tour_heatmap" not in at.session_state and "tour_x0" not in at.session_state


def test_record_then_browse_similarity_frequency_and_delete(folders):
    at = open_page("record")
    at.number_input(key="record_steps").set_value(4)
    at.number_input(key="record_batch").set_value(1)
    at.run()
    ok(at)
    assert any("Predicted store" in i.value for i in at.info)
    at.button(key="record_run").click().run()
    ok(at)
    run_dir = Path(at.session_state["run_dir"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["complete"] and manifest["steps_done"] == 4

    at.switch_page("pages/similarity.py").run()
    ok(at)
    assert len(at.get("plotly_chart")) >= 3  # heatmap, curves, steps × steps matrix
    at.slider(key="sim_step").set_value(2).run()
    ok(at)
    assert len(at.image) == 3  # PCA at step 2, step 1 and their difference
    at.radio(key="sim_pred_mode").set_value("hold").run()  # the predictability view: heatmap + curves per mode
    ok(at)
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    titles = [c["layout"]["title"]["text"] for c in charts]
    assert any(t.startswith("Predictability: hold from every 2. step") for t in titles)
    curves = next(c for c in charts if "error of predicting a step" in c["layout"]["title"]["text"])
    assert [d["name"] for d in curves["data"]] == ["hold", "taylor1", "taylor2"]

    at.switch_page("pages/frequency.py").run()
    ok(at)
    at.radio(key="freq_source").set_value("block features").run()
    ok(at)

    at.switch_page("pages/record.py").run()
    at.button(key="record_delete").click().run()
    ok(at)
    assert not run_dir.exists()


def test_builder_preset_edit_save_download_and_upload(folders):
    at = open_page("policy_builder")
    at.number_input(key="builder_steps").set_value(6)
    at.number_input(key="builder_interval").set_value(3)
    at.button(key="builder_apply_preset").click().run()
    ok(at)
    policy = at.session_state["policy"]
    assert policy.steps == 6 and policy.keyframes[:, [0, 3]].all() and not policy.keyframes[:, [1, 2, 4, 5]].any()
    speed = next(m for m in at.metric if m.label == "Predicted speedup")
    assert float(speed.value.rstrip("×")) > 1.0

    # a warm-up and the last step as keyframe: steps 0-1, then the grid counted back from step 5
    at.number_input(key="builder_warmup").set_value(2)
    at.checkbox(key="builder_last").check()
    at.button(key="builder_apply_preset").click().run()
    ok(at)
    placed = at.session_state["policy"]
    assert placed.keyframes[:, [0, 1, 2, 5]].all() and not placed.keyframes[:, [3, 4]].any()
    at.number_input(key="builder_warmup").set_value(0)
    at.checkbox(key="builder_last").uncheck()
    at.button(key="builder_apply_preset").click().run()
    ok(at)

    # whole row: the first block computed at every step again
    rev = at.session_state["builder_rev"]
    at.multiselect(key=f"builder_rows_{rev}").set_value([policy.blocks[0]])
    at.button(key="builder_rows_apply").click().run()
    ok(at)
    edited = at.session_state["policy"]
    assert edited.keyframes[0].all() and not edited.keyframes[1, 1]
    assert edited.provenance["made_by"] == "builder"

    # a cell edit: step 1 of block 1 becomes a keyframe
    rev = at.session_state["builder_rev"]
    at.session_state[f"builder_grid_{rev}"] = {"edited_rows": {1: {"1": True}}, "added_rows": [], "deleted_rows": []}
    at.run()
    assert at.session_state["policy"].keyframes[1, 1]

    # reuse modes: every block forecasts, ε too; the check shows the caches' memory and the modes
    rev = at.session_state["builder_rev"]
    at.selectbox(key=f"builder_reuse_all_{rev}").select("taylor2")
    at.selectbox(key=f"builder_skip_reuse_{rev}").select("taylor1")
    at.selectbox(key=f"builder_skip_space_{rev}").select("data").run()
    ok(at)
    forecasting = at.session_state["policy"]
    assert set(forecasting.reuse) == {"taylor2"} and forecasting.skip_reuse == "taylor1"
    assert forecasting.skip_space == "data"
    memory = next(m for m in at.metric if m.label == "Cache memory (1 image)")
    assert float(memory.value.split()[0]) > 0
    assert any("Reuse: taylor2 (" in c.value for c in at.caption)

    rev = at.session_state["builder_rev"]
    assert at.text_input(key=f"builder_name_{rev}").value == "uniform-6"  # named after the preset just applied
    at.text_input(key=f"builder_name_{rev}").set_value("mine")
    at.button(key="builder_save").click().run()
    ok(at)
    saved = folders / "policies" / "mine.json"
    assert json.loads(saved.read_text())["steps"] == 6
    assert {b["reuse"] for b in json.loads(saved.read_text())["blocks"]} == {"taylor2"}
    assert json.loads(saved.read_text())["skip_space"] == "data"

    download = at.get("download_button")[0]
    assert download.proto.label == "Download JSON"

    # upload: a valid file replaces the policy, a broken one is a readable message
    text = saved.read_text().replace('"steps": 6', '"steps": 6')
    at.file_uploader(key="builder_upload").set_value(("p.json", text.encode(), "application/json")).run()
    ok(at)
    assert at.session_state["policy"].steps == 6
    at.file_uploader(key="builder_upload").set_value(("bad.json", b'{"format": "x"}', "application/json")).run()
    assert not at.exception
    assert "not an FRDiff policy" in at.error[0].value

    # a policy made for another model (tiny-dit's, the builder on tiny-unet): its counts and the problems, no
    # prediction and no traceback (a KeyError in the cache-memory prediction broke the page on every rerun)
    import frdiff
    from workbench.models.zoo import load_pipeline

    dit = frdiff.make_preset("uniform", load_pipeline("tiny-dit").transformer, 6)
    at.file_uploader(key="builder_upload").set_value(("dit.json", dit.to_json().encode(), "application/json")).run()
    assert not at.exception and at.session_state["policy"].blocks == dit.blocks
    assert next(m for m in at.metric if m.label == "Predicted speedup").value == "–"
    assert next(m for m in at.metric if m.label == "Denoiser calls").value == "6 / 6"
    assert at.warning


def test_compare_runs_presets_baselines_and_attribution():
    at = open_page("compare")
    at.number_input(key="compare_images").set_value(1)
    at.number_input(key="compare_steps").set_value(4)
    at.multiselect(key="compare_presets").set_value(["uniform M=2"])
    at.text_input(key="compare_fewer").set_value("2")
    at.button(key="compare_run").click().run()
    ok(at)
    res = at.session_state["comparison"]
    assert [v["name"] for v in res["variants"]] == ["uniform M=2", "2 steps"]
    table = at.dataframe[0].value
    assert list(table["variant"]) == ["reference", "uniform M=2", "2 steps"]
    assert all(v["psnr"] > 10 for v in res["variants"])

    at.button(key="compare_attribute").click().run()
    ok(at)
    rows = at.session_state["compare_attribution"]["rows"]
    assert {r["group"] for r in rows} == {"down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block",
                                          "up_blocks.0", "up_blocks.1", "up_blocks.2"}


def test_library_lists_compares_downloads_and_deletes(folders, unet_pipe):
    import frdiff

    lib = folders / "policies"
    frdiff.make_preset("uniform", unet_pipe.unet, 4, interval=2).save(lib / "u2.json")
    (lib / "broken.json").write_text("{not json")
    at = open_page("library")
    assert not at.exception
    names = set(at.dataframe[0].value["name"])
    assert names == {"u2"}
    assert any("Skipped broken.json: it does not load (" in w.value and "not valid JSON" in w.value
               for w in at.warning)
    at.multiselect(key="library_selected").set_value(["u2"]).run()
    assert at.get("download_button")[0].proto.label == "Download JSON"
    at.button(key="library_delete_u2").click().run()
    assert not at.exception
    assert not (lib / "u2.json").exists()


def test_bad_library_files_and_uploads_never_break_a_page(folders, unet_pipe):
    """Issue 16: one bad file does not break the library or Run & compare; a valid upload beyond the builder's
    usual ranges (2000 steps, slope 500) leaves the builder usable; a name with a space can be deleted."""
    import frdiff

    lib = folders / "policies"
    good = frdiff.make_preset("uniform", unet_pipe.unet, 4, interval=2)
    good.save(lib / "my policy.json")
    (lib / "latin.json").write_bytes("é".encode("latin-1"))
    (lib / "list.json").write_text("[1, 2]")
    for page in ("library", "compare"):
        at = open_page(page)
        ok(at)
        warnings = " ".join(w.value for w in at.warning)
        assert "latin.json" in warnings and "not UTF-8" in warnings and "list.json" in warnings, page
    at = open_page("library")
    at.multiselect(key="library_selected").set_value(["my policy"]).run()
    at.button(key="library_delete_my policy").click().run()
    ok(at)
    assert not (lib / "my policy.json").exists() and at.session_state["library_selected"] == []
    assert any(s.value == "Deleted my policy." for s in at.success)

    wide = frdiff.make_preset("uniform", unet_pipe.unet, 2000, interval=2, mix=True)
    wide.mixing.schedule, wide.mixing.slope = "sigmoid", 500.0
    doc = wide.to_dict()
    doc["extra"] = 1
    at = open_page("policy_builder")
    at.file_uploader(key="builder_upload").set_value(("wide.json", json.dumps(doc).encode(), "application/json"))
    at.run()
    ok(at)
    assert at.session_state["policy"].steps == 2000 and at.session_state["policy"].mixing.slope == 500.0
    assert any("Loaded wide.json: 2000 steps" in s.value for s in at.success)
    assert any("ignored unknown key(s): extra" in i.value for i in at.info)
    at.run()  # and on every rerun after it
    ok(at)


def test_broken_runs_are_named_and_not_offered(folders, random_dit_pipe):
    from workbench.record.recorder import record_run

    record_run(random_dit_pipe, "tiny-dit", folders / "runs" / "good", labels=[1], seeds=[0], steps=3,
               reduction="pool16")
    (folders / "runs" / "bad").mkdir()
    (folders / "runs" / "bad" / "manifest.json").write_text("[1, 2]")
    for page in ("similarity", "frequency"):
        at = open_page(page)
        ok(at)
        assert any("bad" in w.value and "broken" in w.value for w in at.warning), page
        options = at.selectbox(key="sim_run" if page == "similarity" else "freq_run").options
        assert len(options) == 1 and "/runs/good" in options[0], options


def test_autofr_learns_and_sends_the_policy_to_the_builder():
    at = open_page("autofr")
    at.number_input(key="autofr_steps").set_value(4)
    at.number_input(key="autofr_iterations").set_value(2)
    at.number_input(key="autofr_train").set_value(2)
    at.number_input(key="autofr_batch").set_value(1)
    at.button(key="autofr_run").click().run()
    ok(at)
    policy = at.session_state["autofr_result"]
    assert policy.steps == 4 and policy.provenance["made_by"] == "autofr"
    assert at.session_state["autofr_best"]["compute_fraction"] <= 0.6 + 1e-6
    at.button(key="autofr_send").click().run()
    ok(at)
    assert at.title[0].value == "Policy builder"
    assert at.session_state["policy"].provenance["made_by"] == "autofr"


def test_autofr_learns_on_tiny_sd_from_prompts():
    at = open_page("autofr")
    at.selectbox(key="autofr_model").set_value("tiny-sd").run()
    ok(at)
    prompts = at.text_area(key="autofr_prompts").value.splitlines()
    assert len(prompts) == 4 and all(p.endswith("background") for p in prompts)  # scene captions to start from
    at.text_area(key="autofr_prompts").set_value("a red star at the top left on a blue background")
    at.number_input(key="autofr_steps").set_value(4)
    at.number_input(key="autofr_iterations").set_value(1)
    at.number_input(key="autofr_train").set_value(1)
    at.number_input(key="autofr_batch").set_value(1)
    at.button(key="autofr_run").click().run()
    ok(at)
    policy = at.session_state["autofr_result"]
    assert policy.steps == 4 and policy.provenance["prompts"] == ["a red star at the top left on a blue background"]


def test_an_unknown_model_is_a_readable_message():
    at = open_page("record")
    at.selectbox(key="record_model_choice").select("local folder or hub id…").run()
    at.text_input(key="record_model_source").set_value("/no/such/folder").run()
    assert not at.exception
    assert "unknown model '/no/such/folder'" in at.error[0].value


def test_a_broken_run_is_not_opened(folders):
    """The Record page's Open on a run the Similarity and Frequency pages cannot read says so, and opens nothing
    (it said "Opened" next to the error, and those pages then showed another run)."""
    broken = folders / "runs" / "broken"
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text("[1]")
    at = open_page("record")
    at.selectbox(key="record_pick").set_value(str(broken))
    at.button(key="record_open").click().run()
    assert not at.exception and "run_dir" not in at.session_state
    assert any(f"{broken} is broken (" in e.value and "cannot show it" in e.value for e in at.error)
    assert not at.success
