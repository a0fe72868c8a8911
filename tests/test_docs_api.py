"""docs/api.md documents every name of ``frdiff.__all__`` with an example, and its examples run as written (in
order, as one script, in a scratch folder)."""

import re
from pathlib import Path

import frdiff

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_every_exported_name_has_a_section():
    headings = " ".join(re.findall(r"^###? .*$", DOC.read_text(), re.M))
    missing = [name for name in frdiff.__all__ if f"`{name}" not in headings]
    assert not missing, f"docs/api.md has no section for {missing}"


def test_examples_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = "\n".join(re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S))
    exec(compile(code, str(DOC), "exec"), {"__name__": "docs_api"})  # noqa: S102 - our own documentation
    out = capsys.readouterr().out
    lines = out.splitlines()
    expected = documented_outputs(DOC.read_text())
    assert len(expected) >= 15  # the parser still finds the examples' comments
    missing = [line for line in expected if line not in lines]
    assert not missing, f"docs/api.md's comments show output the examples no longer print: {missing}"
    assert (tmp_path / "policy.json").is_file()


# Comments on a print that describe its output instead of showing it.
PROSE = ("16 hex digits; equal for every copy of this architecture", "what the policy changed")


def documented_outputs(text: str) -> list[str]:
    """What the examples' ``print(...)  # shown`` comments show, one printed line each: the whole comment, or the
    value before ``: why`` where a number leads (``# 5: the same keyframe count`` shows ``5``)."""
    shown = []
    for comment in re.findall(r"^\s*print\(.*\)  # (.*)$", text, re.M):
        if comment in PROSE:
            continue
        number = re.match(r"(-?\d+(?:\.\d+)?): ", comment)
        shown.append(number.group(1) if number else comment)
    return shown
