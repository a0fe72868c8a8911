"""The README's two set-up commands and CI's command stay in step."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.strip().splitlines()]


def test_readme_opens_with_exactly_two_setup_commands():
    commands = _readme_commands()
    assert len(commands) == 2
    assert commands[0].endswith("streamlit run streamlit_app.py") and "requirements.txt" in commands[0]
    assert "requirements-dev.txt" in commands[1] and "pytest" in commands[1]
    # Nothing but a title line before the first code block.
    head = (ROOT / "README.md").read_text().split("```bash", 1)[0].strip().splitlines()
    assert len(head) == 1 and head[0].startswith("# ")


def test_ci_runs_the_readme_test_command_verbatim():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert _readme_commands()[1] in ci_lines


def test_torch_is_pinned():
    reqs = (ROOT / "requirements.txt").read_text().splitlines()
    assert "torch==2.13.0" in reqs
