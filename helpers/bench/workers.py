"""What runs inside the benchmark's worker processes: one producer and one consumer per run.

Each worker connects, reports ``ready``, waits for the parent's ``go`` and reads the common
start time; from then on both follow the same :class:`~helpers.bench.stats.Pacer` phases, so
they agree on which instant belongs to the warm-up and which to each measured step without
talking to each other. Results travel back on a queue as plain dicts (histograms encoded).

The parent (``helpers.bench.runner``) starts these with multiprocessing's *forkserver* (or
*spawn*) method: a worker is a fresh process with its own interpreter and GIL, as a real
producer and consumer would be, and ``psutil`` measures each one's CPU time.
"""
from __future__ import annotations

import asyncio
import collections
import os
import sys
import time

from .stats import WARMUP, Pacer, Phase, Stamp, new_histogram, read_stamp, record_us

now_ns = time.monotonic_ns
DRAIN_SECONDS = 5.0  # how long a latency consumer waits for stragglers after the last phase


class Control:
    """The multiprocessing primitives one run shares (created by the parent, passed at start)."""

    def __init__(self, ctx, n_phases: int):
        self.results = ctx.Queue()
        self.go = ctx.Event()
        self.abort = ctx.Event()
        self.start_ns = ctx.Value("q", 0)
        self.sent = ctx.Array("q", n_phases)  # per phase, written by the producer when it is done
        self.producer_done = ctx.Event()


def entry(role: str, spec: dict, ctl: Control) -> None:
    """The process target: run one role and put ``(role, "ok"|"error", payload)`` on the queue."""
    sys.stdout = sys.stderr  # a worker never writes on stdout (the CLI's --json line lives there)
    try:
        os.dup2(2, 1)
    except OSError:
        pass
    try:
        result = ROLES[role](spec, ctl)
        ctl.results.put((role, "ok", result))
    except BaseException as e:  # anything, including a broker refusing us: report, never hang the parent
        ctl.results.put((role, "error", f"{type(e).__name__}: {e}"))
        ctl.abort.set()


def _ready_then_go(role: str, ctl: Control, timeout: float = 60.0) -> int:
    ctl.results.put((role, "ready", None))
    if not ctl.go.wait(timeout) or ctl.abort.is_set():
        raise RuntimeError("the run was abandoned before it started")
    return ctl.start_ns.value


class _Cpu:
    """CPU seconds (user + system, all threads) of this process during the measured phases."""

    def __init__(self, pacer: Pacer):
        import psutil

        self.proc = psutil.Process()
        self.t0, self.t1 = pacer.bounds[1], pacer.bounds[-1]  # phase 0 is the warm-up
        self.c0 = self.c1 = None

    def _now(self):
        t = self.proc.cpu_times()
        return t.user + t.system

    def tick(self, t_ns: int) -> None:
        if self.c0 is None and t_ns >= self.t0:
            self.c0 = self._now()
        if self.c1 is None and t_ns >= self.t1:
            self.c1 = self._now()

    def seconds(self):
        if self.c0 is None:
            return None
        return (self.c1 if self.c1 is not None else self._now()) - self.c0


def _phases(spec) -> list:
    return [Phase(s, r) for s, r in spec["phases"]]


def _producer_result(pacer, acked, cpu, errors=0, unconfirmed=0) -> dict:
    return {"sent": list(pacer.sent), "acked": list(acked), "cpu_s": cpu.seconds(), "errors": errors,
            "unconfirmed": unconfirmed}


def _sleep_until(t_ns: int, serve=None) -> None:
    """Wait until ``t_ns``; ``serve(seconds)`` (a client's poll) is used for waits over 1 ms."""
    wait = (t_ns - now_ns()) / 1e9
    if wait <= 0:
        return
    if serve is not None and wait > 0.001:
        serve(min(wait, 0.05))
    else:
        time.sleep(min(wait, 0.05))


# --- Kafka ----------------------------------------------------------------------------------

