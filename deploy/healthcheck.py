"""Container health check for every clinvault role (exit 0 healthy, 1 not); stdlib + redis only.

APIs: GET $CLINVAULT_HEALTHCHECK_URL (default http://127.0.0.1:8000/healthz) answers 200.
Workers (CLINVAULT_HEALTHCHECK=worker): Redis answers and arq's health key exists (a worker that
died takes its container down with it, since `clinvault worker` is PID 1; this catches a worker
that is up but cut off from its queue).
"""

from __future__ import annotations

import os
import sys
import urllib.request

ARQ_HEALTH_KEY = "arq:queue:health-check"


def check_http(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=4) as response:  # noqa: S310 (fixed local URL)
            return bool(response.status == 200)
    except OSError:
        return False


def check_worker(redis_url: str) -> bool:
    from redis import Redis

    try:
        client = Redis.from_url(redis_url, socket_timeout=4, socket_connect_timeout=4)
        return bool(client.ping()) and bool(client.exists(ARQ_HEALTH_KEY))
    except Exception:
        return False


def main() -> int:
    if os.environ.get("CLINVAULT_HEALTHCHECK") == "worker":
        ok = check_worker(os.environ.get("CLINVAULT_REDIS_URL", "redis://127.0.0.1:6379/0"))
    else:
        ok = check_http(
            os.environ.get("CLINVAULT_HEALTHCHECK_URL", "http://127.0.0.1:8000/healthz")
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
