"""Suites: a YAML file that lists training runs, each a base run config plus ``--set`` overrides.

A suite file (``configs/repro/*.yaml``)::

    name: lm                              # names the default output folder: runs/repro/lm
    description: Transformer++, SWA, LMM, MAC, MAG and MAL at ~16M parameters ...
    metric_split: test                    # the split of the headline bits per byte (default: test)
    defaults:                             # applied to every run, before the run's own
      config: ../small.yaml               # a run config; relative to this file
      set: [train.seed=0]
    runs:
      - name: mac                         # the run's folder name: letters, digits, '.', '_', '-'
        label: MAC                        # for tables and plots (default: the name)
        set: [model.variant=mac, model.mlp_hidden=960]
      - name: transformer
        config: ../small_transformer.yaml # a run may name its own base config
        set: [model.variant=transformer]

A run's config is ``config`` (the run's, else the suite's default, else the tiny default of
:func:`~titans.training.load_run_config`), then ``defaults.set``, then the run's ``set``, then any overrides
given on the command line, in that order: exactly what ``titans train --config CONFIG --set ...`` builds.
Paths inside the run configs (``data.path``) are read from the current directory, as ``titans train`` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from titans.config_io import ConfigError, load_config, read_yaml
from titans.data import normalize_split
from titans.data.readers import DataError
from titans.training.config import RunConfig, load_run_config

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class RunSpec:
    """One run of a suite, as written in the file."""

    name: str
    label: str | None = None
    config: str | None = None  # a run config YAML, relative to the suite file; None: the suite's default
    set: list[str] = field(default_factory=list)  # "section.key=value" overrides
    notes: str = ""  # free text, carried into results.json

    def validate(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"suite run name {self.name!r} must be letters, digits, '.', '_' or '-' (a folder name)")


@dataclass
class SuiteDefaults:
    """What every run of a suite starts from."""

    config: str | None = None
    set: list[str] = field(default_factory=list)


@dataclass
class SuiteFile:
    """The schema of a suite YAML file (unknown keys are errors, like in run configs)."""

    name: str
    runs: list[RunSpec]
    description: str = ""
    metric_split: str = "test"  # the held-out split of the headline number; the trainer always evaluates valid
    defaults: SuiteDefaults = field(default_factory=SuiteDefaults)

    def validate(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"suite name {self.name!r} must be letters, digits, '.', '_' or '-'")
        if not self.runs:
            raise ConfigError("a suite needs at least one run under 'runs'")
        names = [run.name for run in self.runs]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ConfigError(f"suite run names must be unique; repeated: {', '.join(duplicates)}")
        try:
            self.metric_split = normalize_split(self.metric_split)
        except DataError as e:
            raise ConfigError(f"suite key 'metric_split': {e}") from e


@dataclass
class PlannedRun:
    """A run of a suite, resolved: its folder, base config file and the overrides, in order."""

    name: str
    label: str
    run_dir: Path
    config_file: Path | None
    overrides: list[str]
    notes: str = ""

    def load_config(self) -> RunConfig:
        """The run's validated config (raises :class:`ConfigError` naming the run and the bad key)."""
        try:
            return load_run_config(self.config_file, self.overrides)
        except ConfigError as e:
            raise ConfigError(f"suite run {self.name!r}: {e}") from e


@dataclass
class Suite:
    """A loaded suite: its file's contents and where its file lies."""

    spec: SuiteFile
    path: Path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def run_names(self) -> list[str]:
        return [run.name for run in self.spec.runs]

    def default_out_dir(self) -> Path:
        return Path("runs") / "repro" / self.name

    def plan(self, out_dir: str | Path, extra_overrides: list[str] | tuple[str, ...] = ()) -> list[PlannedRun]:
        """Every run of the suite, resolved for the output folder ``out_dir``; ``extra_overrides`` (from the
        command line) come after each run's own."""
        out = Path(out_dir)
        planned = []
        for run in self.spec.runs:
            config = run.config if run.config is not None else self.spec.defaults.config
            planned.append(
                PlannedRun(
                    name=run.name,
                    label=run.label or run.name,
                    run_dir=out / run.name,
                    config_file=None if config is None else (self.path.parent / config).resolve(),
                    overrides=[*self.spec.defaults.set, *run.set, *extra_overrides],
                    notes=run.notes,
                )
            )
        return planned

    def as_dict(self) -> dict[str, Any]:
        from titans.config_io import to_dict

        return {"file": str(self.path), **to_dict(self.spec)}


def load_suite(path: str | Path) -> Suite:
    """Read and check a suite file; every run's config is loaded too, so a bad key fails before any training."""
    path = Path(path).expanduser()
    spec = load_config(SuiteFile, read_yaml(path))
    suite = Suite(spec, path.resolve())
    for run in suite.plan(suite.default_out_dir()):
        if run.config_file is not None and not run.config_file.is_file():
            raise ConfigError(f"suite run {run.name!r}: config file not found: {run.config_file}")
        run.load_config()
    return suite
