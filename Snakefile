# regflow: register multimodal microscopy / histology image pairs across a cohort.
import re

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"


wildcard_constraints:
    sample="|".join(map(re.escape, samples.index)),


localrules:
    all,
    summary,


include: "rules/preprocess.smk"
include: "rules/rigid.smk"
include: "rules/flow.smk"
include: "rules/warp.smk"
include: "rules/qc.smk"


onerror:
    write_summary_after_failure()


rule all:
    default_target: True
    input:
        all_outputs(),
