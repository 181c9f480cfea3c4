"""The ``fusion`` command: run, validate and demo."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from ._errors import FusionError
from ._logging import logger

__all__ = ["main"]


def _configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _default_run_dir(config_path: Path, name: str) -> Path:
    return config_path.resolve().parent / "runs" / name


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log every stage to the terminal (the run log always has them).")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Multi-modal outcome modelling: imaging, omics and clinical encoders, a tuned
    late-fusion head, and per-modality attributions."""
    _configure_logging(verbose)


@cli.command("run")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory. Default: runs/<name> beside the config file.")
@click.option("--resume", is_flag=True,
              help="Continue a run in an existing directory: finished folds, cached encoder outputs "
                   "and finished Optuna trials are reused. The config must be unchanged.")
@click.option("--overwrite", is_flag=True,
              help="Start again in an existing directory; the old one is moved to <dir>.previous-<time>, not deleted.")
@click.option("--no-report", is_flag=True, help="Skip report.html (all other artifacts are written).")
def run_command(config: Path, out: Path | None, resume: bool, overwrite: bool, no_report: bool) -> None:
    """Cross-validate unimodal and fused models for CONFIG (a YAML file) and write a run directory.

    The directory contains the resolved config, the splits, metrics.json, out-of-fold
    predictions.csv, modality_contributions.csv, feature_attributions.csv, the Optuna
    study (optuna.db), run.log and report.html.
    """
    from ._pipeline import run
    from .config import load_config

    settings = load_config(config)
    run_dir = out or _default_run_dir(config, settings.name)
    result = run(settings, run_dir, resume=resume, overwrite=overwrite, report=not no_report)
    fused = result.metrics["models"]["fused"]["summary"][result.metrics["primary_metric"]]
    click.echo(f"run directory: {result.run_dir}")
    click.echo(f"fused {result.metrics['primary_metric']}: {fused['mean']:.3f} "
               f"[{fused['ci_low']:.3f}, {fused['ci_high']:.3f}] over folds")
    if result.report is not None:
        click.echo(f"report: {result.report}")


@cli.command("validate")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
def validate_command(config: Path) -> None:
    """Check CONFIG and its inputs without training: alignment, target balance and folds."""
    from ._pipeline import make_outer_splits
    from .config import load_config
    from .data._cohort import build_cohort

    settings = load_config(config)
    cohort = build_cohort(settings)
    alignment = cohort.alignment
    click.echo(f"subjects with a target: {alignment['n_with_target']} "
               f"({alignment['excluded_without_target']} excluded without target)")
    for name, entry in alignment["modalities"].items():
        click.echo(f"  {name}: {entry['n_present']} present, {len(entry['missing_here'])} missing, "
                   f"{len(entry['only_here'])} id(s) only in this source")
    splits = make_outer_splits(settings, cohort, repeats=1)
    target = cohort.target.loc[splits["subject_id"]]
    target = target.assign(fold=splits["fold"].to_numpy())
    if cohort.task.kind == "survival":
        click.echo(f"target: survival, {int(cohort.target['event'].sum())} events in {len(cohort.target)} subjects")
        per_fold = target.groupby("fold")["event"].agg(["size", "sum"])
        lines = [f"{fold}: {size} subjects, {events} events" for fold, (size, events) in per_fold.iterrows()]
    elif cohort.task.is_classification:
        counts = cohort.target["y"].value_counts().sort_index()
        click.echo(f"target: {cohort.task.kind}, class counts " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
        per_fold = target.groupby("fold")["y"].value_counts().unstack(fill_value=0)
        lines = [f"{fold}: " + ", ".join(f"class {k}: {v}" for k, v in row.items()) for fold, row in per_fold.iterrows()]
    else:
        click.echo(f"target: regression, mean {cohort.target['y'].mean():.3g}, sd {cohort.target['y'].std():.3g}")
        lines = [f"{fold}: {size} subjects" for fold, size in target.groupby("fold").size().items()]
    click.echo("outer folds:")
    for line in lines:
        click.echo(f"  {line}")
    click.echo("no errors found")


@cli.command("demo")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=Path("fusion-demo"))
@click.option("--task", type=click.Choice(["binary", "survival", "regression"]), default="binary",
              show_default=True, help="Outcome of the generated cohort.")
@click.option("--subjects", type=int, default=120, show_default=True, help="Number of subjects.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generator and the run.")
@click.option("--run/--no-run", "run_after", default=True, show_default=True,
              help="Run the main job on the cohort after writing it.")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier demo cohort in DIRECTORY (only the files it wrote) and move its run aside.")
def demo_command(directory: Path, task: str, subjects: int, seed: int, run_after: bool, overwrite: bool) -> None:
    """Write a synthetic cohort with known ground truth to DIRECTORY and run the main job on it.

    The cohort is written as real files (NIfTI volumes with a manifest, an .h5ad file, a
    clinical CSV), so the same loaders read it as a user's data. ground_truth.json records
    which features carry the signal.
    """
    from ._pipeline import run
    from .config import load_config
    from .datasets import make_demo_cohort

    cohort = make_demo_cohort(directory, task=task, n_subjects=subjects, seed=seed, overwrite=overwrite)
    click.echo(f"demo cohort written to {cohort.root} (config: {cohort.config_path})")
    if not run_after:
        return
    settings = load_config(cohort.config_path)
    result = run(settings, cohort.root / "run", overwrite=True)
    click.echo(f"run directory: {result.run_dir}")
    if result.report is not None:
        click.echo(f"report: {result.report}")


def main() -> None:
    """Entry point: user-input errors print one line; the traceback goes to the log."""
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted; run again with --resume to continue", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except FusionError as exc:
        logger.debug("error details", exc_info=True)
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted; run again with --resume to continue", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
