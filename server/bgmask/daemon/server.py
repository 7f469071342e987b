"""The bgmask daemon: a ZeroMQ ROUTER socket on loopback, a bounded job queue and inference workers.

The socket thread only parses, validates and routes; inference, downloads and refinement run on worker
threads, which hand their replies back through an inproc socket (ZeroMQ sockets are single-threaded)."""

from __future__ import annotations

import hmac
import ctypes
import ipaddress
import logging
import os
import secrets
import signal
import struct
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import zmq

from bgmask import PROTOCOL_VERSION, __version__, paths, protocol
from bgmask.mask import pipeline
from bgmask.models import providers, sessions
from bgmask.daemon import runtime, sequences
from bgmask import errors as E
from bgmask.models.catalog import Catalog
from bgmask.errors import BgmaskError
from bgmask.models.pool import SessionPool
from bgmask.models.sessions import MattingSession
from bgmask.protocol import ImageSpec, RemoveOptions

log = logging.getLogger("bgmask.daemon")

CAPABILITIES = ["remove", "cancel", "progress", "region", "refine", "decontaminate", "quality", "sequence"]
EXIT_ALREADY_RUNNING = 3
EXIT_BAD_CONFIG = 2
GiB = 1024**3
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # where libzmq asks who may complete a handshake (RFC 27)
ZAP_DOMAIN = b"bgmask"
REQUEST_BYTES_PER_PIXEL = 60  # a remove's peak working memory per pixel, as the security review measured it


@dataclass
class DaemonConfig:
    """Everything `bgmask serve` can set; the defaults are what a user gets at login."""

    host: str = "127.0.0.1"
    port: int = 0
    allow_remote: bool = False
    device: str = "auto"
    gpu: providers.GpuSettings = field(default_factory=providers.GpuSettings)
    threads: int = 0
    workers: int = 1
    max_message_bytes: int = 2 * GiB
    max_pixels: int = 250_000_000
    queue_limit: int = 16
    idle_unload_s: float = 1800.0
    memory_budget: int = 6 * GiB
    preload_delay: float = 0.0  # seconds after start to load the default model; negative = only on demand
    default_model: Optional[str] = None
    heartbeat_s: float = 1.0
    handshake_timeout_s: float = 5.0  # a connection that has not authenticated by then is dropped
    refusal_summary_s: float = 60.0  # refused handshakes and requests are logged as one line per interval
    release_memory_after_s: float = 5.0  # idle seconds before inference memory goes back to the system
    request_memory: int = 0  # bytes one remove may need (estimated); 0: half of the machine's memory


@dataclass(eq=False)
class Job:
    """A queued or running remove/pull request."""

    ident: bytes
    rid: Any
    op: str
    model: str
    spec: Optional[ImageSpec] = None
    frame: Optional[zmq.Frame] = None
    options: RemoveOptions = field(default_factory=RemoveOptions)
    out_sample_type: str = "u8"
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    running: bool = False
    stage: str = "queued"
    fraction: Optional[float] = None
    last_sent: float = 0.0
    sequence: Optional[sequences.Sequence] = None  # the frame sequence this remove belongs to, if any
    index: int = 0  # the frame's index in it
    turn: bool = False  # holds one of the daemon's inference turns

    @property
    def key(self) -> tuple[bytes, Any]:
        return (self.ident, self.rid)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _libc() -> Any:
    """The C library this process runs on (raises OSError where it cannot be loaded)."""
    return ctypes.CDLL(None) if sys.platform != "win32" else ctypes.cdll.msvcrt


def seed_libc_random() -> None:
    """libzmq numbers anonymous peers from the C library's unseeded rand(), so the next id is predictable;
    a local stranger who claims it makes libzmq abort on the next connection. A secret seed prevents that."""
    try:
        _libc().srand(ctypes.c_uint(secrets.randbits(32)))
    except (OSError, AttributeError):
        log.warning("could not seed the C library's random generator")


