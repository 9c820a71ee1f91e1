"""The RL4Seg run and the experiments built on the library packages.

- :mod:`pipeline.config`: the run's configuration schema (composed of the library dataclasses), YAML, overrides;
- :mod:`pipeline.run_dir`: :class:`~pipeline.run_dir.RunDirectory`, the run-directory format;
- :mod:`pipeline.loop`: :class:`~pipeline.loop.RL4SegRun`, the whole loop of ``rl4seg-train``;
- :mod:`pipeline.evaluation`, :mod:`pipeline.report`, :mod:`pipeline.tables`: scores, reports, tables;
- :mod:`pipeline.inference`: :class:`~pipeline.inference.Segmenter` and NIfTI export (``rl4seg-predict``);
- :mod:`pipeline.baselines`: AdaBN, TENT, self-training;
- :mod:`pipeline.benchmark_da`, :mod:`pipeline.benchmark_rl`, :mod:`pipeline.zoo`: the benchmarks;
- :mod:`pipeline.commands`: the installed ``rl4seg-*`` commands.

Imports run one way: ``rl4seg_env -> agents -> reward -> pipeline``.
"""
