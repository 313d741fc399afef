"""regflow: registration of multimodal microscopy and histology images.

The library behind the workflow's rule scripts: pure functions on arrays and files that know
nothing of Snakemake. One module per stage (preprocess, rigid, flow, warp, qc) plus io,
transform, points, metrics (similarity measures), imageops (shared image operations),
samplesheet and runlog.
"""

__version__ = "0.2.0"


def own_threads_only() -> None:
    """Keep linear-algebra libraries to one thread in this process (call before importing
    numpy). The streaming jobs run their own threads (one computes tiles, the writer
    compresses); Snakemake gives them ``OPENBLAS_NUM_THREADS`` = the job's threads, and
    OpenBLAS's waiting threads spin: on a 12288² warp they took a core (10.2 → 6.9 s)."""
    import os

    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