def keep_freed_blocks() -> None:
    """Make glibc's malloc keep large freed blocks for reuse (one heap, no per-block mmap), so that the next
    request's buffers (96 MB received for a 24 MP layer, the mask, the model's activations) land in memory that
    is already mapped instead of costing a page fault per 4 KiB: about 30 ms of a 24 MP round trip here. One
    arena, because libzmq's I/O thread would otherwise get its own, whose heaps cannot hold such a block. Must
    run before any thread starts; return_free_heap() still hands the memory back once the daemon is idle."""
    try:
        libc = _libc()
        libc.mallopt(-8, 1)  # M_ARENA_MAX
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: only blocks over 1 GiB get their own mapping
        libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD: free() alone never shrinks the heap
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def raise_open_file_limit() -> None:
    """Lift the soft limit on open files to the hard one. Each client connection holds a file descriptor, and
    at a desktop's usual soft limit of 1024 a script that leaves connections open could use them all up:
    libzmq then cannot accept the next client (and retries the accept in a busy loop until one closes)."""
    try:
        import resource
    except ImportError:  # Windows: no such limit on sockets
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft == hard:
        return
    # An unlimited hard limit still has a ceiling (the kernel's nr_open, macOS's OPEN_MAX): try a few.
    for limit in [hard] if hard != resource.RLIM_INFINITY else [1 << 20, 1 << 16, 10240]:
        if soft >= limit:
            return
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
            return
        except (ValueError, OSError):
            continue


def _size(n: int) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / 1024**2:.0f} MiB"


