"""The policy loader under bad input: every failure is one :class:`PolicyError` (never another exception), unknown
keys are named, files are never half-written. Property-based (hypothesis): random JSON, random bytes and random
mutations of valid policies."""

import copy
import json
import math
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frdiff import Mixing, Policy, PolicyError
from frdiff.policy import MAX_DEPTH, MAX_FILE_BYTES

VALID = {"format": "frdiff-policy", "version": 1, "steps": 6, "scheduler": "ddim",
         "model": {"architecture": "UNet2DConditionModel", "fingerprint": "0123456789abcdef"},
         "blocks": [{"name": "down_blocks.0.resnets.0", "kind": "resnet", "granularity": "feature",
                     "keyframes": "101010"},
                    {"name": "mid_block.attentions.0", "kind": "attention", "granularity": "block",
                     "keyframes": "110011"}],
         "mixing": {"enabled": True, "schedule": "sigmoid", "center": 0.5, "slope": 30.0, "value": 0.0},
         "provenance": {"made_by": "test", "nested": {"a": [1, 2, {"b": None}]}}}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=25)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def only_policy_error(fn, *args):
    """``fn(*args)`` returns a valid policy or raises PolicyError with at least one one-line problem."""
    try:
        policy = fn(*args)
    except PolicyError as exc:
        assert exc.problems and all(isinstance(p, str) and p and "\n" not in p for p in exc.problems)
        return None
    assert isinstance(policy, Policy) and policy.problems() == []
    return policy


def test_the_valid_document_loads_and_round_trips():
    policy = Policy.from_dict(copy.deepcopy(VALID))
    assert policy.load_notes == []
    assert Policy.from_json(policy.to_json()).to_dict() == policy.to_dict()


@FAST
@given(json_values)
def test_random_json_never_raises_anything_but_policy_error(value):
    only_policy_error(Policy.from_json, json.dumps(value))


@FAST
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_but_policy_error(data):
    only_policy_error(Policy.from_bytes, data)


def _paths(doc, prefix=()):
    """Every (path to a value) inside a JSON document."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


ALL_PATHS = list(_paths(VALID))[1:]


@st.composite
def mutated(draw):
    doc = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(ALL_PATHS))
        parent = doc
        try:
            for key in path[:-1]:
                parent = parent[key]
            action = draw(st.sampled_from(["replace", "delete", "unknown", "keyframes"]))
            if action == "replace":
                parent[path[-1]] = draw(json_values)
            elif action == "delete" and isinstance(parent, dict):
                parent.pop(path[-1], None)
            elif action == "unknown" and isinstance(parent, dict):
                parent[draw(st.text(min_size=1, max_size=6))] = draw(json_values)
            elif action == "keyframes":
                doc["blocks"][draw(st.integers(0, 1))]["keyframes"] = draw(st.text(alphabet="01x", max_size=9))
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation removed this path
    return doc


@FAST
@given(mutated())
def test_mutations_of_a_valid_policy_never_raise_anything_but_policy_error(doc):
    only_policy_error(Policy.from_dict, doc)
    only_policy_error(Policy.from_json, json.dumps(doc))


def test_unknown_keys_are_named_when_ignored():
    doc = copy.deepcopy(VALID)
    doc["colour"] = "red"
    doc["blocks"][1]["speed"] = 3
    doc["mixing"]["ramp"] = 1
    notes = Policy.from_dict(doc).load_notes
    assert notes == ["ignored unknown key(s): colour", "block mid_block.attentions.0: ignored unknown key(s): speed",
                     "mixing: ignored unknown key(s): ramp"]


@pytest.mark.parametrize("text, message", [
    ("[" * 5000 + "]" * 5000, f"nests JSON more than {MAX_DEPTH} levels deep"),
    (json.dumps({**VALID, "provenance": json.loads("[" * 40 + "]" * 40)}), "nests JSON more than"),
    (json.dumps(VALID).replace('"slope": 30.0', '"slope": NaN'), "NaN is not a JSON number"),
    (json.dumps(VALID).replace('"slope": 30.0', '"slope": 1e300'), "mixing.slope must lie in (0, 10000]"),
    (json.dumps(VALID).replace('"slope": 30.0', '"slope": Infinity'), "Infinity is not a JSON number"),
    (json.dumps({**VALID, "blocks": []}), '"blocks" is empty'),
])
def test_hostile_documents_get_one_clear_line(text, message):
    with pytest.raises(PolicyError) as info:
        Policy.from_json(text)
    assert any(message in p for p in info.value.problems), info.value.problems


def test_files_that_are_not_policies_are_named_in_the_message(tmp_path, monkeypatch):
    cases = {"latin1.json": "é".encode("latin-1"), "big.json": b" " * (MAX_FILE_BYTES + 1)}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(PolicyError, match="latin1.json: the file is not UTF-8 text"):
        Policy.load(tmp_path / "latin1.json")
    with pytest.raises(PolicyError, match=r"big.json is 16.0 MiB; a policy file is at most 16 MiB"):
        Policy.load(tmp_path / "big.json")
    with pytest.raises(PolicyError, match="is a folder, not a policy file"):
        Policy.load(tmp_path)
    with pytest.raises(PolicyError, match="no policy file at"):
        Policy.load(tmp_path / "missing.json")
    (tmp_path / "locked.json").write_text(json.dumps(VALID))

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)  # (chmod 000 does not stop root, who runs CI)
    with pytest.raises(PolicyError, match="cannot read .*locked.json: Permission denied"):
        Policy.load(tmp_path / "locked.json")


def test_saving_onto_a_folder_refuses_and_leaves_nothing(tmp_path):
    policy = Policy.from_dict(copy.deepcopy(VALID))
    (tmp_path / "p.json").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder; give the policy a file name"):
        policy.save(tmp_path / "p.json")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["p.json"]
    policy.save(tmp_path / "ok.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.json", "p.json"]  # no temporary file left


def test_steep_sigmoids_do_not_overflow():
    for slope in (1e4, 1e300):
        m = Mixing(enabled=True, schedule="sigmoid", slope=slope)
        assert m.lam(0.0) == 0.0 and m.lam(1.0) == 1.0 and m.lam(0.5) == 0.5


def test_linear_lambda_is_snapped_to_exact_zero_as_exact_arithmetic_gives():
    """30 steps, M = 2 + mixing: step 13 has 30·(13/30 − 0.5) + 2 = 0 exactly, 1.1e-16 in floats (issue 17)."""
    m = Mixing(enabled=True)
    exact = [min(Fraction(1), max(Fraction(0), (30 * (Fraction(s, 30) - Fraction(1, 2)) + 2) / 4)) for s in range(30)]
    lams = [m.lam(s / 30) for s in range(30)]
    assert lams == pytest.approx([float(x) for x in exact], abs=1e-12)
    assert [s for s in range(30) if lams[s] == 0.0] == [s for s in range(30) if exact[s] == 0]  # exactly 0 there
    mask = torch.zeros(1, 30, dtype=torch.bool)
    mask[:, ::2] = True
    policy = Policy(blocks=["b"], keyframes=mask, steps=30, mixing=m)
    assert policy.step_kinds()[13] == "skip"
    assert policy.denoiser_calls() == 15 + sum(1 for s in range(1, 30, 2) if exact[s] > 0)
    assert not math.isnan(m.lam(0.5))
