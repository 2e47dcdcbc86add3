"""The map at the top of docs/architecture.md names every package, module group and module
of the product code, and every file of the console's browser side (issue 24: the map had
left out metrics, the app factory, settings, the console's JS and the client)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SKIP = {"tests", "bench", ".venv", ".git"}


def the_map() -> str:
    text = (REPO / "docs/architecture.md").read_text()
    return text.split("\n## The map\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]


def packages() -> list[Path]:
    """Top-level folders of the repository that are Python packages, tests and bench aside."""
    return sorted(p for p in REPO.iterdir()
                  if p.is_dir() and p.name not in SKIP and (p / "__init__.py").exists())


def unnamed(text: str) -> list[str]:
    missing = []
    for package in packages():
        for path in sorted(package.rglob("*")):
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(REPO).as_posix()
            if path.is_dir():
                if f"{path.name}/" not in text:
                    missing.append(rel + "/")
            elif (path.suffix == ".py" and path.name != "__init__.py"
                  and not re.search(rf"(?<![\w.]){re.escape(path.stem)}(?!\w)", text)):
                missing.append(rel)
    for asset in sorted((REPO / "service/console/static").iterdir()):
        if asset.name not in text:
            missing.append(asset.relative_to(REPO).as_posix())
    return missing


def test_the_map_names_every_package_and_module() -> None:
    text = the_map()
    assert [p.name for p in packages()], "no package found"
    for package in packages():
        assert f"`{package.name}/`" in text, package.name
    assert not unnamed(text), unnamed(text)


def test_the_map_check_sees_a_module_left_out() -> None:
    text = the_map()
    assert unnamed(text.replace("load_signal", "?")) == ["gateway/load_signal.py"]
