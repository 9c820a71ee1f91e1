"""The run-directory format, owned by one class: :class:`RunDirectory`.

Layout::

    config.yaml                    resolved configuration
    criteria.yaml                  anatomical criteria calibrated on the source labels (criteria: calibrated)
    state.json                     completed phases and report rows (written last at each boundary)
    checkpoints/actor_source.pt    source-pretrained actor (iteration 0; also the reference policy)
    checkpoints/oracle_target.pt   target-supervised oracle (evaluation baseline, optional)
    checkpoints/shape_ae.pt        shape auto-encoder trained on source label maps
    checkpoints/tent.pt, adabn.pt  the TENT and AdaBN baselines of the report
    checkpoints/iter_000/actor.pt  the actor RL started from, when not the source one (ppo.init: adabn / tent)
    checkpoints/iter_XXX/          ppo.zip, actor.pt, critic.pt, reward_net.pt (with temperature), pseudo_labels.npz,
                                   random_state.json (generators and env episodes at the iteration's end)
    reward_dataset/iter_XXX/       reward samples (accumulate across iterations)
    tb/                            TensorBoard logs (pretraining, PPO, reward networks)
    report.csv, report.md, report.html, metrics.png, predictions_iter_XXX.png, cases_iter_XXX.png,
    reliability_iter_XXX.png

Every writer and reader of a run (the loop, the evaluation, the benchmarks, the uncertainty comparison)
goes through this class; every file is written atomically, and an iteration counts as done only once
``state.json`` says so.
"""
from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None

import numpy as np

from rl4seg_env.io import TEMP_FILE_GLOB, atomic_save_npz, atomic_write_text


class DamagedRunError(RuntimeError):
    """A file a resume relies on is missing or unreadable; the message names it and says what to do."""


class RunLockedError(RuntimeError):
    """Another process is writing this run directory (the message names it, its pid and start time)."""


