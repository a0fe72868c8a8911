"""Policy data: JSON round trip, every validation message, remapping to another step count."""

import json

import pytest
import torch

import frdiff
from frdiff import Mixing, Policy, PolicyError, make_preset


def _mask(text_rows):
    return torch.tensor([[c == "1" for c in row] for row in text_rows])


def test_json_round_trip_keeps_everything(unet_pipe, tmp_path):
    p = make_preset("uniform", unet_pipe.unet, 10, interval=3, mix=True)
    p.provenance["metrics"] = {"psnr": 31.5}
    path = p.save(tmp_path / "p.json")
    data = json.loads(path.read_text())
    assert data["format"] == "frdiff-policy" and data["version"] == 2
    assert data["blocks"][0]["keyframes"] == "1001001001"
    q = Policy.load(path)
    assert q.blocks == p.blocks and torch.equal(q.keyframes, p.keyframes) and q.granularity == p.granularity
    assert vars(q.mixing) == vars(p.mixing) and q.model == p.model and q.provenance == p.provenance
    assert q.to_dict() == p.to_dict()


def _doc(**over):
    doc = {"format": "frdiff-policy", "version": 1, "steps": 3, "scheduler": "ddim",
           "model": {"architecture": "UNet2DConditionModel", "fingerprint": "x"},
           "blocks": [{"name": "a", "kind": "resnet", "granularity": "feature", "keyframes": "101"}],
           "mixing": {"enabled": False}}
    doc.update(over)
    return doc


@pytest.mark.parametrize("doc,message", [
    (_doc(format="other"), "not an FRDiff policy"),
    (_doc(version=3), "unsupported policy version 3; this build reads versions 1, 2"),
    (_doc(version=2, blocks=[{"name": "a", "reuse": "taylor9", "keyframes": "101"}]),
     "block a: reuse 'taylor9' is not one of hold, taylor1, taylor2"),
    (_doc(version=2, skip_reuse="guess"), "skip_reuse 'guess' is not one of"),
    (_doc(version=2, forecast_axis="sigma"), "forecast_axis 'sigma' is not one of step, timestep"),
    (_doc(version=2, cache_dtype="int8"), "cache_dtype 'int8' is not one of"),
    (_doc(steps="3"), "\"steps\" must be an integer"),
    (_doc(blocks={"a": 1}), "\"blocks\" must be a list"),
    (_doc(blocks=[{"name": "a", "keyframes": "10"}]), "block a: keyframes has 2 steps, the policy 3"),
    (_doc(blocks=[{"name": "a", "keyframes": "1x1"}]), "block a: keyframes must be a string of 0/1"),
    (_doc(blocks=[{"name": "a", "keyframes": "011"}]), "step 0 must be a keyframe for every block"),
    (_doc(blocks=[{"name": "a", "keyframes": "101"}, {"name": "a", "keyframes": "111"}]), "blocks listed twice: a"),
    (_doc(blocks=[{"name": "a", "granularity": "pixel", "keyframes": "101"}]), "granularity 'pixel' is not one of"),
    (_doc(mixing={"enabled": True, "schedule": "cubic"}), "mixing.schedule is 'cubic'"),
    (_doc(mixing={"enabled": True, "center": 1.5}), "mixing.center must lie in [0, 1]"),
    (_doc(mixing={"enabled": True, "slope": -1}), "mixing.slope must lie in (0, 10000]"),
    (_doc(mixing={"enabled": True, "slope": 1e300}), "mixing.slope must lie in (0, 10000]"),
    (_doc(mixing={"enabled": True, "value": 2}), "mixing.value must lie in [0, 1]"),
    (_doc(mixing={"enabled": True, "slope": "steep"}), "mixing.slope must be a finite number, got 'steep'"),
    (_doc(mixing={"enabled": "yes"}), "mixing.enabled must be true or false, got 'yes'"),
    (_doc(blocks=[]), "\"blocks\" is empty"),
    (_doc(steps=0, blocks=[]), "\"steps\" must lie in 1..10000, got 0"),
    (_doc(steps=20_000), "\"steps\" must lie in 1..10000"),
    (_doc(blocks=[{"name": "a", "kind": "laser", "keyframes": "101"}]), "kind 'laser' is not one of"),
    (_doc(blocks=[{"name": "", "keyframes": "101"}]), "blocks[0] must be an object with a non-empty \"name\""),
    (_doc(model=[1]), "\"model\" must be an object, got a list"),
    (_doc(scheduler=3), "\"scheduler\" must be a string, got a number"),
    ([1, 2], "a policy must be a JSON object"),
])
def test_every_validation_error_has_its_message(doc, message):
    with pytest.raises(PolicyError) as info:
        Policy.from_dict(doc)
    assert any(message in p for p in info.value.problems), info.value.problems


