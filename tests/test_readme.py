"""The README shows the test command that CI runs, and links only to docs that exist."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_test_command_is_the_one_ci_runs():
    ci_command = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in line][-1].strip()
    tests_block = (ROOT / "README.md").read_text().split("**Tests**", 1)[1].split("```", 2)[1]
    assert ci_command in tests_block.splitlines()


def test_readme_links_point_to_existing_files():
    links = re.findall(r"\]\(([^)#]+)\)", (ROOT / "README.md").read_text())
    missing = [link for link in links if not link.startswith("http") and not (ROOT / link).exists()]
    assert not missing
