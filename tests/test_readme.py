"""The README's Python snippets run on a fresh checkout (at reduced sizes, in an empty folder)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: the sizes each snippet is run at: README text -> the text run here. Every replacement must apply, so
#: a README edit that changes a snippet fails here until this table follows it.
REDUCED = {
    "Use the environment": {"num_envs=16": "num_envs=2"},
    "Train an agent": {"n_images=400": "n_images=8", "n_images=50": "n_images=4", "PretrainConfig(epochs=5)":
                       "PretrainConfig(epochs=1, channels=(4, 8), progress=False)", "num_envs=8": "num_envs=2",
                       "image_size=64": "image_size=32", "batch_size=8": "batch_size=2",
                       '"runs/example/actor.pt"})': '"runs/example/actor.pt", '
                                                    '"actor_kwargs": {"channels": (4, 8)}, '
                                                    '"critic_kwargs": {"channels": (4, 8)}})',
                       "learn(2_000, progress_bar=True)": "learn(4)"},
}


def python_snippets() -> dict[str, str]:
    """README section title -> its ```python block."""
    text = (ROOT / "README.md").read_text()
    out = {}
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        title, body = section.split("\n", 1)
        blocks = re.findall(r"```python\n(.*?)```", body, flags=re.S)
        if blocks:
            out[title.strip()] = "\n".join(blocks)
    return out


def test_every_python_snippet_is_run_here():
    assert set(python_snippets()) == set(REDUCED)


@pytest.mark.parametrize("section", sorted(REDUCED))
def test_readme_snippet_runs(section, tmp_path, monkeypatch):
    code = python_snippets()[section]
    for old, new in REDUCED[section].items():
        assert old in code, f"README section '{section}' no longer contains {old!r}: update REDUCED"
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)  # a fresh folder: nothing from an earlier run is there
    exec(compile(code, f"README.md ({section})", "exec"), {"__name__": "__readme__"})