def test_several_problems_are_reported_together_one_per_line():
    doc = _doc(blocks=[{"name": "a", "granularity": "pixel", "keyframes": "001"}],
               mixing={"enabled": True, "slope": 0, "center": 2})
    with pytest.raises(PolicyError) as info:
        Policy.from_dict(doc)
    assert len(info.value.problems) == 4 and str(info.value).count("\n") == 3


def test_bad_json_and_missing_file():
    with pytest.raises(PolicyError, match="not valid JSON"):
        Policy.from_json("{nope")
    with pytest.raises(PolicyError, match="no policy file"):
        Policy.load("/nonexistent/p.json")


def test_checks_against_the_model(unet_pipe, dit_pipe):
    p = make_preset("uniform", unet_pipe.unet, 4)
    den = dit_pipe.transformer
    problems = p.problems(model_blocks=dict(frdiff.find_blocks(den)), fingerprint=frdiff.model_fingerprint(den),
                          steps=6)
    assert any("made for another model" in x for x in problems)
    assert any("unknown block(s) for this model: down_blocks.0.resnets.0" in x for x in problems)
    assert any("for 4 steps but the run has 6; remap it" in x for x in problems)
    bad = Policy(blocks=["transformer_blocks.0"], keyframes=[[True, False]], steps=2, kinds=["generic"],
                 granularity=["feature"])
    assert any("supports granularity block, not 'feature'" in x
               for x in bad.problems(model_blocks={"transformer_blocks.0": "generic"}))


def test_apply_refuses_a_policy_for_another_model(unet_pipe, dit_pipe):
    with pytest.raises(PolicyError, match="another model"):
        with frdiff.apply(dit_pipe, make_preset("none", unet_pipe.unet, 4)):
            pass
    assert frdiff.attached_hooks(dit_pipe) == []


@pytest.mark.parametrize("rows,steps,expected", [
    (["1010101010"], 10, ["1010101010"]),  # identity
    (["1010101010"], 5, ["11010"]),  # fewer steps: keyframe fraction kept
    # by hand: A at x = 5/3·(j+1) → 1, 2, 2, 3, 3, 4; × 0.6 → floors 0, 1, 1, 1, 1, 2 → grows at j = 1 and 5
    (["1001001001"], 6, ["110001"]),
    (["1010"], 8, ["10001000"]),  # more steps: keyframe count kept at the same relative positions
    (["1111000001"], 5, ["11000"]),  # front-loaded shape kept (A at 2, 4, …, 10 = 2, 4, 4, 4, 5; × 0.5 floored)
])
def test_remap(rows, steps, expected):
    p = Policy(blocks=[f"b{i}" for i in range(len(rows))], keyframes=_mask(rows), steps=len(rows[0]),
               mixing=Mixing(enabled=True))
    q = p.remap(steps)
    assert ["".join("1" if v else "0" for v in r) for r in q.keyframes.tolist()] == expected
    assert q.steps == steps and q.mixing.enabled and q.provenance["from_steps"] == len(rows[0])
    q.check()


def test_a_policy_built_by_hand_with_wrong_types_gets_one_line_each(unet_pipe):
    mask = [[True, False, True, False]]
    bad = Policy(blocks=["b0"], keyframes=mask, steps=4, mixing=Mixing(enabled="no", center="x", slope=float("nan")))
    assert bad.problems() == ["mixing.enabled must be True or False, got 'no'",
                              "mixing.center must be a finite number, got 'x'",
                              "mixing.slope must be a finite number, got nan"]
    worse = Policy(blocks=["b0"], keyframes=mask, steps=4, mixing={"enabled": True}, model="m", scheduler=None)
    assert worse.problems() == ["model must be a dict, got str", "scheduler must be a string, got None",
                                "mixing must be a frdiff.Mixing, got dict"]
    assert Policy(blocks=["b0"], keyframes=mask, steps=4, mixing=Mixing(schedule=["linear"])).problems() == \
        ["mixing.schedule must be a string, got ['linear']"]
    with pytest.raises(PolicyError, match="mixing.enabled must be True or False"):
        with frdiff.apply(unet_pipe, make_preset("uniform", unet_pipe.unet, 4, mixing=Mixing(enabled=1))):
            pass
    assert frdiff.attached_hooks(unet_pipe) == []
    with pytest.raises(TypeError, match="takes a denoiser"):
        frdiff.model_fingerprint(unet_pipe)  # the pipeline, not its denoiser
