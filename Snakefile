# regflow: register multimodal microscopy / histology image pairs across a cohort.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"


wildcard_constraints:
    sample=SAMPLE_PATTERN,
    case=ID_PATTERN,


localrules:
    all,
    summary,


include: "rules/preprocess.smk"
include: "rules/rigid.smk"
include: "rules/flow.smk"
include: "rules/stack.smk"
include: "rules/refine.smk"
include: "rules/warp.smk"
include: "rules/qc.smk"
include: "rules/integrity.smk"
include: "rules/case.smk"


onerror:
    write_summary_after_failure()


rule all:
    default_target: True
    input:
        all_outputs(),
