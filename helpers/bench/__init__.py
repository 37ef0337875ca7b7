"""Benchmarks of Kafka and RabbitMQ on this machine, honest about what they measure.

    python -m helpers.bench --profile quick          # about 90 s; progress on stderr, the table on stdout, files in bench-results/
    python -m helpers.bench --profile quick --json   # the same, plus ONE JSON summary line on stdout
    python -m helpers.bench --profile full           # the whole matrix (about 35 min: run it on a quiet machine)

From a notebook::

    from helpers import bench
    session = bench.Session("quick")
    session.run("floors"); session.run("kafka"); session.run("rabbitmq"); session.run("latency")
    session.table()          # a pandas DataFrame, one row per measurement
    session.summary()        # the headline numbers and ratios
    session.save()           # bench-results/<date>-quick.json and .csv, with the full configuration

How it measures (see the modules for the details):

- producer and consumer are separate **processes** (``multiprocessing``, forkserver/spawn), as
  in production; ``psutil`` reports each one's CPU;
- **throughput** runs a warm-up, then sends as fast as the client can for a fixed time and
  counts what the broker acknowledged and what the consumer received in that window;
- **latency** sends at a fixed rate on a schedule; each message carries the time it was *meant*
  to be sent, and the consumer records receive time minus that into an HdrHistogram, so a stall
  cannot hide (no coordinated omission);
- the **native baselines** (Kafka's ProducerPerformance, RabbitMQ PerfTest) run with the same
  settings, and every Python figure gets a ratio to its native twin;
- the **floors** (loopback bandwidth and round trip, fsync latency) give each throughput a
  physical ceiling to be a fraction of.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import sys
from pathlib import Path

from ..config import ROOT
from ..errors import CourseError
from . import floors as _floors
from . import stats
from .profiles import GROUPS, PROFILES, Timing, profile
from .runner import BenchError, Case, run_latency, run_throughput
from .stats import MiB, Pacer, Phase, corrected_percentile, mib_per_s

RESULTS = ROOT / "bench-results"
NATIVE_EXTRA_WARMUP = 1.0  # seconds more warm-up for the Java tools: the JVM compiles its hot code first

__all__ = ["Session", "Case", "BenchError", "run_throughput", "run_latency", "machine_info", "corrected_percentile",
           "mib_per_s", "MiB", "Pacer", "Phase", "PROFILES", "RESULTS", "stats"]


def machine_info() -> dict:
    """Cores, RAM, CPU model, load, date, and the versions of everything in the measurement."""
    import confluent_kafka
    import pika
    import psutil

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    info = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cores": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2 ** 30, 1),
            "cpu_model": model or "unknown", "load_average": [round(x, 2) for x in os.getloadavg()],
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "confluent_kafka": confluent_kafka.__version__, "librdkafka": confluent_kafka.libversion()[0],
            "pika": pika.__version__}
    try:
        import rstream

        info["rstream"] = rstream.__version__
    except Exception:
        pass
    from .runner import backend_name

    info["backend"] = backend_name()
    try:
        from ..brokers import kafka_version, management_get

        info["kafka"] = kafka_version()
        info["rabbitmq"] = management_get("/api/overview")["rabbitmq_version"]
    except Exception:
        pass
    return info



class Session:
    """One benchmark session: a profile's cases, run group by group, results kept together."""

    def __init__(self, profile_name: str = "quick", *, progress: bool = True, native: bool = True,
                 timing: Timing | None = None, log=None):
        self.profile = profile_name
        self.cases, self.timing = profile(profile_name)
        if timing is not None:
            self.timing = timing
        self.progress, self.native = progress, native
        self.rows, self.cdfs, self.floors, self.notes = [], {}, {}, []
        self.log = log or (lambda text: None)
        self.machine = machine_info()
        self.ran_groups = []

    # -- running ---------------------------------------------------------------------------
    def run(self, group: str | None = None) -> "Session":
        """Run the floors (``"floors"``), one group of cases (``"kafka"``, ``"rabbitmq"``,
        ``"latency"``), or everything (None). Returns the session, for chaining."""
        from ..brokers import check

        if group is not None and group not in ("floors", *GROUPS):
            raise BenchError(f"unknown group {group!r}; choose floors, {', '.join(GROUPS)} or None for all")
        groups = ["floors", *GROUPS] if group is None else [group]
        if any(g != "floors" for g in groups):
            check()  # a clear BrokerError, naming the command to run, when a cluster is down
        for g in groups:
            if g == "floors":
                self.run_floors()
                continue
            todo = [c for c in self.cases if c.group == g]
            bar = self._bar(len(todo) + sum(c.native and self.native for c in todo), g)
            for case in todo:
                self._run_case(case, bar)
            if bar is not None:
                bar.close()
            self.ran_groups.append(g)
        return self

    def _bar(self, total, label):
        if not self.progress or total == 0:
            return None
        from tqdm.auto import tqdm

        tqdm.monitor_interval = 0  # no monitor thread left running after the cell returns
        return tqdm(total=total, desc=f"{self.profile}: {label}", unit="run", file=sys.stderr, leave=False)

    def run_floors(self) -> dict:
        self.log("measuring the floors: loopback bandwidth and round trip, fsync")
        self.floors = _floors.measure(self.timing.floor_seconds)
        self._apply_ceilings()
        return self.floors

    def _run_case(self, case: Case, bar) -> None:
        t = self.timing
        try:
            if case.mode == "throughput":
                self.log(f"{case.name}: {case.describe()}")
                row = run_throughput(case, t.warmup, t.duration)
                self.rows.append(row)
            else:
                peak = self.max_rate(case.of)
                if peak is None:
                    peak = case.fallback_max
                    self.notes.append(f"{case.name}: case {case.of!r} did not run in this session, so offered "
                                      f"loads are fractions of {peak:.0f} msg/s")
                self.log(f"{case.name}: {case.describe()}, offered {', '.join(f'{f:.0%}' for f in case.fractions)} "
                         f"of {peak:.0f} msg/s")
                rows, cdfs = run_latency(case, peak, t.warmup, t.step)
                self.rows += rows
                self.cdfs[case.name] = cdfs
        except CourseError as e:
            self.notes.append(f"{case.name}: {e}")
            self.log(f"  failed: {e}")
        if bar is not None:
            bar.update(1)
        if case.native and self.native and case.mode == "throughput":
            self._run_native(case)
            if bar is not None:
                bar.update(1)
        self._apply_ceilings()

    def _run_native(self, case: Case) -> None:
        from . import native

        t = self.timing
        try:
            if case.system == "kafka":
                self.log(f"{case.name}: Kafka ProducerPerformance with the same settings")
                row = native.kafka_producer_perf(case, t.warmup + NATIVE_EXTRA_WARMUP, t.duration)
            else:
                self.log(f"{case.name}: RabbitMQ PerfTest {native.perftest_version()} with the same settings")
                row = native.rabbitmq_perftest(case, t.warmup + NATIVE_EXTRA_WARMUP, t.duration)
        except native.NativeUnavailable as e:
            if str(e) not in self.notes:
                self.notes.append(str(e))
            self.log(f"  {e}")
            return
        except CourseError as e:
            self.notes.append(f"{case.name} [native]: {e}")
            self.log(f"  native baseline failed: {e}")
            return
        self.rows.append(row)
        mine = self.row(case.name)
        if mine is not None:
            mine["native_msgs_per_s"] = row["msgs_per_s"]
            mine["ratio_to_native"] = stats.ratio(mine["msgs_per_s"], row["msgs_per_s"])
            mine["native_client"] = row["client"]
            mine["native_cpu_cores"] = row.get("producer_cpu_cores")  # the whole Java process

    def _apply_ceilings(self) -> None:
        if not self.floors:
            return
        for row in self.rows:
            if row["mode"] != "throughput":
                continue
            cap, kind = _floors.ceiling(row, self.floors)
            row["ceiling_msgs_per_s"], row["ceiling_kind"] = cap, kind
            for k, v in _floors.ceilings(row, self.floors).items():
                row[f"{k.replace(' ', '_')}_ceiling_msgs_per_s"] = v
            row["fraction_of_ceiling"] = stats.ratio(row.get("msgs_per_s"), cap)

    # -- reading results -------------------------------------------------------------------
    def row(self, name: str, client: str | None = None):
        """The throughput row of case ``name`` (the Python client's, unless ``client`` names another)."""
        for r in self.rows:
            if r["case"] == name and r["mode"] == "throughput" and (client is None or r["client"] == client):
                return r
        return None

    def max_rate(self, name: str):
        """The sustained end-to-end rate of a throughput case: the slower of producer and consumer."""
        r = self.row(name)
        if r is None:
            return None
        rates = [x for x in (r.get("msgs_per_s"), r.get("consumer_msgs_per_s")) if x]
        return min(rates) if rates else None

    def table(self, mode: str | None = None):
        import pandas as pd

        rows = [r for r in self.rows if mode is None or r["mode"] == mode]
        return pd.DataFrame(rows)

    def summary(self) -> dict:
        return summarize(self)

    def save(self, folder: Path | None = None) -> tuple:
        """Write ``<date>-<profile>.json`` (configuration, machine, rows, CDFs, summary) and a
        ``.csv`` of the rows; returns both paths."""
        folder = Path(folder) if folder else RESULTS
        folder.mkdir(parents=True, exist_ok=True)
        stem = _dt.datetime.now().strftime("%Y%m%d-%H%M%S") + f"-{self.profile}"
        jpath, cpath = folder / f"{stem}.json", folder / f"{stem}.csv"
        doc = {"profile": self.profile, "timing": vars(self.timing), "machine": self.machine,
               "cases": [_case_config(c) for c in self.cases], "floors": self.floors, "notes": self.notes,
               "rows": self.rows, "cdfs": {k: {str(r): v for r, v in d.items()} for k, d in self.cdfs.items()},
               "summary": self.summary()}
        jpath.write_text(json.dumps(doc, indent=1, default=str))
        write_csv(cpath, self.rows, {"profile": self.profile, **{f"timing_{k}": v for k, v in vars(self.timing).items()}})
        self.files = (jpath, cpath)
        return jpath, cpath


