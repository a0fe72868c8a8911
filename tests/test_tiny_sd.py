"""tiny-sd (issue 20): the captioned scenes, the scene tokenizer, the shipped folder as a stock
``StableDiffusionPipeline``, the scene judge, and the training and sampling commands."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench.models import scenes
from workbench.models.catalog import EMBEDDED, count_parameters, embedded_path

ROOT = Path(__file__).resolve().parents[1]
FOLDER = embedded_path("tiny-sd")


def test_every_caption_parses_back_to_its_attributes():
    n = 0
    for s in range(6):
        for c in range(6):
            for p in range(5):
                for b in range(6):
                    text = scenes.caption(s, c, p, b)
                    assert scenes.parse_caption(text) == (None if c == b else (s, c, p, b))
                    n += c != b
    assert n == 900
    assert scenes.parse_caption("  A Red   STAR at the top left on a blue background ") == (5, 0, 0, 2)
    for bad in ("a red star", "a purple star at the top left on a blue background",
                "a red star at the middle on a blue background", "a red star at the top left on a red background",
                "a red dog at the top left on a blue background", ""):
        assert scenes.parse_caption(bad) is None


def test_scenes_are_deterministic_and_match_their_captions():
    a, b = scenes.make_scenes(6, 3), scenes.make_scenes(6, 3)
    assert torch.equal(a.images, b.images) and torch.equal(a.attributes, b.attributes)
    assert a.images.shape == (6, 3, 64, 64) and float(a.images.min()) >= -1 and float(a.images.max()) <= 1
    assert not torch.equal(a.images, scenes.make_scenes(6, 4).images)
    assert (a.attributes[:, 1] != a.attributes[:, 3]).all()  # background never the shape's colour
    # given attributes are rendered as asked: a white shape on a black background is mostly black pixels
    one = scenes.make_scenes(1, 0, attributes=torch.tensor([[0, 4, 4, 5]]))
    assert one.captions == ["a white circle at the center on a black background"]
    img = (one.images[0] + 1) / 2
    assert img[:, 32, 32].min() > 0.8  # the circle's centre is white
    assert img[:, 2, 2].max() < 0.2  # a corner is background


def test_eval_prompts_hold_each_shape_equally():
    prompts = scenes.eval_prompts(300)
    assert len(prompts) == 300 and prompts == scenes.eval_prompts(300)
    rows = [scenes.parse_caption(p) for p in prompts]
    assert all(r is not None for r in rows)
    assert [sum(r[0] == s for r in rows) for s in range(6)] == [50] * 6
    with pytest.raises(ValueError):
        scenes.eval_prompts(0)


def test_scene_tokenizer_makes_each_word_one_token(tmp_path):
    from transformers import CLIPTokenizer

    from workbench.models.tiny_sd import MAX_TOKENS, caption_index, caption_table, tokenizer_files, write_tokenizer

    tok = write_tokenizer(tmp_path)
    for word in scenes.WORDS:
        assert len(tok(word).input_ids) == 3, word  # BOS, the word, EOS
    longest = max(len(tok(scenes.caption(s, c, p, b)).input_ids)
                  for s in range(6) for c in range(6) for p in range(5) for b in range(6))
    assert longest <= MAX_TOKENS
    shipped = CLIPTokenizer.from_pretrained(FOLDER / "tokenizer")
    assert shipped.get_vocab() == tokenizer_files()[0]  # the shipped tokenizer is the one this code writes
    table = caption_table(tok)
    batch = scenes.make_scenes(5, 9)
    for row, text in zip(caption_index(batch.attributes).tolist(), batch.captions, strict=True):
        assert tok.decode(table[row], skip_special_tokens=True) == text
    assert tok.decode(table[-1], skip_special_tokens=True) == ""


def test_shipped_folder_is_a_stock_pipeline_without_project_code():
    """StableDiffusionPipeline.from_pretrained(folder) in a fresh interpreter that never imports the workbench."""
    code = (
        "import sys, json, torch\n"
        "from diffusers import StableDiffusionPipeline\n"
        f"pipe = StableDiffusionPipeline.from_pretrained({str(FOLDER)!r})\n"
        "pipe.set_progress_bar_config(disable=True)\n"
        "out = pipe(['a red star at the top left on a blue background'], num_inference_steps=2,\n"
        "           generator=torch.Generator().manual_seed(0), output_type='np').images\n"
        "print(json.dumps({'shape': list(out.shape), 'project': [m for m in sys.modules\n"
        "      if m.split('.')[0] in ('workbench', 'frdiff')], 'clip': pipe.scheduler.config.clip_sample,\n"
        "      'cls': type(pipe.unet).__name__, 'text': type(pipe.text_encoder).__name__}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info == {"shape": [1, 64, 64, 3], "project": [], "clip": False, "cls": "UNet2DConditionModel",
                    "text": "CLIPTextModel"}


def test_shipped_weights_files_and_listing():
    assert EMBEDDED["tiny-sd"].architecture == "sd"
    files = list(FOLDER.rglob("*.safetensors"))
    assert {f.parent.name for f in files} == {"unet", "vae", "text_encoder"}
    assert all(f.stat().st_size <= 8 * 1024 * 1024 for f in files)  # issue 20: each weights file ≤ 8 MB
    assert not list(FOLDER.rglob("*.bin"))
    from workbench.models.zoo import build_pipeline

    built = build_pipeline("tiny-sd")
    n = sum(p.numel() for m in (built.unet, built.vae, built.text_encoder) for p in m.parameters())
    assert count_parameters("tiny-sd") == n
    res = subprocess.run([sys.executable, "-m", "workbench", "models", "--json"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    rows = {r["name"]: r for r in json.loads(res.stdout)["models"]}
    assert rows["tiny-sd"]["architecture"] == "sd" and rows["tiny-sd"]["weights"]


def test_scene_judge_reads_real_scenes_and_refuses_other_prompts():
    from workbench.models.scene_judge import judge_scenes, predict

    batch = scenes.make_scenes(64, 424_242)
    assert torch.equal(predict(batch.images), batch.attributes)
    out = judge_scenes(batch.images, batch.captions)
    assert out["prompt_adherence"] == 1.0 and set(out["attribute_agreement"].values()) == {1.0}
    assert set(out["adherence_by_shape"].values()) == {1.0}
    assert out["fd_scenes"] < 5.0
    # a wrong caption for each image: the colour swapped with the background
    swapped = [scenes.caption(s, b, p, c) for s, c, p, b in batch.attributes.tolist()]
    wrong = judge_scenes(batch.images, swapped)
    assert wrong["prompt_adherence"] == 0.0 and wrong["attribute_agreement"]["shape"] == 1.0
    # half the captions right: adherence 0.5, and per shape the share of that shape's captions that are right
    half = batch.captions[:32] + swapped[32:]
    mixed = judge_scenes(batch.images, half)
    assert mixed["prompt_adherence"] == 0.5
    shapes = batch.attributes[:, 0]
    for k, name in enumerate(scenes.SHAPES):
        expect = float((torch.arange(64)[shapes == k] < 32).float().mean())
        assert mixed["adherence_by_shape"][name] == pytest.approx(expect)
    assert judge_scenes(batch.images, ["a photo of a cat"] * 64) is None
    assert judge_scenes(torch.zeros(2, 3, 32, 32), batch.captions[:2]) is None


def test_sample_command_judges_scene_prompts(tmp_path):
    prompts = tmp_path / "prompts.txt"
    res = subprocess.run([sys.executable, "-m", "workbench", "scenes", "--n", "2", "--seed", "5"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0
    prompts.write_text(res.stdout)
    assert [scenes.parse_caption(p) is not None for p in res.stdout.splitlines()] == [True, True]
    res = subprocess.run([sys.executable, "-m", "workbench", "sample", "--model", "tiny-sd", "--prompts-file",
                          str(prompts), "--n", "2", "--steps", "3", "--scheduler", "dpmpp", "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout)
    assert report["class_accuracy"] == report["prompt_adherence"]
    assert 0.0 <= report["prompt_adherence"] <= 1.0 and set(report["attribute_agreement"]) == set(scenes.ATTRIBUTES)
    assert report["guidance_scale"] == 7.5 and report["scheduler"] == "dpmpp"


def test_training_writes_a_stock_folder(tmp_path):
    from diffusers import StableDiffusionPipeline

    from workbench.models.train import TrainConfig
    from workbench.models.train_sd import train_scene_judge, train_tiny_sd

    cfg = TrainConfig(model="tiny-sd", steps=2, batch_size=2, warmup=1, device="cpu")
    record = train_tiny_sd(cfg, tmp_path / "sd", vae_minutes=1e-4, vae_pool=8, latent_pool=8, vae_eval=4)
    assert record["steps_done"] == 2 and record["schedule_steps"] == 2 and record["vae"]["steps"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sd"]  # nothing left beside the output
    assert record["vae"]["scaling_factor"] == pytest.approx(1 / record["vae"]["latent_std"])
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "sd")
    assert pipe.vae.config.scaling_factor == pytest.approx(record["vae"]["scaling_factor"])
    assert json.loads((tmp_path / "sd" / "training.json").read_text())["steps_done"] == 2
    jrec = train_scene_judge(TrainConfig(model="scene-judge", steps=2, batch_size=4, device="cpu"), tmp_path / "j")
    assert set(jrec["validation_accuracy"]["clean"]) == {"all", *scenes.ATTRIBUTES}
    assert (tmp_path / "j" / "diffusion_pytorch_model.safetensors").exists()


def test_quality_vs_latency_takes_tiny_sd():
    """bench quality-vs-latency on a text-to-image pipeline: the scene captions of the seeds, judged by the scene
    judge; the no-reuse reference equals a plain pipeline run."""
    from workbench.bench.methods import seed_conditions
    from workbench.bench.quality import bench_quality_latency
    from workbench.models.zoo import load_pipeline

    pipe = load_pipeline("tiny-sd")
    assert seed_conditions(pipe, [0, 1]) == scenes.eval_prompts(2)
    report = bench_quality_latency(seeds=1, models=("tiny-sd",), steps=4, device="cpu", autofr=False, plans=False,
                                   thresholds=(), peers=False, flop_seeds=1, small=True)
    entry = report["models"]["tiny-sd"]
    assert entry["denoiser"] == "UNet2DConditionModel"
    names = [m["name"] for m in entry["methods"]]
    assert "FR M=2" in names and "DDIM 2" in names
    fr = next(m for m in entry["methods"] if m["name"] == "FR M=2")
    assert 0 < fr["compute_fraction"] < 1 and fr["psnr"] > 10
    assert all("prompt_adherence" in m for m in entry["methods"])


def test_bad_training_input_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "workbench", "train", "--model", "tiny-sd", "--init-from",
                          str(tmp_path / "nope"), "--out", str(out), "--steps", "1"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert res.returncode == 2 and not out.exists()
    assert res.stderr.strip().splitlines()[-1] == f"error: --init-from {tmp_path / 'nope'} is not a tiny-sd folder " \
                                                   "(no model_index.json in it)"
