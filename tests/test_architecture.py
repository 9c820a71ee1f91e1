"""The package layout users and contributors rely on: one-way imports, an SB3-free env, installed commands."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: imports run one way only: a package may import the ones before it, never the ones after it
ORDER = ("rl4seg_env", "agents", "reward", "pipeline")
COMMANDS = ("rl4seg-train", "rl4seg-predict", "rl4seg-evaluate", "rl4seg-benchmark-da", "rl4seg-benchmark-rl",
            "rl4seg-calibrate-anatomy")


def _command(name: str) -> str | None:
    """The installed console script (on PATH, or beside this Python when PATH has no shim for it yet)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.is_file() else None)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every import statement in a file, module-level or inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


def test_imports_run_one_way_between_packages():
    wrong = []
    for rank, package in enumerate(ORDER):
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, module in _imports(path):
                if module in ORDER[rank + 1:]:
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module} "
                                 f"(order: {' -> '.join(ORDER)})")
    assert not wrong, "imports against the one-way order:\n" + "\n".join(wrong)


def test_the_import_checker_sees_function_local_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import numpy\n\ndef f():\n    from pipeline.loop import RL4SegRun\n    return RL4SegRun\n")
    assert (4, "pipeline") in _imports(module)


def test_the_env_package_never_imports_stable_baselines3():
    offenders = [f"{p.relative_to(ROOT)}:{line}" for p in sorted((ROOT / "rl4seg_env").rglob("*.py"))
                 for line, module in _imports(p) if module in ("stable_baselines3", "sb3_contrib")]
    assert not offenders, offenders
    code = "import rl4seg_env, sys; assert 'stable_baselines3' not in sys.modules, 'SB3 was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_version_and_typed_markers():
    import rl4seg_env

    assert rl4seg_env.__version__.count(".") == 2
    for package in ORDER:
        assert (ROOT / package / "py.typed").is_file(), package


@pytest.mark.parametrize("command", COMMANDS)
def test_installed_commands_answer_help_from_any_folder(command, tmp_path):
    exe = _command(command)
    assert exe is not None, f"{command} is not installed: run `pip install -e .` (pyproject [project.scripts])"
    out = subprocess.run([exe, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout and command in out.stdout


def test_installed_train_command_finds_its_packaged_default_config(tmp_path):
    import yaml

    out = subprocess.run([_command("rl4seg-train") or "rl4seg-train", "--print-config"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    printed = yaml.safe_load(out.stdout)
    shipped = yaml.safe_load((ROOT / "pipeline" / "configs" / "default.yaml").read_text())
    assert printed["ppo"]["kl_coef_base"] == shipped["ppo"]["kl_coef_base"]
    assert printed["data"]["target"]["preset"] == shipped["data"]["target"]["preset"]


def test_bad_override_exits_2_from_the_script_without_a_traceback():
    out = subprocess.run([sys.executable, "scripts/train_loop.py", "network.norm=banana"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "'network.norm'" in out.stderr and "command line" in out.stderr and "Traceback" not in out.stderr
