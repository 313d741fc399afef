"""regflow: registration of multimodal microscopy and histology images.

The library behind the workflow's rule scripts: pure functions on arrays and files that know
nothing of Snakemake. One module per stage (preprocess, rigid, flow, warp, qc) plus io,
transform, points, metrics, samplesheet and runlog.
"""

__version__ = "0.1.0"