def default_request_memory() -> int:
    """Half of the machine's memory (8 GiB where that cannot be read): what one request may use by default."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 8 * GiB


def return_free_heap() -> None:
    """Give the C heap's free pages back to the system (glibc keeps freed small and mid-sized blocks, such as
    the pipeline's per-request arrays, for reuse): an idle daemon's RSS then falls back near its idle level."""
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def rss_bytes() -> Optional[int]:
    """Current resident memory of this process (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
    except ImportError:
        return None


class Refusals:
    """Counts refused handshakes and requests and logs them as one line per interval: a stranger hammering
    the port costs a few counters, not a log line (and disk) per attempt."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.counts: dict[str, int] = {}
        self._since = time.monotonic()

    def add(self, why: str) -> None:
        self.counts[why] = self.counts.get(why, 0) + 1

    def summarise(self, now: float, force: bool = False) -> None:
        if not self.counts or (now - self._since < self.interval_s and not force):
            return
        log.warning("refused in the last %.0f s: %s", now - self._since,
                    ", ".join(f"{n} {why}" for why, n in sorted(self.counts.items())))
        self.counts.clear()
        self._since = now


class Daemon:
    """Serves protocol v2 until shutdown; construct, then call serve()."""

    def __init__(self, config: DaemonConfig) -> None:
        keep_freed_blocks()
        raise_open_file_limit()
        self.config = config
        clash = providers.clash_warning(providers.installed_runtimes())
        if clash:
            log.warning("%s", clash)
        self.choice = providers.choose(config.device, config.threads, config.gpu)
        if self.choice.note:  # said once here and in every status reply, not per request
            log.warning("GPU not used: %s", self.choice.note)
        self.pool = SessionPool(self.choice, config.memory_budget, config.idle_unload_s)
        self.default_model = config.default_model or Catalog.load().default_name()
        Catalog.load().get(self.default_model)  # an unknown --default-model fails at start, not per request
        self.token = secrets.token_urlsafe(32)
        seed_libc_random()
        self.ctx = zmq.Context()
        self.endpoint = ""
        self.started = time.time()
        self._out_addr = f"inproc://bgmask-out-{id(self)}"
        self._jobs: dict[tuple[bytes, Any], Job] = {}
        self._queue: deque[Job] = deque()
        self._last_done = 0.0  # when the last request finished (monotonic)
        self._holding_memory = False  # a request ran or a connection closed since memory was last given back
        self._cv = threading.Condition()
        self._stopping = threading.Event()
        self._workers: list[threading.Thread] = []
        self._turns = 0  # jobs between their start and the end of their inference (a sequence frame) or their end
        self._local = threading.local()
        self.refusals = Refusals(config.refusal_summary_s)
        self.sequences = sequences.SequenceTable()

    # ----------------------------------------------------------------- lifecycle
    def serve(self) -> int:
        lock = runtime.DaemonLock()
        if not lock.acquire():
            other = runtime.read_runtime()
            where = f" (pid {other['pid']}, {other['endpoint']})" if other else ""
            print(f"bgmask: a daemon is already running for this user{where}; not starting a second one.", file=sys.stderr)
            return EXIT_ALREADY_RUNNING
        router = out = zap = monitor = None
        try:
            try:  # before daemon.json: an unsafe config dir (unsafe_runtime_dir) stops us unpublished
                runtime.record_daemon_command()
            except OSError as exc:  # a read-only home: serve anyway, clients just cannot auto-start us
                log.warning("could not record the start command in %s: %s", paths.config_file(), exc.strerror or exc)
            zap = self._bind_zap()
            router, out = self._bind()
            monitor = router.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_DISCONNECTED
                                                | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
            runtime.publish_runtime({
                "endpoint": self.endpoint, "token": self.token, "pid": os.getpid(),
                "protocol": PROTOCOL_VERSION, "version": __version__, "started": self.started,
            })
            self._install_signal_handlers()
            # One thread more than inference turns: a sequence frame hands its turn on when its inference is
            # done, so its refinement, temporal steps and reply overlap the next frame's inference.
            for n in range(max(1, self.config.workers) + 1):
                t = threading.Thread(target=self._worker, name=f"bgmask-worker-{n}", daemon=True)
                t.start()
                self._workers.append(t)
            if self.config.preload_delay >= 0:
                threading.Thread(target=self._preload, name="bgmask-preload", daemon=True).start()
            log.info("bgmask %s serving on %s (provider %s, %d threads, --device %s)", __version__, self.endpoint,
                     self.choice.provider, self.choice.threads, self.choice.requested)
            self._loop(router, out, zap, monitor)
            return 0
        finally:
            runtime.withdraw_runtime(os.getpid())
            self.refusals.summarise(time.monotonic(), force=True)
            if monitor is not None:
                router.disable_monitor()
                monitor.close(linger=0)
            for sock in (router, out, zap):
                if sock is not None:
                    sock.close(linger=1000)
            self.ctx.term()
            lock.release()
            log.info("bgmask daemon stopped")

    def stop(self) -> None:
        """Ask the serve loop to shut down (thread-safe)."""
        self._stopping.set()

    def _bind_zap(self) -> zmq.Socket:
        """The ZAP handler's socket, bound before the ROUTER listens: libzmq asks it about every PLAIN HELLO,
        so a peer without the token is dropped in the handshake, before it can send a single frame."""
        zap = self.ctx.socket(zmq.REP)
        zap.setsockopt(zmq.LINGER, 0)
        zap.bind(ZAP_ENDPOINT)
        return zap

    def _authenticate(self, zap: zmq.Socket) -> None:
        """Answer one ZAP request (RFC 27): 200 for the PLAIN password that equals the token, else 400."""
        frames = zap.recv_multipart()
        request_id = frames[1] if len(frames) > 1 else b""
        ok = (len(frames) == 8 and frames[0] == b"1.0" and frames[2] == ZAP_DOMAIN and frames[5] == b"PLAIN"
              and hmac.compare_digest(frames[7], self.token.encode()))
        zap.send_multipart([b"1.0", request_id, b"200" if ok else b"400", b"OK" if ok else b"wrong token",
                            b"bgmask" if ok else b"", b""])

    def _on_monitor_event(self, monitor: zmq.Socket) -> None:
        """One event of the ROUTER's monitor: a handshake that failed is counted, never logged on its own; a
        closed connection may have left the buffer of an upload that ended half-way (or of a refused huge
        handshake command) free in the C heap, so the next idle period gives memory back (_release_when_idle)."""
        event = struct.unpack("=H", monitor.recv_multipart()[0][:2])[0]
        if event == zmq.EVENT_DISCONNECTED:
            self._last_done = time.monotonic()
            self._holding_memory = True
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self.refusals.add("handshakes without the token")
        else:  # the wrong mechanism (clients of protocol 1 use NULL), garbage, or no handshake in time
            self.refusals.add("connections that failed the handshake or let it time out (protocol-1 clients fail here)")

    def _bind(self) -> tuple[zmq.Socket, zmq.Socket]:
        host = self.config.host
        if not is_loopback(host):
            if not self.config.allow_remote:
                raise BgmaskError(E.BAD_REQUEST, f"Refusing to listen on {host}: only loopback is allowed without --allow-remote.")
            log.warning("listening on %s: any machine that can reach it and knows the token can use this daemon, and"
                        " nothing is encrypted: anyone who can see this network's traffic can read the token and the"
                        " images (use a network you trust, or an SSH tunnel)", host)
        router = self.ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_bytes)
        router.setsockopt(zmq.LINGER, 1000)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # see _deliver: a disconnected client's jobs are dropped
        router.setsockopt(zmq.PLAIN_SERVER, 1)
        router.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        router.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no ZAP handler would mean no handshake, never "anyone"
        router.setsockopt(zmq.HANDSHAKE_IVL, int(self.config.handshake_timeout_s * 1000))
        if ":" in host.strip("[]"):
            router.setsockopt(zmq.IPV6, 1)
            host = f"[{host.strip('[]')}]"
        if self.config.port:
            router.bind(f"tcp://{host}:{self.config.port}")
        else:
            router.bind(f"tcp://{host}:*")
        self.endpoint = router.getsockopt(zmq.LAST_ENDPOINT).decode()
        out = self.ctx.socket(zmq.PULL)
        out.bind(self._out_addr)
        return router, out

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stopping.set())

    def _preload(self) -> None:
        if self._stopping.wait(self.config.preload_delay):
            return
        try:
            self.pool.get(self.default_model, cancel=self._stopping.is_set)
            log.info("default model %s loaded", self.default_model)
        except BgmaskError as exc:
            log.warning("could not preload %s: %s", self.default_model, exc.message)

    # ----------------------------------------------------------------- socket thread
    def _loop(self, router: zmq.Socket, out: zmq.Socket, zap: zmq.Socket, monitor: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(out, zmq.POLLIN)
        poller.register(zap, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        next_tick = time.monotonic()
        shutting_down = False
        while True:
            events = dict(poller.poll(100))
            if zap in events:
                for _ in range(256):
                    if not zap.poll(0):
                        break
                    self._authenticate(zap)
            if monitor in events:
                for _ in range(256):
                    if not monitor.poll(0):
                        break
                    self._on_monitor_event(monitor)
            if out in events:
                for _ in range(256):
                    try:
                        self._deliver(router, out.recv_multipart(zmq.NOBLOCK, copy=False))
                    except zmq.Again:
                        break
            if router in events:
                for _ in range(64):
                    try:
                        frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._handle(router, frames)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + self.config.heartbeat_s / 2
                self._heartbeat(router, now)
                self.pool.drop_idle()
                self.sequences.drop_idle(now)
                self._release_when_idle(now)
                self.refusals.summarise(now)
            if self._stopping.is_set() and not shutting_down:
                shutting_down = True
                self._cancel_queued(router)
            if shutting_down and not self._active_jobs():
                break
        with self._cv:
            self._cv.notify_all()
        for t in self._workers:
            t.join(timeout=5)
        while True:  # replies the workers pushed while we were stopping
            try:
                self._deliver(router, out.recv_multipart(zmq.NOBLOCK, copy=False))
            except zmq.Again:
                break

    def _send(self, router: zmq.Socket, ident: bytes, header: dict, *data: Any) -> None:
        self._deliver(router, [ident, protocol.pack(header), *data])

    def _deliver(self, router: zmq.Socket, frames: list) -> None:
        """Send without ever blocking the socket thread. The ROUTER is mandatory-routing, so a message for a
        client that has disconnected fails instead of vanishing: that is how the daemon learns a client is
        gone (each waiting job gets a progress message every second) and drops its jobs. A client that
        reads nothing loses messages at its high-water mark, as with libzmq's default ROUTER."""
        try:
            router.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            pass
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            ident = frames[0] if isinstance(frames[0], bytes) else frames[0].bytes
            self._drop_jobs_of(ident)

    def _drop_jobs_of(self, ident: bytes) -> None:
        """Cancel the jobs of a client that disconnected: queued ones never start, a running one stops at its
        next cancellation point; nobody is left to read their answers."""
        with self._cv:
            jobs = [job for job in self._jobs.values() if job.ident == ident and not job.cancel_requested.is_set()]
            for job in jobs:
                job.cancel_requested.set()
                if not job.running:
                    self._queue.remove(job)
                    del self._jobs[job.key]
                    job.frame = None
        if jobs:
            log.info("dropped %d request(s) of a client that disconnected", len(jobs))

    def _handle(self, router: zmq.Socket, frames: list[zmq.Frame]) -> None:
        ident = frames[0].bytes
        rid = None
        try:
            if len(frames) < 2:
                raise BgmaskError(E.BAD_REQUEST, "The message has no header frame.")
            header = protocol.unpack_header(frames[1].buffer)
            rid = protocol.request_id(header)
            op = protocol.check_envelope(header, self.token)
            data = frames[2:]
            if op not in ("remove",) and data:
                raise BgmaskError(E.BAD_REQUEST, f"The {op} operation takes no data frames, got {len(data)}.")
            log.debug("request %s id=%r from %s", op, rid, ident.hex())
            getattr(self, f"_op_{op}")(router, ident, rid, header, data)
        except BgmaskError as exc:
            if exc.code == E.UNAUTHORIZED:
                self.refusals.add("requests without the token")
            extra = {"protocol": PROTOCOL_VERSION} if exc.code == E.UNSUPPORTED_VERSION else {}
            self._send(router, ident, protocol.error(rid, exc.code, exc.message, **extra))
        except Exception:
            log.exception("internal error while handling a request")
            self._send(router, ident, protocol.error(rid, E.INTERNAL, "The daemon hit an internal error; the request was not processed."))

    def _op_hello(self, router: zmq.Socket, ident: bytes, rid: Any, header: dict, data: list) -> None:
        self._send(router, ident, protocol.reply(
            rid, protocol=PROTOCOL_VERSION, version=__version__, capabilities=CAPABILITIES,
            max_message_bytes=self.config.max_message_bytes, max_pixels=self.config.max_pixels,
            provider=self.choice.provider, device=self.choice.device, default_model=self.default_model,
            requested_device=self.choice.requested, device_note=self.choice.note,
        ))

    def _op_status(self, router: zmq.Socket, ident: bytes, rid: Any, header: dict, data: list) -> None:
        catalog = Catalog.load()
        on = self.pool.loaded_providers()
        with self._cv:
            queued = sum(1 for j in self._queue if not j.cancel_requested.is_set())
            running = sum(1 for j in self._jobs.values() if j.running)
        self._send(router, ident, protocol.reply(
            rid, version=__version__, protocol=PROTOCOL_VERSION, endpoint=self.endpoint, pid=os.getpid(),
            uptime=round(time.time() - self.started, 3), provider=self.choice.provider, device=self.choice.device,
            threads=self.choice.threads, queue=queued, running=running, rss=rss_bytes(), default_model=self.default_model,
            requested_device=self.choice.requested, device_note=self.choice.note, sequences=len(self.sequences),
            models=[self._model_status(s.name, self.pool.state(s), on) for s in catalog.entries()],
        ))

    def _model_status(self, name: str, state: str, on: dict[str, str]) -> dict[str, Any]:
        """A model's state, and for a loaded one the provider its session really runs on."""
        entry = {"name": name, "state": state}
        if name in on:
            entry["provider"] = on[name]
        return entry

    def _op_models(self, router: zmq.Socket, ident: bytes, rid: Any, header: dict, data: list) -> None:
        models = []
        for s in Catalog.load().entries():
            models.append({
                "name": s.name, "family": s.family, "input_size": list(s.input_size), "description": s.description,
                "state": self.pool.state(s), "default": s.name == self.default_model, "imported": s.imported,
                "size": s.size, "licence": s.licence,
            })
        self._send(router, ident, protocol.reply(rid, models=models))

    def _op_remove(self, router: zmq.Socket, ident: bytes, rid: Any, header: dict, data: list) -> None:
        model = protocol.parse_model_name(header.get("model")) or self.default_model
        spec = protocol.parse_image(header.get("image"), self.config.max_pixels, self.config.max_message_bytes)
        self._check_request_memory(spec)
        frame = protocol.check_pixel_frames(spec, data)
        options = protocol.parse_options(header.get("options"), spec)
        out_type = protocol.parse_output(header.get("output"))
        sequence = sequences.parse_sequence(header.get("sequence"))
        Catalog.load().get(model)
        job = Job(ident, rid, "remove", model, spec, frame, options, out_type)
        if sequence is not None:  # admitted last: a frame refused for anything else leaves its sequence as it was
            job.sequence, job.index = self.sequences.admit(ident, sequence), sequence.index
        try:
            self._enqueue(router, job)
        except BgmaskError:
            self._sequence_done(job, ok=False)
            raise

    def _check_request_memory(self, spec: ImageSpec) -> None:
        """Refuse a remove whose working memory (about REQUEST_BYTES_PER_PIXEL a pixel besides its pixels: the
        float planes of refinement and the options) would exceed the per-request budget, before it is queued,
        instead of letting it swap the machine."""
        budget = self.config.request_memory or default_request_memory()
        need = spec.pixels * REQUEST_BYTES_PER_PIXEL + spec.height * spec.stride
        if need > budget:
            raise BgmaskError(E.TOO_LARGE, f"A {spec.width}x{spec.height} image needs about {_size(need)} of memory "
                                           f"to process; this daemon allows {_size(budget)} per request (bgmask serve "
                                           "--request-memory).")

    def _op_pull(self, router: zmq.Socket, ident: bytes, rid: Any, header: dict, data: list) -> None:
        model = protocol.parse_model_name(header.get("model")) or self.default_model
        Catalog.load().get(model)
        self._enqueue(router, Job(ident, rid, "pull", model))

    def _op_cancel(self, router: zmq.Socket, ident: bytes, rid: Any, header: dict, data: list) -> None:
        target = header.get("target")
        with self._cv:
            job = self._jobs.get((ident, target)) if isinstance(target, (int, str)) and not isinstance(target, bool) else None
            found = job is not None
            queued = found and not job.running
            if found:
                job.cancel_requested.set()
            if queued:
                self._queue.remove(job)
                del self._jobs[job.key]
        if queued:
            self._sequence_done(job, ok=False)
        self._send(router, ident, protocol.reply(rid, cancelled=found))
        if queued:
            self._send(router, ident, protocol.error(job.rid, E.CANCELLED, "The request was cancelled before it started."))

    def _op_shutdown(self, router: zmq.Socket, ident: bytes, rid: Any, header: dict, data: list) -> None:
        self._send(router, ident, protocol.reply(rid))
        log.info("shutdown requested")
        self._stopping.set()

    def _enqueue(self, router: zmq.Socket, job: Job) -> None:
        if self._stopping.is_set():
            raise BgmaskError(E.SHUTTING_DOWN, "The daemon is shutting down; try again in a moment.")
        with self._cv:
            if job.key in self._jobs:
                raise BgmaskError(E.BAD_REQUEST, f"Request id {job.rid!r} is already in use by a request still running.")
            if len(self._queue) >= self.config.queue_limit:
                raise BgmaskError(E.BUSY, f"The daemon already has {len(self._queue)} requests waiting; try again when they are done.")
            self._jobs[job.key] = job
            self._queue.append(job)
            position = len(self._queue)
            self._cv.notify()
        job.last_sent = time.monotonic()
        self._send(router, job.ident, protocol.progress(job.rid, "queued", None, position=position))

    def _active_jobs(self) -> int:
        with self._cv:
            return len(self._jobs)

    def _heartbeat(self, router: zmq.Socket, now: float) -> None:
        """Tell every waiting client its request is alive, so it can tell busy from dead."""
        with self._cv:
            queued = {id(j): n for n, j in enumerate(self._queue, 1)}
            jobs = list(self._jobs.values())
        for job in jobs:
            if now - job.last_sent >= self.config.heartbeat_s:
                job.last_sent = now
                extra = {"position": queued[id(job)]} if id(job) in queued else {}
                self._send(router, job.ident, protocol.progress(job.rid, job.stage, job.fraction, **extra))

    def _cancel_queued(self, router: zmq.Socket) -> None:
        with self._cv:
            dropped = list(self._queue)
            self._queue.clear()
            for job in dropped:
                job.cancel_requested.set()
                del self._jobs[job.key]
        for job in dropped:
            self._sequence_done(job, ok=False)
            self._send(router, job.ident, protocol.error(job.rid, E.CANCELLED, "The daemon is shutting down; the request was not started."))

    # ----------------------------------------------------------------- workers
    def _next_job(self) -> Optional[Job]:
        with self._cv:
            while not self._queue or self._turns >= max(1, self.config.workers):
                if self._stopping.is_set():
                    return None
                self._cv.wait(0.5)
            job = self._queue.popleft()
            job.running = job.turn = True
            self._turns += 1
            return job

    def _end_turn(self, job: Job) -> None:
        """The job no longer needs an inference turn: the next job may start."""
        with self._cv:
            if job.turn:
                job.turn = False
                self._turns -= 1
                self._cv.notify()

    def _worker(self) -> None:
        push = self.ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 1000)
        push.connect(self._out_addr)
        try:
            while (job := self._next_job()) is not None:
                self._run(job, push)
        finally:
            push.close()

    def _run(self, job: Job, push: zmq.Socket) -> None:
        def progress(stage: str, fraction: Optional[float]) -> None:
            changed = stage != job.stage
            job.stage, job.fraction = stage, fraction
            now = time.monotonic()
            if changed or now - job.last_sent >= 0.1:
                job.last_sent = now
                push.send_multipart([job.ident, protocol.pack(protocol.progress(job.rid, stage, fraction))])
            if stage == "refining" and job.sequence is not None:  # inference done: the next job may start its own
                self._end_turn(job)

        started = time.perf_counter()
        frames: list[Any] = []
        try:
            if job.op == "pull":
                found = self.pool.fetch(job.model, progress, job.cancel_requested.is_set)
                header = protocol.reply(job.rid, model=job.model, path=str(found.path), sha256=found.sha256,
                                        size=found.size, source=found.source)
            else:
                session, result = self._compute_mask(job, progress)
                if job.cancel_requested.is_set():
                    raise BgmaskError(E.CANCELLED, "The request was cancelled.")
                header = protocol.reply(
                    job.rid, mask={"width": job.spec.width, "height": job.spec.height, "sample_type": job.out_sample_type},
                    model=job.model, provider=session.provider, device=providers.device_of(session.provider), timings=result.timings,
                )
                frames = [result.mask] if result.colours is None else [result.mask, result.colours]
                log.info("remove %dx%d %s ch=%d model=%s in %.3fs", job.spec.width, job.spec.height, job.spec.sample_type,
                         job.spec.channels, job.model, time.perf_counter() - started)
        except BgmaskError as exc:
            header = protocol.error(job.rid, exc.code, exc.message)
            log.info("%s id=%r failed: %s", job.op, job.rid, exc.code)
        except Exception:
            log.exception("internal error in %s", job.op)
            header = protocol.error(job.rid, E.INTERNAL, "The daemon hit an internal error while processing this request.")
        self._end_turn(job)
        self._sequence_done(job, ok=header["type"] == "reply")
        with self._cv:
            self._jobs.pop(job.key, None)
        job.frame = None
        push.send_multipart([job.ident, protocol.pack(header), *frames], copy=False)
        self._last_done = time.monotonic()
        self._holding_memory = True

    def _blender(self, job: Job) -> Optional[sequences.FrameBlend]:
        """The temporal steps of a frame of a sequence (None for a lone image, or with temporal off); raises
        `cancelled` right away when an earlier frame already ended the sequence."""
        if job.sequence is None:
            return None
        self.sequences.check(job.sequence)
        if not job.sequence.temporal:
            return None
        return self.sequences.frame(job.sequence, job.index, job.model, job.cancel_requested.is_set)

    def _sequence_done(self, job: Job, ok: bool) -> None:
        if job.sequence is not None:
            self.sequences.finish(job.sequence, job.index, ok)
            job.sequence = None

    def _compute_mask(self, job: Job, progress: Callable[[str, Optional[float]], None],
                      ) -> tuple[MattingSession, pipeline.MaskResult]:
        """The session that computed the job's mask, and the result. Under --device auto a GPU that runs out of
        memory at run time costs speed, not the request: the model moves to a CPU session and the job reruns."""
        assert job.spec is not None and job.frame is not None
        spec, frame = job.spec, job.frame
        blend = self._blender(job)

        def run(session: MattingSession) -> pipeline.MaskResult:
            return pipeline.compute_mask(session, frame.buffer, spec, job.options, job.out_sample_type, progress,
                                         job.cancel_requested.is_set, blend)

        session = self.pool.get(job.model, progress, job.cancel_requested.is_set)
        try:
            return session, run(session)
        except BgmaskError as exc:
            if exc.code != E.DEVICE_UNAVAILABLE or self.choice.requested != "auto":
                raise
            session = self.pool.fall_back_to_cpu(session, exc.message.rstrip("."))
            return session, run(session)

    def _release_when_idle(self, now: float) -> None:
        """Once no request has run and no connection closed for release_memory_after_s, give back what only a
        running request needs (the model's activations in ONNX Runtime's arena, the pipeline's freed arrays, an
        aborted upload's buffer): a warm but idle daemon then holds little more than its loaded models, while
        requests in quick succession keep it. Once per idle period: a fragmented heap that malloc_trim cannot
        shrink is not trimmed again until another request finishes or connection closes."""
        if self._active_jobs():
            return
        if not self._holding_memory or now - self._last_done < self.config.release_memory_after_s:
            return
        self._holding_memory = False
        sessions.release_arena()
        return_free_heap()