class RunDirectory:
    """Paths and state of one run directory (module docstring).

    :param root: the run directory (not created until :meth:`create` or a write).
    """

    STATE = "state.json"
    CONFIG = "config.yaml"

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._lock: IO[str] | None = None

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.root)!r})"

    # --- paths ----------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / self.CONFIG

    @property
    def state_path(self) -> Path:
        return self.root / self.STATE

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def reward_dataset(self) -> Path:
        return self.root / "reward_dataset"

    @property
    def source_actor(self) -> Path:
        return self.checkpoints / "actor_source.pt"

    @property
    def oracle_actor(self) -> Path:
        return self.checkpoints / "oracle_target.pt"

    @property
    def calibrated_criteria(self) -> Path:
        """Anatomical criteria fitted to the source labels (``reward_dataset.criteria: calibrated``)."""
        return self.root / "criteria.yaml"

    @property
    def tent_actor(self) -> Path:
        """The TENT baseline of the report (its "TENT + TTO" rows reuse it)."""
        return self.checkpoints / "tent.pt"

    @property
    def adabn_actor(self) -> Path:
        """The AdaBN baseline of the report."""
        return self.checkpoints / "adabn.pt"

    def baseline_actor(self, name: str) -> Path | None:
        """The checkpoint of the label-free baseline ``name`` ("adabn" or "tent"; None for any other name)."""
        return {"adabn": self.adabn_actor, "tent": self.tent_actor}.get(name)

    @property
    def shape_ae(self) -> Path:
        return self.checkpoints / "shape_ae.pt"

    def tensorboard(self, tag: str = "") -> Path:
        return self.root / "tb" / tag if tag else self.root / "tb"

    def iteration_dir(self, iteration: int, create: bool = False) -> Path:
        d = self.checkpoints / f"iter_{iteration:03d}"
        if create:
            d.mkdir(parents=True, exist_ok=True)
        return d

    def actor(self, iteration: int) -> Path:
        """The actor of ``iteration``; 0 is the one RL started from: ``iter_000/actor.pt`` when the run started
        from an adapted copy (``ppo.init`` adabn / tent), else the source-pretrained actor."""
        path = self.iteration_dir(iteration) / "actor.pt"
        return self.source_actor if iteration == 0 and not path.is_file() else path

    def reward_net(self, iteration: int, member: int = 0) -> Path:
        """The reward network of ``iteration``; ``member`` k > 0: the k-th extra network of an ensemble."""
        return self.iteration_dir(iteration) / ("reward_net.pt" if member == 0 else f"reward_net_{member}.pt")

    def ppo_model(self, iteration: int) -> Path:
        return self.iteration_dir(iteration) / "ppo.zip"

    def random_state(self, iteration: int) -> Path:
        """The generators' and training env's state at the end of ``iteration`` (a resume restores it)."""
        return self.iteration_dir(iteration) / "random_state.json"

    def save_random_state(self, iteration: int, state: dict[str, Any]) -> Path:
        return atomic_write_text(self.random_state(iteration), json.dumps(state))

    def load_random_state(self, iteration: int) -> dict[str, Any] | None:
        """:meth:`save_random_state`'s state, ``None`` for a run written before random states were kept.

        :raises ValueError: the file is corrupt (the message names it).
        """
        path = self.random_state(iteration)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: unreadable random state ({type(exc).__name__}: {exc}); resume from the "
                             f"previous iteration (--resume {self.root} --from-iteration {iteration - 1})") from exc

    def figure(self, name: str) -> Path:
        return self.root / f"{name}.png"

    # --- creation -------------------------------------------------------------------------------------
    def is_run(self) -> bool:
        return self.config_path.is_file()

    def create(self, config_yaml: str) -> None:
        """Start a new run here (taking the write lock): refuse a folder that holds one, write ``config.yaml``."""
        self.lock()
        if self.state_path.exists():
            raise FileExistsError(f"{self.root} already holds a run; pass --resume {self.root} to continue "
                                  "it, or choose another run_dir")
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_path, config_yaml)
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def require_run(self) -> None:
        """:raises FileNotFoundError: this folder holds no run (no ``config.yaml``)."""
        if not self.is_run():
            raise FileNotFoundError(f"{self.root}: not a run directory (no {self.CONFIG}) - cannot resume")

    # --- lock -----------------------------------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    def lock(self) -> None:
        """Take the exclusive write lock of this run directory (``fcntl.flock`` on ``.lock``).

        Held until :meth:`unlock` or the end of the process (the OS frees it when the process dies, also on
        SIGKILL). A second writer is refused at once.

        :raises RunLockedError: another process holds it (the message names the holder's pid and start time).
        """
        if self._lock is not None or fcntl is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.lock_path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown process"
            handle.close()
            raise RunLockedError(f"{self.root} is being written by another rl4seg process ({holder}); wait for it "
                                 "to finish or stop it, or choose another run directory") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, started {datetime.datetime.now().isoformat(timespec='seconds')}\n")
        handle.flush()
        self._lock = handle

    def unlock(self) -> None:
        """Release the write lock (no-op when not held)."""
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    # --- state ----------------------------------------------------------------------------------------
    def load_state(self) -> dict[str, Any]:
        """The run's state (a fresh one when there is no ``state.json`` yet).

        :raises ValueError: ``state.json`` is corrupt (the message names it).
        """
        if not self.state_path.is_file():
            return {"completed_iterations": 0, "rows": [], "baselines_done": False}
        try:
            state = json.loads(self.state_path.read_text())
            int(state["completed_iterations"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{self.state_path}: corrupt run state ({type(exc).__name__}: {exc})") from exc
        return state

    def save_state(self, state: dict[str, Any]) -> None:
        atomic_write_text(self.state_path, json.dumps(state, indent=1, default=float))

    def last_completed_iteration(self) -> int:
        """The last RL4Seg iteration ``state.json`` marks as completed.

        :raises FileNotFoundError: no ``state.json``.
        :raises ValueError: the state is corrupt or no iteration is completed yet.
        """
        if not self.state_path.is_file():
            raise FileNotFoundError(f"{self.root}: not a run directory of rl4seg-train (no {self.STATE})")
        done = int(self.load_state()["completed_iterations"])
        if done < 1:
            raise ValueError(f"{self.root}: no RL4Seg iteration completed yet "
                             f"({self.STATE}: completed_iterations={done})")
        return done

    # --- integrity ------------------------------------------------------------------------------------
    def remove_temp_files(self) -> list[Path]:
        """Delete the temporary files that writes interrupted by a kill left behind; returns them."""
        stray = [p for p in self.root.rglob(TEMP_FILE_GLOB) if p.is_file()]
        stray += [p for p in self.checkpoints.rglob(".ppo.zip.tmp.zip") if p.is_file()]
        for path in stray:
            path.unlink(missing_ok=True)
        return stray

    def verify(self) -> None:
        """Check every file a resume relies on (:meth:`damaged_files`).

        :raises DamagedRunError: naming the damaged files and the iteration to resume from instead.
        """
        done = int(self.load_state()["completed_iterations"])
        damaged = self.damaged_files(done)
        if not damaged:
            return
        lines = [f"{path}: {problem}" for path, problem, _ in damaged]
        first = min(iteration for _, _, iteration in damaged)
        if first >= 1:
            advice = (f"resume from iteration {first - 1}, the last one whose files are intact: rl4seg-train --resume "
                      f"{self.root} --from-iteration {first - 1}")
        else:
            advice = "a file of the run's first phases is damaged: start a new run"
        raise DamagedRunError(f"{self.root}: damaged file(s), the run cannot resume as it is:\n  "
                              + "\n  ".join(lines) + f"\n{advice}")

    def damaged_files(self, upto: int) -> list[tuple[Path, str, int]]:
        """Check every file a resume relies on, by reading it: the source actor, the shape auto-encoder and
        baselines when present, and each completed iteration's checkpoints, pseudo-labels and reward samples.

        :param upto: the last completed iteration.
        :return: ``(file, problem, iteration)`` for each damaged file (iteration 0: not an iteration's file).
        """
        import zipfile

        import torch

        def torch_file(path: Path) -> str | None:
            try:
                torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:
                return f"unreadable checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
            return None

        def zip_file(path: Path) -> str | None:
            try:
                with zipfile.ZipFile(path) as z:
                    bad = z.testzip()
                    if bad is not None or "data" not in z.namelist():
                        return f"damaged archive ({bad or 'no data entry'})"
            except (zipfile.BadZipFile, OSError) as exc:
                return f"damaged archive ({type(exc).__name__}: {exc})"
            return None

        def npz_file(path: Path) -> str | None:
            try:
                with np.load(path, allow_pickle=False) as z:
                    for key in z.files:
                        z[key]
            except Exception as exc:
                return f"unreadable arrays ({type(exc).__name__}: {exc})"
            return None

        def json_file(path: Path) -> str | None:
            try:
                json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                return f"unreadable JSON ({type(exc).__name__}: {exc})"
            return None

        checks: list[tuple[Path, Any, int, bool]] = [
            (self.source_actor, torch_file, 0, False), (self.shape_ae, torch_file, 0, False),
            (self.tent_actor, torch_file, 0, False), (self.adabn_actor, torch_file, 0, False)]
        for i in range(0 if self.actor(0) != self.source_actor else 1, upto + 1):
            d = self.iteration_dir(i)
            checks.append((d / "actor.pt", torch_file, i, True))
            if i >= 1:
                checks += [(d / "critic.pt", torch_file, i, True), (d / "ppo.zip", zip_file, i, True),
                           (d / "pseudo_labels.npz", npz_file, i, True), (d / "reward_net.pt", torch_file, i, False),
                           (d / "random_state.json", json_file, i, False)]
                samples = self.reward_dataset / f"iter_{i:03d}"
                checks.append((samples / "done.json", json_file, i, False))
                checks += [(shard, npz_file, i, True) for shard in sorted(samples.glob("shard_*.npz"))]
        damaged = []
        for path, check, iteration, required in checks:
            if not path.is_file():
                if required:
                    damaged.append((path, "missing", iteration))
                continue
            problem = check(path)
            if problem:
                damaged.append((path, problem, iteration))
        return damaged

    def roll_back(self, iteration: int) -> dict[str, Any]:
        """Forget the iterations after ``iteration`` (their checkpoints, reward samples and report rows), so
        that a resume continues from it; returns the new state."""
        import shutil

        state = self.load_state()
        done = int(state["completed_iterations"])
        if not 0 <= iteration <= done:
            raise ValueError(f"{self.root}: cannot resume from iteration {iteration}: completed iterations are "
                             f"0..{done}")
        for i in range(iteration + 1, done + 1):
            for folder in (self.iteration_dir(i), self.reward_dataset / f"iter_{i:03d}"):
                (folder / "done.json").unlink(missing_ok=True)  # invisible first, then removed
                shutil.rmtree(folder, ignore_errors=True)
        state["completed_iterations"] = iteration
        state["rows"] = [r for r in state.get("rows", []) if r.get("iteration") != "selected"
                         and not (isinstance(r.get("iteration"), int) and r["iteration"] > iteration)]
        self.save_state(state)
        return state

    # --- pseudo-labels ------------------------------------------------------------------------------------
    def save_pseudo_labels(self, iteration: int, pseudo_labels: dict[str, np.ndarray]) -> Path:
        ids = sorted(pseudo_labels)
        labels = np.stack([pseudo_labels[k] for k in ids]) if ids else np.zeros((0, 1, 1), np.uint8)
        return atomic_save_npz(self.iteration_dir(iteration, create=True) / "pseudo_labels.npz",
                               ids=np.asarray(ids, dtype=str), labels=labels)

    def load_pseudo_labels(self, iteration: int) -> dict[str, np.ndarray]:
        """Pseudo-labels accepted up to ``iteration`` (empty for iteration 0)."""
        if iteration == 0:
            return {}
        with np.load(self.iteration_dir(iteration) / "pseudo_labels.npz", allow_pickle=False) as z:
            return {str(k): v for k, v in zip(z["ids"], z["labels"])}
