"""helpers.bench: the pure parts (stamps, the open-loop schedule, histograms, result files, the
command line's errors) and one integration run of ``python -m helpers.bench``. No test asserts
a speed: the numbers depend on the machine; the tests check that they exist and make sense."""
import csv
import json
import os
import subprocess
import sys

import pytest

from helpers import bench, config
from helpers.bench import floors, profiles, stats
from helpers.bench.runner import BenchError, Case


def cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "helpers.bench", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, **(env or {})), cwd=config.ROOT)


# --- stamps and payloads -----------------------------------------------------------------------

def test_stamp_round_trip_and_size():
    s = stats.Stamp(100)
    body = s.make(3, 123456, 987654321012)
    assert len(body) == 100
    assert stats.read_stamp(body) == (3, 123456, 987654321012)


def test_stamp_refuses_a_size_below_its_header():
    with pytest.raises(ValueError, match="17 B"):
        stats.Stamp(10)


def test_payload_is_text_of_the_exact_size_without_newlines():
    for size in (17, 100, 1024, 16384):
        p = stats.payload_text(size)
        assert len(p) == size and b"\n" not in p
    assert stats.payload_text(100, seed=1) != stats.payload_text(100, seed=2)


# --- the open-loop schedule ------------------------------------------------------------------------

def test_pacer_gives_intended_times_on_the_schedule_not_the_send_times():
    p = stats.Pacer([stats.Phase(1.0, rate=4)], start_ns=1_000)
    # a sender that was stalled until 0.9 s still gets every message, each with its own intended time
    due = []
    while (step := p.next(1_000 + 900_000_000)) is not None and step[0] != "wait":
        due.append(step)
    assert due == [(0, 1_000), (0, 250_001_000), (0, 500_001_000), (0, 750_001_000)]
    assert p.next(1_000 + 999_999_999) is None  # the 5th message would be due at 1 s: the phase is over
    assert p.sent == [4]


def test_pacer_waits_until_the_next_intended_time():
    p = stats.Pacer([stats.Phase(1.0, rate=10)], start_ns=0)
    assert p.next(0) == (0, 0)
    assert p.next(50_000_000) == ("wait", 100_000_000)
    assert p.next(100_000_000) == (0, 100_000_000)


def test_pacer_phases_follow_each_other_and_closed_loop_uses_the_clock():
    p = stats.Pacer([stats.Phase(0.5), stats.Phase(1.0, rate=2), stats.Phase(0.5)], start_ns=0)
    assert p.bounds == [0, 500_000_000, 1_500_000_000, 2_000_000_000]
    assert p.next(-5) == ("wait", 0)
    assert p.next(10) == (0, 10)  # closed loop: intended = now
    assert p.next(600_000_000) == (1, 500_000_000)  # the fixed-rate phase starts on its boundary
    assert p.next(600_000_000) == ("wait", 1_000_000_000)
    assert p.next(1_600_000_000) == (1, 1_000_000_000)  # overdue, still sent, with its intended time
    assert p.next(1_600_000_000) == (2, 1_600_000_000)
    assert p.phase_at(499_999_999) == 0 and p.phase_at(1_500_000_000) == 2 and p.phase_at(2_000_000_000) is None
    assert p.next(2_000_000_000) is None


@pytest.mark.parametrize("phase", [stats.Phase(0), stats.Phase(1, rate=0), stats.Phase(-1, rate=5)])
def test_pacer_rejects_empty_phases(phase):
    with pytest.raises(ValueError):
        stats.Pacer([phase], 0)


# --- histograms and percentiles ----------------------------------------------------------------------

def test_summary_in_milliseconds_within_hdr_precision():
    h = stats.new_histogram()
    for us in range(1, 10_001):  # 1 µs .. 10 ms, uniform
        stats.record_us(h, us)
    s = stats.summary(h)
    assert s["count"] == 10_000
    assert s["p50_ms"] == pytest.approx(5.0, rel=0.002)
    assert s["p99_ms"] == pytest.approx(9.9, rel=0.002)
    assert s["p99_9_ms"] == pytest.approx(9.99, rel=0.002)
    assert s["max_ms"] == pytest.approx(10.0, rel=0.002)
    assert stats.summary(stats.new_histogram())["p99_ms"] is None


def test_record_clamps_out_of_range_values():
    h = stats.new_histogram()
    stats.record_us(h, 0.2)
    stats.record_us(h, 10 ** 12)
    assert h.get_total_count() == 2
    assert h.get_min_value() == 1 and h.get_max_value() >= stats.HIST_HIGHEST_US