def kafka_producer(spec: dict, ctl: Control) -> dict:
    from confluent_kafka import Producer

    from ..config import kafka_config

    pacer = None
    acked, errors = [0] * len(spec["phases"]), [0]

    def on_delivery(err, _msg):
        if err is not None:
            errors[0] += 1
            return
        k = pacer.phase_at(now_ns()) if pacer else None
        if k is not None:
            acked[k] += 1

    conf = kafka_config()
    conf.update(spec["conf"])
    conf["on_delivery"] = on_delivery
    producer = Producer(conf)
    topic = spec["target"]
    producer.list_topics(topic, timeout=15)  # connect and learn the partition leaders before the clock starts
    pacer = Pacer(_phases(spec), _ready_then_go("producer", ctl))
    cpu, stamp, seq = _Cpu(pacer), Stamp(spec["size"]), 0
    while not ctl.abort.is_set():
        t = now_ns()
        cpu.tick(t)
        step = pacer.next(t)
        if step is None:
            break
        if step[0] == "wait":
            _sleep_until(step[1], producer.poll)
            continue
        body = stamp.make(step[0], seq, step[1])
        seq += 1
        while True:
            try:
                producer.produce(topic, body)
                break
            except BufferError:  # the client's queue is full: serve delivery reports, then retry
                producer.poll(0.005)
        producer.poll(0)
    cpu.tick(now_ns())
    unconfirmed = producer.flush(30)
    ctl.sent[:] = pacer.sent
    ctl.producer_done.set()
    return _producer_result(pacer, acked, cpu, errors[0], unconfirmed)


