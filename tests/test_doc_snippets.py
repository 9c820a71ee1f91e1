"""docs/benchmarking.md's snippets run here (at reduced sizes), so the page an RL researcher follows cannot rot."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "benchmarking.md"
#: section title -> {text in the page: text run here}; every replacement must apply
REDUCED = {
    "A stock Stable-Baselines3 algorithm (through the small wrapper)": {
        "n_envs=8": "n_envs=2", "learn(2_000)": "learn(40)", "n_images=32": "n_images=4"},
    "Your own algorithm on the full per-pixel action space": {
        "num_envs=8": "num_envs=2", "range(150)": "range(2)", "n_images=32": "n_images=4"},
}


def blocks(language: str) -> dict[str, list[str]]:
    """Section title (## or ###) -> its fenced blocks of ``language``."""
    out: dict[str, list[str]] = {}
    for section in re.split(r"^#{2,3} ", PAGE.read_text(), flags=re.M)[1:]:
        title, body = section.split("\n", 1)
        found = re.findall(rf"```{language}\n(.*?)```", body, flags=re.S)
        if found:
            out[title.strip()] = found
    return out


def test_every_python_snippet_is_run_here():
    assert set(blocks("python")) == set(REDUCED)


@pytest.mark.parametrize("section", sorted(REDUCED))
def test_python_snippet_runs(section, tmp_path, monkeypatch):
    code = "\n".join(blocks("python")[section])
    for old, new in REDUCED[section].items():
        assert old in code, f"docs/benchmarking.md '{section}' no longer contains {old!r}: update REDUCED"
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"docs/benchmarking.md ({section})", "exec"), {"__name__": "__doc__"})


def test_the_yaml_example_is_a_valid_zoo_file(tmp_path):
    from pipeline.zoo import load_zoo_config

    (example,) = blocks("yaml")["Add it to the benchmark"]
    assert "my_package.my_module:MyAlgo" in example and "policy: MyPolicy" in example
    path = tmp_path / "my_algo.yml"
    path.write_text(example.replace("my_package.my_module:MyAlgo", "agents.ppo:PixelPPO")
                    .replace("policy: MyPolicy", "policy: PixelUNetPolicy"))
    entry = load_zoo_config(path)["my_algo"]
    assert entry.env_id == "RL4Seg-v0" and entry.n_envs == 8
    assert entry.hyperparams["policy_kwargs"] == {"actor_kwargs": {"channels": [16, 32, 64]}}


def test_the_command_lines_name_real_files_and_options():
    from pipeline.commands.benchmark_rl import parse_args

    commands = [line for block in blocks("bash").values() for text in block for line in text.splitlines()
                if line.startswith("python scripts/benchmark_rl.py")]
    assert commands
    for line in commands:
        parse_args(line.split("#")[0].split()[2:])  # argparse exits on an unknown option
    for line in (l for b in blocks("bash").values() for t in b for l in t.splitlines() if "--conf-file" in l):
        assert (ROOT / line.split("--conf-file ")[1].split()[0]).is_file()
