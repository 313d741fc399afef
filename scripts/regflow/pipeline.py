"""All stages in one process, for benchmarks and interactive use (the workflow runs them as
separate rules, each reading what the previous one wrote)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from . import flow
from .formats import read_info, with_pixel_size
from .preprocess import Preprocessed, pair_scales, preprocess_file
from .rigid import RigidResult, register_rigid, to_full_resolution
from .transform import Transform


@dataclass
class Registration:
    """Result of :func:`register_files`."""

    transform: Transform
    rigid_transform: Transform
    rigid: RigidResult
    flow: flow.FlowResult
    fixed: Preprocessed
    moving: Preprocessed
    seconds: dict[str, float] = field(default_factory=dict)


def register_files(
    fixed_path: str,
    moving_path: str,
    fixed_modality: str = "brightfield",
    moving_modality: str = "brightfield",
    fixed_channel: str | None = None,
    moving_channel: str | None = None,
    preprocess: dict | None = None,
    rigid: dict | None = None,
    flow_options: dict | None = None,
    fixed_pixel_size_um: float | None = None,
    moving_pixel_size_um: float | None = None,
) -> Registration:
    """Preprocess, align globally and refine one pair; options as in the config sections
    (pixel sizes override the files' own, as the sample sheet's columns do)."""
    preprocess = {"max_size": 1024, "pixel_size_um": None, "fluorescence_log": False} | (
        preprocess or {}
    )
    rigid = rigid or {}
    flow_options = dict(flow_options or {})
    seconds = {}
    start = time.perf_counter()
    fixed_info = with_pixel_size(read_info(fixed_path), fixed_pixel_size_um)
    moving_info = with_pixel_size(read_info(moving_path), moving_pixel_size_um)
    fixed_scale, moving_scale = pair_scales(
        fixed_info, moving_info, preprocess["max_size"], preprocess["pixel_size_um"]
    )
    fixed, _, _ = preprocess_file(
        fixed_info,
        fixed_modality,
        fixed_channel,
        fixed_scale,
        preprocess["fluorescence_log"],
        partner_modality=moving_modality,
    )
    moving, _, _ = preprocess_file(
        moving_info,
        moving_modality,
        moving_channel,
        moving_scale,
        preprocess["fluorescence_log"],
        partner_modality=fixed_modality,
    )
    seconds["preprocess"] = time.perf_counter() - start

    start = time.perf_counter()
    known = bool(fixed_info.pixel_size_um and moving_info.pixel_size_um)
    rigid_result = register_rigid(
        fixed.image,
        moving.image,
        fixed.tissue_mask,
        moving.tissue_mask,
        pixel_sizes_known=known,
        **rigid,
    )
    affine = to_full_resolution(
        rigid_result.fixed_to_moving, fixed.full_to_working, moving.full_to_working
    )
    seconds["rigid"] = time.perf_counter() - start

    start = time.perf_counter()
    flow_result = flow.refine_after_global(
        fixed.image,
        fixed.tissue_mask,
        moving.image,
        moving.tissue_mask,
        rigid_result.fixed_to_moving,
        **flow_options,
    )
    seconds["flow"] = time.perf_counter() - start
    transform = flow.full_transform(
        affine, flow_result, fixed.full_to_working, fixed.full_shape, moving.full_shape
    )
    return Registration(
        transform=transform,
        rigid_transform=Transform.from_affine(affine, fixed.full_shape, moving.full_shape),
        rigid=rigid_result,
        flow=flow_result,
        fixed=fixed,
        moving=moving,
        seconds=seconds,
    )
