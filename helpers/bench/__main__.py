"""``python -m helpers.bench``: run a benchmark profile from a terminal.

    python -m helpers.bench --profile quick            # tables and progress on stderr
    python -m helpers.bench --profile quick --json     # + exactly one JSON summary line on stdout
    python -m helpers.bench --profile full --out /tmp/results
    python -m helpers.bench --profile smoke --only kafka --no-native
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import CourseError
from .profiles import GROUPS, PROFILES, Timing


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clean line and exit 2, as argparse does, plus the hint
        self.print_usage(sys.stderr)
        print(f"error: {message} (see `python -m helpers.bench --help`)", file=sys.stderr)
        sys.exit(2)


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < v <= 600:
        raise argparse.ArgumentTypeError(f"{text} s is out of range; give a number of seconds above 0 and at most 600")
    return v


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m helpers.bench", description="Benchmark Kafka and RabbitMQ on this machine "
                "(Python clients in separate processes, native Java baselines, physical floors).")
    p.add_argument("--profile", default="quick", choices=list(PROFILES),
                   help="smoke (~40 s), quick (~90 s, what lesson 09 runs) or full (the whole matrix, ~35 min)")
    p.add_argument("--only", choices=["floors", *GROUPS], help="run one part of the profile")
    p.add_argument("--json", action="store_true", help="print exactly one JSON summary line on stdout; "
                   "everything else goes to stderr; no progress bars")
    p.add_argument("--no-native", action="store_true", help="skip the Java baselines (ProducerPerformance, PerfTest)")
    p.add_argument("--warmup", type=_seconds, help="seconds of warm-up before each measurement")
    p.add_argument("--duration", type=_seconds, help="seconds of each throughput measurement")
    p.add_argument("--step", type=_seconds, help="seconds of each offered rate in a latency sweep")
    p.add_argument("--out", help="folder for the JSON and CSV results (default: bench-results/)")
    return p


def _table(session) -> str:
    df = session.table()
    if df.empty:
        return "(no results)"
    cols = [c for c in ("case", "client", "mode", "describe", "msgs_per_s", "consumer_msgs_per_s", "mib_per_s",
                        "ratio_to_native", "fraction_of_ceiling", "ceiling_kind", "offered_msgs_per_s", "p50_ms",
                        "p99_ms", "p99_9_ms", "max_ms", "producer_cpu_cores", "consumer_cpu_cores", "host_cpu_busy")
            if c in df.columns]
    import pandas as pd

    with pd.option_context("display.width", 250, "display.max_columns", 30, "display.max_colwidth", 48):
        return df[cols].to_string(index=False, float_format=lambda x: f"{x:,.3g}")


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    real_stdout = None
    if args.json:  # keep fd 1 for the one JSON line: everything else, even from C libraries, goes to stderr
        sys.stdout.flush()
        real_stdout = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
        sys.stdout = sys.stderr
    log = (lambda text: print(text, file=sys.stderr, flush=True))
    try:
        from . import Session

        session = Session(args.profile, progress=not args.json, native=not args.no_native, log=log)
        t = session.timing
        session.timing = Timing(args.warmup or t.warmup, args.duration or t.duration, args.step or t.step,
                                t.floor_seconds)
        m = session.machine
        log(f"profile {args.profile} on {m['cores']} cores, {m['ram_gib']} GiB, {m['cpu_model']}, "
            f"load {m['load_average']}, backend {m['backend']}")
        session.run(args.only)
        if args.only is None or args.only == "floors":
            fl = session.floors
            log(f"floors: loopback {fl['loopback_mib_per_s']:.0f} MiB/s, round trip {fl['loopback_rtt_us']:.0f} µs, "
                f"fsync {fl['fsync_ms']:.2f} ms")
        jpath, cpath = session.save(args.out)
        summary = session.summary()
        summary["results_json"], summary["results_csv"] = str(jpath), str(cpath)
        out = log if args.json else print  # the human-readable report: stdout, unless stdout is for the JSON line
        out(_table(session))
        for key, value in summary.items():
            if isinstance(value, (int, float)) and value is not None and key != "rows":
                out(f"{key}: {value:.4g}")
        for note in session.notes:
            out(f"note: {note}")
        out(f"saved {jpath} and {cpath}")
    except CourseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if real_stdout is not None:
        real_stdout.write(json.dumps(summary, default=str, separators=(",", ":")) + "\n")
        real_stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
