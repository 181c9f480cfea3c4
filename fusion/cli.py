"""The ``fusion`` command: run, benchmark, validate, demo, predict and explain."""

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
    study (optuna.db), run.log, report.html and the model bundle (bundle/) that
    `fusion predict` and `fusion explain` read.
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


@cli.command("benchmark")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Benchmark directory. Default: runs/<name>-benchmark beside the config file.")
@click.option("--resume", is_flag=True, help="Continue in an existing directory; finished strategies are reused.")
@click.option("--overwrite", is_flag=True,
              help="Start again in an existing directory; the old one is moved to <dir>.previous-<time>.")
@click.option("--from-run", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="A 'fusion run' directory of the same config whose folds and cached encoder outputs are reused.")
@click.option("--no-report", is_flag=True, help="Skip report.html (the CSV and JSON results are written).")
def benchmark_command(config: Path, out: Path | None, resume: bool, overwrite: bool, from_run: Path | None,
                      no_report: bool) -> None:
    """Compare fusion strategies for CONFIG on the same folds, encoders and metrics.

    Writes leaderboard.csv, comparisons.csv (Nadeau-Bengio corrected resampled t-test),
    robustness.csv, benchmark.json, per-fold predictions and report.html.
    """
    from .benchmark import run_benchmark
    from .config import load_config

    settings = load_config(config)
    run_dir = out or _default_run_dir(config, f"{settings.name}-benchmark")
    result = run_benchmark(settings, run_dir, resume=resume, overwrite=overwrite, from_run=from_run,
                           report=not no_report)
    metric = result.primary_metric
    click.echo(f"benchmark directory: {result.run_dir}")
    for row in result.leaderboard.head(5).itertuples():
        click.echo(f"  {row.rank}. {row.strategy}: {metric} {getattr(row, metric + '_mean'):.3f}")
    if result.report is not None:
        click.echo(f"report: {result.report}")


@cli.command("validate")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the report as JSON to this file.")
@click.option("--headers-only", is_flag=True,
              help="Read volume headers only; skip checking that each NIfTI file contains all its voxel data.")
def validate_command(config: Path, json_path: Path | None, headers_only: bool) -> None:
    """Check CONFIG and its inputs without training, and print what fusion run would use.

    Lists subjects per modality, volume shapes and spacings (from headers), omics and
    clinical summaries, target balance, the outer folds and the memory of the volume cache,
    then every problem as an error or warning with its fix. Exits with status 2 when an
    error is found.
    """
    from ._io import write_json
    from ._preflight import preflight
    from .config import load_config

    report = preflight(load_config(config), check_data=not headers_only)
    click.echo(report.format())
    if json_path is not None:
        write_json(json_path, report.to_dict())
    if not report.ok:
        sys.exit(2)


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


_INPUT_HELP = ("New data of one modality of the bundle, read with the training settings: an "
               "imaging manifest, an .h5ad file (repeat for several files of one omics modality) or a "
               "clinical table. Repeat for each modality; a modality not given is absent for every "
               "subject. Without --input the training data named in the bundle's config is read.")


def _bundle_options(command):
    """Add the options shared by predict and explain."""
    options = [
        click.option("--input", "inputs", multiple=True, metavar="MODALITY=PATH", help=_INPUT_HELP),
        click.option("--paths-relative-to", "roots", multiple=True, metavar="MODALITY=DIR",
                     help="Folder an imaging manifest's paths start from. Default: the manifest's folder."),
        click.option("--max-missing-features", type=click.FloatRange(0, 1), default=0.2, show_default=True,
                     help="Largest fraction of an omics modality's training features the new data may lack; "
                          "missing ones are filled with their training mean."),
        click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Volume cache folder. Default: the training config's cache_dir."),
        click.option("--ignore-versions", is_flag=True,
                     help="Load a bundle made with other torch, MONAI, pytorch-tabular or fusion versions."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@cli.command("predict")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_bundle_options
@click.option("--subject", "subjects", multiple=True, help="Predict only this subject (repeatable).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CSV file to write. Default: print the CSV.")
@click.option("--per-member", is_flag=True, help="Add each fold model's fused score (score_fused_fold<k>).")
def predict_command(bundle: Path, inputs: tuple[str, ...], roots: tuple[str, ...], max_missing_features: float,
                    cache_dir: Path | None, ignore_versions: bool, subjects: tuple[str, ...], out: Path | None,
                    per_member: bool) -> None:
    """Predict new subjects with the model BUNDLE (a run's bundle folder, or the run directory).

    Rows keep the inputs' subject ids: score_fused is the mean raw score of the fold models
    (logit, log relative risk, or the target's unit), score_<modality> the unimodal scores.
    """
    from .bundle import load_bundle
    from .bundle._cli import parse_assignments

    new_data = parse_assignments(inputs, "--input") or None
    folders = parse_assignments(roots, "--paths-relative-to", single=True)
    loaded = load_bundle(bundle, ignore_versions=ignore_versions)
    predictions = loaded.predict(
        new_data, subjects=list(subjects) or None, per_member=per_member, paths_relative_to=folders,
        cache_dir=cache_dir, max_missing_fraction=max_missing_features,
    )
    if out is None:
        click.echo(predictions.to_csv(), nl=False)
        return
    from ._io import write_csv

    write_csv(out, predictions, index=True)
    click.echo(f"{len(predictions)} predictions written to {out}", err=True)


@cli.command("explain")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("subjects", nargs=-1, required=True)
@_bundle_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the subject pages. Default: explain/ in the run directory of the bundle.")
@click.option("--n-steps", type=click.IntRange(2), default=None,
              help="Integrated-gradients steps. Default: the run's attribution.n_steps.")
@click.option("--internal-batch-size", type=click.IntRange(1), default=4, show_default=True,
              help="Interpolated volumes per forward pass of the imaging network; bounds memory.")
@click.option("--top-k", type=click.IntRange(1), default=10, show_default=True,
              help="Features listed per modality.")
def explain_command(bundle: Path, subjects: tuple[str, ...], inputs: tuple[str, ...], roots: tuple[str, ...],
                    max_missing_features: float, cache_dir: Path | None, ignore_versions: bool, out: Path | None,
                    n_steps: int | None, internal_batch_size: int, top_k: int) -> None:
    """Explain the predictions of BUNDLE for each SUBJECT: one HTML page per subject.

    Each page lists the modality contributions (exact Shapley values), the top features per
    modality and, for imaging, a voxel attribution map saved as NIfTI on the subject's own
    scan with PNG overlays. Pages in the run directory are linked from its report.
    """
    from .bundle import load_bundle
    from .bundle._cli import explain_into_run, parse_assignments

    new_data = parse_assignments(inputs, "--input") or None
    folders = parse_assignments(roots, "--paths-relative-to", single=True)
    loaded = load_bundle(bundle, ignore_versions=ignore_versions)
    pages = explain_into_run(
        loaded, list(subjects), out, inputs=new_data, paths_relative_to=folders, cache_dir=cache_dir,
        max_missing_fraction=max_missing_features, n_steps=n_steps, internal_batch_size=internal_batch_size,
        top_k=top_k,
    )
    for page in pages:
        click.echo(f"{page.subject_id}: {page.page}")


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