def _case_config(case: Case) -> dict:
    from dataclasses import asdict

    return asdict(case)


def write_csv(path: Path, rows: list, constant: dict | None = None) -> None:
    """One line per row; every key any row has becomes a column (``constant`` is added to all)."""
    constant = constant or {}
    columns = list(constant)
    for r in rows:
        for k in r:
            if k not in columns:
                columns.append(k)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({**constant, **r})


def _max_rate_within(rows, p99_ms: float = 10.0):
    """The highest offered rate of a sweep whose p99 stayed under ``p99_ms`` with nothing lost."""
    ok = [r["offered_msgs_per_s"] for r in rows if r.get("p99_ms") is not None and r["p99_ms"] <= p99_ms
          and not r.get("lost")]
    return max(ok) if ok else 0.0  # 0: even the lowest offered rate missed the budget


# The cases behind the headline numbers, by role: the quick (and smoke) name first, then the full
# profile's name for the same setup (1 KiB messages, prefetch 100).
HEADLINE_CASES = {
    "kafka_producer": ("kafka-rf3-producer-only", "kafka-1024B-rf3-acks-all-linger-5-none"),
    "kafka_durable": ("kafka-rf3-acks-all", "kafka-1024B-rf3-acks-all-e2e"),
    "rabbitmq_no_confirms": ("rabbitmq-classic-no-confirms", "rabbitmq-1024B-classic-no-confirms-prefetch-100"),
    "rabbitmq_confirm_100": ("rabbitmq-classic-confirm-100", "rabbitmq-1024B-classic-confirm-100-prefetch-100"),
    "rabbitmq_confirm_each": ("rabbitmq-classic-confirm-each", "rabbitmq-1024B-classic-confirm-each-prefetch-100"),
    "rabbitmq_durable": ("rabbitmq-quorum-confirm-100", "rabbitmq-1024B-quorum-confirm-100-prefetch-100"),
}


