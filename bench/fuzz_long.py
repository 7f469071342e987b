"""Long fuzz runs (issue 9): at least 10,000 generated messages at a real daemon, and generated hostile-peer
conversations at the stdlib client's own ZMTP/msgpack decoder. Prints the figures and exits non-zero if any
message was answered wrongly, the daemon's RSS grew by 5 % or more, or the client raised anything but its
own error.

The generators, the protocol oracle and the hostile peer are the ones the test-suite uses (with far fewer
examples) in tests/test_fuzz_daemon.py and tests/test_fuzz_client.py.

    python bench/fuzz_long.py                      # 10,000 daemon messages, 2,000 client conversations
    python bench/fuzz_long.py --messages 50000 --seed 7
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import conftest  # noqa: E402  (puts server/ on sys.path)
import platformdirs  # noqa: E402
import test_fuzz_client as client_fuzz  # noqa: E402
import test_fuzz_daemon as daemon_fuzz  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed as hypothesis_seed, settings  # noqa: E402


def model_cache() -> Path:
    """The same persistent weights cache the tests use."""
    return Path(os.environ.get("BGMASK_TEST_CACHE") or platformdirs.user_cache_dir("bgmask", appauthor=False))


def run_daemon(messages: int, seed: int) -> bool:
    with tempfile.TemporaryDirectory(prefix="bgmask-fuzz-") as tmp:
        dirs = {"BGMASK_RUNTIME_DIR": f"{tmp}/run", "BGMASK_CONFIG_DIR": f"{tmp}/config", "BGMASK_CACHE_DIR": str(model_cache())}
        d = conftest.start_daemon(dirs, "--default-model", "u2netp", "--max-message-bytes", str(daemon_fuzz.CAP))
        harness = daemon_fuzz.Harness(d, keep_going=True)
        try:
            figures = daemon_fuzz.measured_run(harness, messages, seed)
        finally:
            harness.close()
            status = d.stop()
    growth = figures.rss_after / figures.rss_before - 1
    print(f"daemon fuzz (seed {seed}): {figures.report()}")
    print(f"  named cases and warm-up: {harness.sent - figures.sent} messages before the measured run")
    print(f"  wrong answers: {len(harness.failures)}; daemon exit status {status}")
    for text, count in Counter(f[:300] for f in harness.failures).most_common(20):
        print(f"    {count} x {text}")
    return not harness.failures and growth < 0.05 and status == 0


def run_client(conversations: int, seed: int) -> bool:
    """Hostile-peer conversations; every call must end in a result or the client's own BgmaskError."""
    bc = client_fuzz.load_client()
    outcomes: Counter = Counter()
    foreign: Counter = Counter()

    @settings(max_examples=conversations, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(client_fuzz.scripts())
    def one(script: client_fuzz.Script) -> None:
        with client_fuzz.HostileDaemon(script) as peer:
            out = client_fuzz.call(bc, peer.endpoint)
        if out.error is None:
            outcomes["result"] += 1
        elif isinstance(out.error, bc.BgmaskError):
            outcomes[out.error.code if out.error.code in CLIENT_CODES else "(a code the peer made up)"] += 1
        else:
            foreign[f"{type(out.error).__name__}: {out.error}"[:200]] += 1

    started = time.monotonic()
    hypothesis_seed(seed)(one)()
    total = sum(outcomes.values()) + sum(foreign.values())
    print(f"client fuzz (seed {seed}): {total} hostile conversations in {time.monotonic() - started:.1f} s")
    print("  ended in: " + ", ".join(f"{k} {v}" for k, v in outcomes.most_common()))
    print(f"  other exceptions: {sum(foreign.values())}")
    for text, count in foreign.most_common(20):
        print(f"    {count} x {text}")
    return not foreign


CLIENT_CODES = {"not_running", "timeout", "connection_lost", "protocol_error", "too_large", "bad_image", "cancelled",
                "bad_request", "unsupported_version", "unauthorized", "unknown_op", "unknown_model", "busy",
                "model_unavailable", "device_unavailable", "inference_failed", "shutting_down", "internal"}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000, help="generated messages at the daemon (default 10000)")
    parser.add_argument("--conversations", type=int, default=2_000, help="hostile conversations with the client (default 2000)")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random, printed)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    ok = run_daemon(args.messages, seed) if args.messages else True
    ok = (run_client(args.conversations, seed) if args.conversations else True) and ok
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
