"""Time ``fusion explain`` for one subject and report the process's peak memory.

Prints the machine, the subject and its scan size, and the time to load the bundle. Then
it prints the time of the explanation and the peak resident memory of the process before
and after it. The explanation covers the Shapley values, feature and voxel attributions of
every ensemble member, the NIfTI map on the subject's scan, the PNG slices and the page.

Usage::

    python benchmarks/explain_subject.py BUNDLE [--subject ID] [--internal-batch-size N] [--n-steps N]
    python benchmarks/explain_subject.py --grid SIZE [--internal-batch-size N] [--n-steps N]

BUNDLE is a bundle folder or the run directory containing it, for example the run of
``examples/tcga_lgg_idh.yaml``. Without ``--subject`` the subject whose reference scan has
the most voxels is taken, the worst case for resampling the map back onto the scan.

``--grid SIZE`` times only the voxel attribution of one random 3-sequence volume of
``SIZE**3`` voxels through an untrained network of the example config's architecture. Run it
once per ``--internal-batch-size`` to see how the peak memory follows that setting.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from fusion.bundle import load_bundle
from fusion.bundle._explain import explain_subjects
from fusion.config import ImagingConfig
from fusion.encoders import ImagingEncoder
from fusion.explain import voxel_attributions
from fusion.strategies._late import FusionInputs, make_head
from fusion.strategies._unimodal import _TaskHeadModel


def _machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
            f"torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}")


def _peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _largest_scan(bundle, sources) -> tuple[str, tuple[int, ...]]:
    """Return the imaged subject whose reference scan has the most voxels, and its shape."""
    best, best_shape = None, (0,)
    for name, source in sources.items():
        if not isinstance(bundle.config.modalities[name], ImagingConfig):
            continue
        for subject in source.subject_ids:
            path = source._files[subject][source._reference_columns[subject]]
            shape = nib.load(path).shape
            if np.prod(shape) > np.prod(best_shape):
                best, best_shape = str(subject), tuple(shape)
    if best is None:
        raise SystemExit("the bundle has no imaging modality; nothing to benchmark")
    return best, best_shape


class _UntrainedImagingLearner:
    """The parts of an imaging learner that ``voxel_attributions`` uses, with random weights."""

    name = "mri"

    def __init__(self, size: int) -> None:
        encoder = ImagingEncoder(3, network="resnet", layers=[1, 1, 1, 1], widths=[8, 16, 32, 64],
                                 embedding_dim=16, dropout=0.2, stem_stride=2)
        self.model_ = _TaskHeadModel(encoder, 1)
        self.size = size

    def volume_inputs(self, subject_ids: pd.Index) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(0)
        volumes = torch.randn((len(subject_ids), 3, self.size, self.size, self.size), generator=generator)
        return volumes, torch.ones((len(subject_ids), 3))


def _time_grid(size: int, n_steps: int, internal_batch_size: int) -> None:
    learner = _UntrainedImagingLearner(size)
    head = make_head("stacking", [16], 1, {})
    ids = pd.Index(["synthetic"])
    inputs = FusionInputs(ids, ["mri"], [torch.zeros(1, 16)], [torch.zeros(1, 1)], torch.ones(1, 1))
    print(f"grid: one volume of 3 x {size}^3 voxels, n_steps {n_steps}, internal_batch_size {internal_batch_size}")
    print(f"peak RSS before: {_peak_rss_mib():.0f} MiB")
    start = time.perf_counter()
    voxel_attributions(head, inputs, learner, ids, n_steps=n_steps, internal_batch_size=internal_batch_size)
    print(f"voxel attribution: {time.perf_counter() - start:.1f} s; peak RSS {_peak_rss_mib():.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, nargs="?")
    parser.add_argument("--subject", default=None)
    parser.add_argument("--internal-batch-size", type=int, default=4)
    parser.add_argument("--n-steps", type=int, default=None)
    parser.add_argument("--grid", type=int, default=None)
    arguments = parser.parse_args()

    print(f"machine: {_machine()}")
    if arguments.grid is not None:
        _time_grid(arguments.grid, arguments.n_steps or 32, arguments.internal_batch_size)
        return
    if arguments.bundle is None:
        parser.error("pass a BUNDLE, or --grid SIZE")
    start = time.perf_counter()
    bundle = load_bundle(arguments.bundle)
    sources = bundle.build_sources()
    loaded = time.perf_counter() - start
    subject = arguments.subject
    if subject is None:
        subject, shape = _largest_scan(bundle, sources)
        print(f"subject: {subject} (largest reference scan, {' x '.join(map(str, shape))} voxels)")
    else:
        print(f"subject: {subject}")
    imaging = {n: m.spatial_size for n, m in bundle.config.modalities.items() if isinstance(m, ImagingConfig)}
    n_steps = arguments.n_steps or bundle.config.attribution.n_steps
    print(f"bundle: {len(bundle.members)} members, model grids {imaging}, n_steps {n_steps}, "
          f"internal_batch_size {arguments.internal_batch_size}")
    print(f"load bundle and read sources: {loaded:.1f} s; peak RSS so far {_peak_rss_mib():.0f} MiB")

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        explain_subjects(bundle, [subject], Path(out), n_steps=n_steps,
                         internal_batch_size=arguments.internal_batch_size)
        elapsed = time.perf_counter() - start
    print(f"explain one subject: {elapsed:.1f} s; peak RSS {_peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