def test_cdf_is_monotonic_and_ends_at_one():
    h = stats.new_histogram()
    for us in (100, 200, 200, 5000):
        stats.record_us(h, us)
    c = stats.cdf(h)
    assert [f for _, f in c] == [0.25, 0.75, 1.0]
    assert all(a[0] < b[0] for a, b in zip(c, c[1:]))


def test_histograms_survive_encoding_between_processes():
    h = stats.new_histogram()
    for us in (5, 50, 500, 5000):
        stats.record_us(h, us)
    back = stats.HdrHistogram.decode(h.encode().decode())
    assert stats.summary(back) == stats.summary(h)


def test_coordinated_omission_correction_matches_hdrhistogram():
    # 1 sample every 1 ms, all 1 ms, except one 500 ms stall: a closed-loop tester records 1 sample
    latencies = [1.0] * 9_999 + [500.0]
    assert stats.corrected_percentile(latencies, 1.0, 99) > 200  # the stall hides ~499 missing samples
    assert sorted(latencies)[int(0.99 * len(latencies))] == 1.0  # uncorrected, p99 looks perfect
    # the reference: hdrhistogram's own record_corrected_value, in µs
    ref = stats.new_histogram()
    for v in latencies:
        ref.record_corrected_value(int(v * 1000), 1000)
    assert stats.corrected_percentile(latencies, 1.0, 99) == pytest.approx(ref.get_value_at_percentile(99) / 1000)


# --- units, ceilings, profiles -------------------------------------------------------------------------

def test_mib_is_two_to_the_twenty():
    assert stats.mib_per_s(1024, 1024) == 1.0
    assert stats.mib_per_s(None, 100) is None
    assert stats.ratio(1, 0) is None and stats.ratio(3, 2) == 1.5


def test_ceiling_picks_the_smallest_that_applies():
    fl = {"loopback_mib_per_s": 1000.0, "loopback_rtt_us": 50.0, "fsync_ms": 2.0}
    kafka = {"system": "kafka", "size": 1024, "copies": 3, "consumer": True}
    assert floors.ceiling(kafka, fl) == (pytest.approx(1000 * 1024 / 4), "network")  # 4 loopback crossings
    each = {"system": "rabbitmq", "size": 1024, "copies": 1, "consumer": True, "persistent": True,
            "confirm_window": 1, "queue_type": "classic"}
    assert floors.ceiling(each, fl) == (pytest.approx(500.0), "fsync")  # 1 message per 2 ms fsync
    fast_disk = dict(fl, fsync_ms=0.001)
    assert floors.ceiling(each, fast_disk)[1] == "round trip"
    assert floors.ceiling(kafka, {}) == (None, None)


