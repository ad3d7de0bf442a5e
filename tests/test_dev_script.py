"""`./dev.sh` (README "Set up") runs exactly README's commands, and `.ci/run` runs `./dev.sh test`."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _blocks(section: str) -> list[str]:
    readme = (ROOT / "README.md").read_text()
    body = readme.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [line.split("  #")[0].strip() for block in re.findall(r"```sh\n(.*?)```", body, re.S)
            for line in block.splitlines() if line.strip()]


def test_dev_script_runs_the_readme_commands():
    dev = (ROOT / "dev.sh").read_text()
    tests = [c for c in _blocks("Test") if "pytest" in c and '"not slow"' not in c]
    assert len(tests) == 2 and all(c in dev for c in tests), tests  # the default run, then the long cases
    setup = next(c for c in _blocks("Set up") if c.startswith("python3 -m venv"))
    assert setup in dev
    assert ".venv/bin/shira demo" in dev and "./dev.sh demo" in _blocks("Set up")
    assert "./dev.sh test" in (ROOT / ".ci/run").read_text()
