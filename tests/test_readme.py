"""The README shows the test command that CI runs, and links only to docs that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_test_command_is_the_one_ci_runs():
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    ci_commands = [line.strip() for line in ci_lines if line.startswith(("python -m pytest", "ruff "))]
    tests_block = (ROOT / "README.md").read_text().split("**Tests**", 1)[1].split("```", 2)[1]
    assert len(ci_commands) == 3 and all(command in tests_block.splitlines() for command in ci_commands)


def test_readme_links_point_to_existing_files():
    links = re.findall(r"\]\(([^)#]+)\)", (ROOT / "README.md").read_text())
    missing = [link for link in links if not link.startswith("http") and not (ROOT / link).exists()]
    assert not missing


def readme_commands() -> list:
    """Every `reid TASK ...` command the README shows, in code blocks and in inline code."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    lines += re.findall(r"`(reid [^`]*)`", text)
    return [line for line in lines if re.match(r"reid (train|evaluate|inference|export|tune)\b", line)]


def test_readme_task_commands_with_overrides_name_a_spec():
    """`reid evaluate evaluate.checkpoint=x.onnx` alone has no query or gallery folders: a command that sets fields
    names the spec they complete (crops needs none)."""
    commands = readme_commands()
    assert any(command.startswith("reid evaluate") for command in commands)
    assert not [command for command in commands if "=" in command and " -e " not in f"{command} "]


def test_readme_tests_block_says_which_venv_it_makes():
    paragraph = (ROOT / "README.md").read_text().split("**Tests**", 1)[1].split("```", 1)[0]
    assert "same `.venv` as the quick start" in " ".join(paragraph.split())