def test_fsync_probe_writes_in_the_given_folder_and_cleans_up(tmp_path):
    r = floors.fsync_latency(tmp_path, count=5)
    assert r["median_ms"] > 0 and r["dir"] == str(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_every_profile_is_valid_and_latency_cases_refer_to_earlier_cases():
    for name in bench.PROFILES:
        cases, timing = profiles.profile(name)
        names = []
        for c in cases:
            assert c.group in profiles.GROUPS
            if c.mode == "latency":
                assert c.of in names, f"{name}: {c.name} refers to {c.of}, which does not run before it"
            names.append(c.name)
        assert len(set(names)) == len(names)
        assert timing.warmup > 0 and timing.duration > 0
    full = {c.name for c in profiles.full()}
    assert len(full) > 100  # the matrix: sizes x acks x RF x linger x lz4, RabbitMQ modes x prefetch


@pytest.mark.parametrize("kw, words", [
    (dict(system="kafka", size=8), "size must be"),
    (dict(system="mqtt"), "system must be"),
    (dict(system="rabbitmq", confirm_window=0), "confirm_window"),
    (dict(system="kafka", acks="most"), "acks must be"),
    (dict(system="kafka", mode="latency"), "needs offered-load fractions"),
    (dict(system="rabbitmq", prefetch=10, ack_every=50), "ack_every"),
])
def test_bad_cases_say_what_is_wrong(kw, words):
    with pytest.raises(BenchError, match=words):
        Case("bad", **kw)


def test_unknown_profile_names_the_choices():
    with pytest.raises(BenchError, match="choose one of: smoke, quick, full"):
        profiles.profile("fastest")


# --- result files -------------------------------------------------------------------------------------

def test_csv_has_every_column_and_the_constant_configuration(tmp_path):
    rows = [{"case": "a", "msgs_per_s": 1.5}, {"case": "b", "p99_ms": 2.0}]
    path = tmp_path / "r.csv"
    bench.write_csv(path, rows, {"profile": "quick"})
    got = list(csv.DictReader(open(path)))
    assert list(got[0]) == ["profile", "case", "msgs_per_s", "p99_ms"]
    assert got[1] == {"profile": "quick", "case": "b", "msgs_per_s": "", "p99_ms": "2.0"}


def test_session_save_writes_json_and_csv_with_the_configuration(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "machine_info", lambda: {"cores": 2})
    s = bench.Session("smoke", progress=False)
    s.rows = [{"case": "kafka-rf3-producer-only", "mode": "throughput", "client": "confluent-kafka",
               "msgs_per_s": 10.0, "mib_per_s": 0.01, "size": 1024, "system": "kafka", "copies": 3}]
    s.floors = {"loopback_mib_per_s": 100.0}
    jpath, cpath = s.save(tmp_path)
    doc = json.loads(jpath.read_text())
    assert doc["profile"] == "smoke" and doc["machine"] == {"cores": 2}
    assert {c["name"] for c in doc["cases"]} >= {"kafka-rf3-producer-only"}
    assert doc["timing"]["warmup"] > 0 and doc["summary"]["kafka_producer_msgs_per_s"] == 10.0
    assert cpath.read_text().splitlines()[0].startswith("profile,timing_warmup")


def test_max_rate_within_a_budget_stops_at_the_first_violation():
    rows = [{"offered_msgs_per_s": r, "p99_ms": p, "lost": 0} for r, p in ((100, 1), (200, 3), (400, 50))]
    assert bench._max_rate_within(rows, 10) == 200
    assert bench._max_rate_within(rows, 0.5) == 0  # a sweep ran, and no rate met the budget


@pytest.mark.parametrize("name", ["quick", "full"])
def test_every_headline_has_a_case_in_the_profile(name):
    cases = {c.name: c for c in profiles.profile(name)[0]}
    for role, names in bench.HEADLINE_CASES.items():
        found = [cases[n] for n in names if n in cases]
        assert found, f"profile {name} has no case for the headline {role} ({', '.join(names)})"
        assert found[0].mode == "throughput" and found[0].size == 1024, (name, role)


# --- the command line -------------------------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["--profile", "fastest"], "invalid choice: 'fastest'"),
    (["--duration", "-3"], "out of range"),
    (["--warmup", "soon"], "is not a number of seconds"),
    (["--only", "mqtt"], "invalid choice: 'mqtt'"),
])
def test_cli_argument_errors_are_one_clean_message(args, words):
    p = cli(*args)
    assert p.returncode == 2 and p.stdout == ""
    assert "Traceback" not in p.stderr and words in p.stderr and "--help" in p.stderr


def test_cli_with_brokers_unreachable_says_what_to_run():
    p = cli("--profile", "smoke", "--only", "kafka", "--json",
            env={"SOP_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "SOP_AMQP_URLS": "amqp://guest:guest@127.0.0.1:1/%2F"},
            timeout=120)
    assert p.returncode == 1 and p.stdout == "", p.stdout
    assert "Traceback" not in p.stderr
    assert "error: Kafka is not reachable" in p.stderr and "python -m helpers.brokers up" in p.stderr


@pytest.mark.brokers
def test_smoke_profile_prints_one_json_line_with_positive_numbers_and_ratios(clusters, tmp_path):
    p = cli("--profile", "smoke", "--json", "--out", str(tmp_path), timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.splitlines()
    assert len(lines) == 1, p.stdout[:2000]
    s = json.loads(lines[0])
    assert s["profile"] == "smoke" and s["machine"]["cores"] >= 1
    for key in ("loopback_mib_per_s", "loopback_rtt_us", "fsync_ms"):
        assert s["floors"][key] > 0
    assert s["kafka_producer_msgs_per_s"] > 0 and s["rabbitmq_publisher_msgs_per_s"] > 0
    native = s["machine"]["backend"] == "native"
    for key in ("kafka_producer_ratio_to_native", "rabbitmq_publisher_ratio_to_perftest"):
        assert key in s
        if native:
            assert s[key] > 0, (key, s["notes"])
    assert s["kafka_p99_ms_at_half_load"] > 0 and s["rabbitmq_classic_p99_ms_at_half_load"] > 0
    doc = json.loads(open(s["results_json"]).read())
    assert {r["mode"] for r in doc["rows"]} == {"throughput", "latency"}
    assert all(r["msgs_per_s"] > 0 for r in doc["rows"])
    assert open(s["results_csv"]).readline().startswith("profile,")
