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
    assert "['full', 'fr', 'full', 'fr'] 10" in lines and "K-K-KrKrKr" in lines
    assert "8 ['full', 'skip', 'full']" in lines and "[1, 0, 0, 1, 0, 0]" in lines
    assert (tmp_path / "policy.json").is_file()
