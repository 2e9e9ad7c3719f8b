"""The names inside a run directory, defined once: every writer and reader of a run uses these."""

from __future__ import annotations

MANIFEST = "manifest.json"  # provenance: command, run config, versions, device, methods' resolved configs
OUTPUTS = "outputs"  # outputs/<row label>/<task>/<sample>.png + <sample>.json (the sidecar with the cache key)
INPUTS = "inputs"  # inputs/<task>/<sample>[.condition|.reference|.target|.mask].png: the prepared inputs
PROMPTS_JSON = "prompts.json"  # inputs/<task>/prompts.json: {sample: {"src": ..., "tgt": ...}} (text-guided tasks)
FAILURES = "failures"  # failures/<row label>/<task>/<sample>.json: error + traceback of what failed
METRICS = "metrics"  # metrics/per_image.csv, distribution.csv, metric_info.json
PER_IMAGE_CSV = "per_image.csv"
DISTRIBUTION_CSV = "distribution.csv"
EDIT_TYPE_CSV = "per_edit_type.csv"  # editing benchmarks (PIE-Bench): means per edit type
METRIC_INFO = "metric_info.json"
PERF_CSV = "perf/perf.csv"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
LOCK = "run.lock"
RUN_LOG = "run.log"  # the run's messages and what third-party libraries logged (eval.harness.progress)
INPUT_FAILURES = "_inputs"  # failures/_inputs/<task>/<sample>.json: input files that could not be read
MARKER = ".i2i-zoo-run"  # written by the tool into every run directory it creates; report and cleanups need it
TRAIN_MARKER = ".i2i-zoo-train"  # likewise for the --out folder of `train` (checkpoints, resumable)
LOCK_GUARD = ".run.lock.guard"  # an OS file lock serialising the check-and-take-over of run.lock
INPUT_INDEX = "index.json"  # inputs/<task>/index.json: the content hash every prepared input was written from
#: The folders and files of a run directory the tool writes (a cleanup looks nowhere else).
OWN_DIRS = (INPUTS, OUTPUTS, FAILURES, METRICS, "tables", "figures", "perf")