def summarize(session: Session) -> dict:
    """The headline numbers: flat keys that say what they are."""
    s = {"profile": session.profile, "machine": session.machine, "floors": session.floors}

    def r(role):
        return next((x for x in map(session.row, HEADLINE_CASES[role]) if x is not None), None)

    def rate(role):
        x = r(role)
        return x["msgs_per_s"] if x else None

    def field(role, key):
        x = r(role)
        return x.get(key) if x else None

    # Python vs native
    s["kafka_producer_msgs_per_s"] = rate("kafka_producer")
    s["kafka_producer_native_msgs_per_s"] = field("kafka_producer", "native_msgs_per_s")
    s["kafka_producer_ratio_to_native"] = field("kafka_producer", "ratio_to_native")
    s["rabbitmq_publisher_msgs_per_s"] = rate("rabbitmq_no_confirms")
    s["rabbitmq_publisher_perftest_msgs_per_s"] = field("rabbitmq_no_confirms", "native_msgs_per_s")
    s["rabbitmq_publisher_ratio_to_perftest"] = field("rabbitmq_no_confirms", "ratio_to_native")
    s["rabbitmq_confirm_publisher_ratio_to_perftest"] = field("rabbitmq_confirm_100", "ratio_to_native")
    # confirms: pipelined vs none vs one at a time
    s["rabbitmq_confirm_window_100_ratio_to_no_confirms"] = stats.ratio(rate("rabbitmq_confirm_100"),
                                                                        rate("rabbitmq_no_confirms"))
    s["rabbitmq_confirm_each_ratio_to_no_confirms"] = stats.ratio(rate("rabbitmq_confirm_each"),
                                                                  rate("rabbitmq_no_confirms"))
    # equal durability: three copies each
    k, q = r("kafka_durable"), r("rabbitmq_durable")
    s["equal_durability_kafka_rf3_acks_all_mib_per_s"] = k["mib_per_s"] if k else None
    s["equal_durability_rabbitmq_quorum_confirms_mib_per_s"] = q["mib_per_s"] if q else None
    s["equal_durability_kafka_to_rabbitmq_ratio"] = stats.ratio(k and k["mib_per_s"], q and q["mib_per_s"])
    # latency
    for name, rows in _sweeps(session).items():
        key = name.replace("-latency", "").replace("-", "_")
        s[f"{key}_max_msgs_per_s_with_p99_under_10ms"] = _max_rate_within(rows, 10.0)
        half = [x for x in rows if x["fraction_of_max"] <= 0.5]
        s[f"{key}_p99_ms_at_half_load"] = half[-1]["p99_ms"] if half else None
    s["notes"] = session.notes
    s["rows"] = len(session.rows)
    return s


def _sweeps(session) -> dict:
    out = {}
    for row in session.rows:
        if row["mode"] == "latency":
            out.setdefault(row["case"], []).append(row)
    return out