def kafka_consumer(spec: dict, ctl: Control) -> dict:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from ..config import kafka_config

    conf = kafka_config(**{"group.id": spec["group"], "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    conf.update(spec.get("conf", {}))
    consumer = Consumer(conf)
    # assign() instead of subscribe(): no group join (about 3 s), the partitions are read from the start
    consumer.assign([TopicPartition(spec["target"], p, OFFSET_BEGINNING) for p in range(spec["partitions"])])
    consumer.poll(0.2)
    latency = spec["mode"] == "latency"

    def fetch():
        if latency:  # return as soon as one message is here, stamped on arrival
            first = consumer.poll(0.02)
            if first is None:
                return []
            t = now_ns()
            more = consumer.consume(500, 0)  # whatever else has already arrived
            t2 = now_ns()
            got = [(first, t)] + [(m, t2) for m in more]
        else:
            msgs = consumer.consume(500, 0.05)
            t = now_ns()
            got = [(m, t) for m in msgs]
        return [(m.value(), t) for m, t in got if m.error() is None]

    try:
        return _consume_loop(spec, ctl, fetch)
    finally:
        consumer.close()


class _Tally:
    """The consumer's bookkeeping, shared by every client: count each message by the phase it
    was sent in and by the phase it arrived in; in latency mode record arrival minus intended time."""

    def __init__(self, spec, ctl):
        self.ctl = ctl
        self.pacer = Pacer(_phases(spec), _ready_then_go("consumer", ctl))
        self.n = len(spec["phases"])
        self.latency = spec["mode"] == "latency"
        self.cpu = _Cpu(self.pacer)
        self.received, self.in_window = [0] * self.n, [0] * self.n
        self.hists = {k: new_histogram() for k in range(1, self.n)}

    def add(self, body, arrived: int) -> None:
        phase, _seq, intended = read_stamp(body)
        if phase >= self.n:
            return
        self.received[phase] += 1
        kw = self.pacer.phase_at(arrived)
        if kw is not None:
            self.in_window[kw] += 1
        if self.latency and phase != WARMUP:
            record_us(self.hists[phase], (arrived - intended) / 1000)

    def done(self) -> bool:
        """Throughput: the last phase is over. Latency: every message sent has arrived (or the
        drain time after the last phase has passed)."""
        t = now_ns()
        self.cpu.tick(t)
        if self.ctl.abort.is_set():
            return True
        if not self.latency:
            return t >= self.pacer.end_ns
        sent = self.ctl.sent
        if self.ctl.producer_done.is_set() and all(self.received[k] >= sent[k] for k in range(1, self.n)):
            return True
        return t >= self.pacer.end_ns + DRAIN_SECONDS * 1e9

    def result(self) -> dict:
        self.cpu.tick(now_ns())
        lost = [0] * self.n
        if self.latency and self.ctl.producer_done.is_set():
            late = now_ns()
            for k in range(1, self.n):
                lost[k] = max(0, self.ctl.sent[k] - self.received[k])
                for _ in range(lost[k]):  # never arrived: at least this late (a lower bound), never left out
                    record_us(self.hists[k], (late - self.pacer.bounds[k + 1]) / 1000)
        return {"received": self.received, "in_window": self.in_window, "lost": lost, "cpu_s": self.cpu.seconds(),
                "hists": {k: h.encode().decode() for k, h in self.hists.items()} if self.latency else {}}


def _consume_loop(spec, ctl, fetch) -> dict:
    """``fetch()`` returns [(body, arrival ns)] of whatever arrived; tally until done."""
    tally = _Tally(spec, ctl)
    while True:
        for body, arrived in fetch():
            tally.add(body, arrived)
        if tally.done():
            return tally.result()


# --- RabbitMQ over AMQP 0-9-1 (pika) ----------------------------------------------------------

def _properties(spec):
    import pika

    return pika.BasicProperties(delivery_mode=2 if spec["persistent"] else 1)


def rabbit_publisher(spec: dict, ctl: Control) -> dict:
    return _AmqpPublisher(spec, ctl).run()


class _AmqpPublisher:
    """A pika publisher on the asynchronous ``SelectConnection``, in three modes:

    - no confirms (``confirm_window=None``): publish in chunks, pausing while more than 1 MiB
      waits in the client's write buffer (the socket, and the broker's flow control, push back);
    - one at a time (``confirm_window=1``) and pipelined (``N``): at most N unconfirmed messages;
      the broker's ``basic.ack`` (often ``multiple=True``, covering many) frees room.

    (A ``BlockingChannel`` would do the first two in fewer lines, but spends about three times
    the CPU per message flushing the socket after every publish, and cannot pipeline confirms.)
    """

    MAX_BUFFER = 1 << 20

    def __init__(self, spec, ctl):
        self.spec, self.ctl = spec, ctl
        self.window = spec.get("confirm_window")
        self.pending = collections.deque()  # delivery tags published and not yet confirmed
        self.acked = [0] * len(spec["phases"])
        self.nacked = 0
        self.tag = 0
        self.seq = 0
        self.timer = None
        self.finished = False
        self.error = None

    def run(self) -> dict:
        import pika

        from ..config import amqp_parameters

        self.props = _properties(self.spec)
        self.stamp = Stamp(self.spec["size"])
        self.conn = pika.SelectConnection(amqp_parameters(self.spec.get("node", 1)),
                                          on_open_callback=self._on_open,
                                          on_open_error_callback=self._on_fail,
                                          on_close_callback=self._on_closed)
        self.conn.ioloop.start()
        if self.error:
            raise RuntimeError(self.error)
        self.cpu.tick(now_ns())
        self.ctl.sent[:] = self.pacer.sent
        self.ctl.producer_done.set()
        return _producer_result(self.pacer, self.acked, self.cpu, self.nacked, len(self.pending))

    def _on_fail(self, _conn, err):
        self.error = f"could not connect: {err}"
        self.conn.ioloop.stop()

    def _on_closed(self, _conn, reason):
        if not self.finished:
            self.error = f"connection closed during the run: {reason}"
        self.conn.ioloop.stop()

    def _on_open(self, conn):
        conn.channel(on_open_callback=self._on_channel)

    def _on_channel(self, channel):
        self.channel = channel
        if self.window:
            channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=self._start)
        else:
            self._start(None)

    def _start(self, _frame):
        self.pacer = Pacer(_phases(self.spec), _ready_then_go("producer", self.ctl))
        self.cpu = _Cpu(self.pacer)
        self.deadline = self.pacer.end_ns + 30e9
        self._tick()

    def _on_confirm(self, frame):
        import pika

        m = frame.method
        n = 0
        if m.multiple:
            while self.pending and self.pending[0] <= m.delivery_tag:
                self.pending.popleft()
                n += 1
        elif self.pending and self.pending[0] == m.delivery_tag:
            self.pending.popleft()
            n = 1
        elif m.delivery_tag in self.pending:
            self.pending.remove(m.delivery_tag)
            n = 1
        if isinstance(m, pika.spec.Basic.Nack):
            self.nacked += n
        else:
            k = self.pacer.phase_at(now_ns())
            if k is not None:
                self.acked[k] += n
        if self.timer is None:
            self._tick()

    def _later(self, seconds):
        if self.timer is None:
            self.timer = self.conn.ioloop.call_later(seconds, self._fire)

    def _fire(self):
        self.timer = None
        self._tick()

    def _tick(self):
        if self.finished:
            return
        for _ in range(100):  # then yield to the I/O loop so frames go out and confirms come in
            t = now_ns()
            self.cpu.tick(t)
            if self.ctl.abort.is_set():
                return self._finish()
            if self.window and len(self.pending) >= self.window:
                return  # the next confirm calls _tick again
            if not self.window and self.conn._get_write_buffer_size() > self.MAX_BUFFER:
                return self._later(0.001)
            step = self.pacer.next(t)
            if step is None:
                if not self.pending or t > self.deadline:
                    return self._finish()
                return self._later(0.01)
            if step[0] == "wait":
                return self._later(max(0.0, (step[1] - t) / 1e9))
            self.channel.basic_publish("", self.spec["target"], self.stamp.make(step[0], self.seq, step[1]), self.props)
            self.seq += 1
            if self.window:
                self.tag += 1
                self.pending.append(self.tag)
            else:
                k = self.pacer.phase_at(t)
                if k is not None:
                    self.acked[k] += 1  # without confirms "acknowledged" can only mean "written"
        self._later(0)

    def _finish(self):
        self.finished = True
        self.conn.close()


def rabbit_consumer(spec: dict, ctl: Control) -> dict:
    """A pika consumer on a ``SelectConnection``: the I/O loop runs in slices of at most 20 ms,
    and each message is timestamped in the callback, on arrival."""
    import pika

    from ..config import amqp_parameters

    inbox, state = [], {"unacked": 0, "last": 0, "error": None, "ready": False}
    ack_every = max(1, spec.get("ack_every", 1))

    def on_message(ch, method, _props, body):
        inbox.append((body, now_ns()))
        state["unacked"] += 1
        state["last"] = method.delivery_tag
        if state["unacked"] >= ack_every:
            ch.basic_ack(method.delivery_tag, multiple=ack_every > 1)
            state["unacked"] = 0

    def on_channel(ch):
        state["channel"] = ch
        ch.basic_qos(prefetch_count=spec["prefetch"], callback=lambda _f: ch.basic_consume(
            spec["target"], on_message, callback=on_consuming))

    def on_consuming(_frame):
        state["ready"] = True
        conn.ioloop.stop()

    def on_fail(_conn, err):
        state["error"] = f"could not connect: {err}"
        conn.ioloop.stop()

    def on_closed(_conn, reason):
        if not state.get("closing"):
            state["error"] = f"connection closed during the run: {reason}"
        conn.ioloop.stop()

    conn = pika.SelectConnection(amqp_parameters(spec.get("node", 1)),
                                 on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
                                 on_open_error_callback=on_fail, on_close_callback=on_closed)
    conn.ioloop.start()  # until consuming (or failed)
    if state["error"]:
        raise RuntimeError(state["error"])

    def fetch():
        stop = conn.ioloop.call_later(0.02, conn.ioloop.stop)
        conn.ioloop.start()
        conn.ioloop.remove_timeout(stop)
        if state["error"]:
            raise RuntimeError(state["error"])
        if state["unacked"]:  # acknowledge what we still hold, so prefetch never runs dry
            state["channel"].basic_ack(state["last"], multiple=True)
            state["unacked"] = 0
        batch = inbox[:]
        inbox.clear()
        return batch

    try:
        return _consume_loop(spec, ctl, fetch)
    finally:
        state["closing"] = True
        if conn.is_open:
            conn.close()
            conn.ioloop.start()


# --- RabbitMQ streams (rstream, the native stream protocol) ------------------------------------

def stream_publisher(spec: dict, ctl: Control) -> dict:
    return asyncio.run(_stream_publisher(spec, ctl))


async def _stream_publisher(spec, ctl):
    from rstream import Producer

    from .runner import stream_endpoint

    host, port, user, password = stream_endpoint()
    n = len(spec["phases"])
    acked, errors = [0] * n, [0]
    window, batch_size = spec.get("confirm_window") or 1000, spec.get("batch", 100)
    state = {"pending": 0, "pacer": None}
    room = asyncio.Event()

    def on_confirm(status):
        state["pending"] -= 1
        if not status.is_confirmed:
            errors[0] += 1
        else:
            k = state["pacer"].phase_at(now_ns()) if state["pacer"] else None
            if k is not None:
                acked[k] += 1
        if state["pending"] < window:
            room.set()

    async with Producer(host, port, username=user, password=password) as producer:
        await producer.send_wait(spec["target"], b"\0" * spec["size"])  # connect, declare the publisher
        start = await asyncio.get_running_loop().run_in_executor(None, _ready_then_go, "producer", ctl)
        pacer = state["pacer"] = Pacer(_phases(spec), start)
        cpu, stamp, seq = _Cpu(pacer), Stamp(spec["size"]), 0
        while not ctl.abort.is_set():
            t = now_ns()
            cpu.tick(t)
            if state["pending"] >= window:
                room.clear()
                try:
                    await asyncio.wait_for(room.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
                continue
            batch = []
            while len(batch) < batch_size and state["pending"] + len(batch) < window:
                step = pacer.next(t)
                if step is None or step[0] == "wait":
                    break
                batch.append(stamp.make(step[0], seq, step[1]))
                seq += 1
            if batch:
                state["pending"] += len(batch)
                await producer.send_batch(spec["target"], batch, on_publish_confirm=on_confirm)
                await asyncio.sleep(0)
                continue
            if step is None:
                break
            await asyncio.sleep(max(0.0, min((step[1] - now_ns()) / 1e9, 0.05)))
        cpu.tick(now_ns())
        deadline = time.monotonic() + 30
        while state["pending"] > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        ctl.sent[:] = pacer.sent
        ctl.producer_done.set()
        return _producer_result(pacer, acked, cpu, errors[0], max(0, state["pending"]))


def stream_consumer(spec: dict, ctl: Control) -> dict:
    return asyncio.run(_stream_consumer(spec, ctl))


async def _stream_consumer(spec, ctl):
    from rstream import Consumer, ConsumerOffsetSpecification, OffsetType

    from .runner import stream_endpoint

    host, port, user, password = stream_endpoint()
    inbox = []

    async def on_message(body, _context):
        inbox.append((body, now_ns()))

    async with Consumer(host, port, username=user, password=password) as consumer:
        await consumer.subscribe(spec["target"], on_message, initial_credit=spec.get("credit", 20),
                                 offset_specification=ConsumerOffsetSpecification(OffsetType.FIRST, None))
        tally = await asyncio.get_running_loop().run_in_executor(None, _Tally, spec, ctl)
        while True:
            await asyncio.sleep(0.001 if tally.latency else 0.02)
            batch = inbox[:]
            inbox.clear()
            for body, arrived in batch:
                tally.add(body, arrived)
            if tally.done():
                return tally.result()


ROLES = {
    "kafka-producer": kafka_producer,
    "kafka-consumer": kafka_consumer,
    "rabbitmq-producer": rabbit_publisher,
    "rabbitmq-consumer": rabbit_consumer,
    "stream-producer": stream_publisher,
    "stream-consumer": stream_consumer,
}
