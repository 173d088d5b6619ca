"""End-to-end throughput (upload -> ready) of the distributed stack with 1, 2 and 4 workers.

For each worker count it starts the `make up` stack (deploy/local_stack.py: local PostgreSQL and
Redis, SeaweedFS, ingest, consent, N `clinvault worker` processes with one job each), creates an
API key, uploads the same set of generated JPEG photographs (with EXIF camera, GPS and owner
metadata to strip) through `POST /v1/images`, polls `GET /v1/images/{id}` until every image is
`ready` or `rejected`, and stops the stack.

    .venv/bin/python bench/e2e_bench.py [--images 48] [--workers 1,2,4] [--size 2048x1536]

Prints a Markdown table and writes bench/out/e2e.json. Talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
STACK = ROOT / "deploy" / "local_stack.py"
ENV_FILE = ROOT / "data" / "local" / "env"
OUT = ROOT / "bench" / "out"
FINAL = {"ready", "rejected"}


@dataclass
class Run:
    workers: int
    images: int
    ready: int
    rejected: int
    upload_seconds: float
    total_seconds: float
    images_per_second: float
    latency_p50: float
    latency_p95: float
    load_before: float


def make_jpeg(index: int, width: int, height: int) -> bytes:
    """A photograph-like JPEG (smooth gradients plus sensor noise) carrying identifying EXIF."""
    rng = np.random.default_rng(index)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            128 + 90 * np.sin(x / (97 + index) + y / 211),
            128 + 80 * np.cos(y / (131 + index)),
            128 + 70 * np.sin((x + y) / 173),
        ],
        axis=-1,
    )
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    exif = Image.Exif()
    exif[0x010F] = "BenchCam"  # Make
    exif[0x0110] = "Model 7"  # Model
    exif[0x013B] = "Synthetic Photographer"  # Artist
    exif[0x0132] = "2026:11:01 10:00:00"  # DateTime
    exif[0xA431] = f"SERIAL{index:06d}"  # BodySerialNumber
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (51.0, 30.0, 0.0), 3: "W", 4: (0.0, 7.0, 0.0)})
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


def stack(command: str, **env: str) -> None:
    subprocess.run(
        [sys.executable, str(STACK), command], cwd=ROOT, check=True, env={**os.environ, **env}
    )


def stack_env() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_FILE.read_text().splitlines() if "=" in line)
    return {pair[0]: pair[1] for pair in pairs}


def create_key(env: dict[str, str]) -> str:
    done = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "clinvault"),
            "keys",
            "create",
            "--tenant",
            "bench",
            "--role",
            "emr",
            "--label",
            "e2e benchmark",
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


async def run_once(
    base_url: str, key: str, photos: list[bytes], concurrency: int, poll_interval: float
) -> tuple[float, float, list[float], dict[str, int]]:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    started: dict[str, float] = {}
    finished: dict[str, float] = {}
    outcome: dict[str, str] = {}
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=120
    ) as client:

        async def upload(index: int, photo: bytes) -> str:
            async with gate:
                t0 = time.perf_counter()
                response = await client.post(
                    "/v1/images",
                    data={"patient_id": f"bench-patient-{index % 7}", "source": "emr"},
                    files={"file": (f"photo{index}.jpg", photo, "image/jpeg")},
                    headers={"Idempotency-Key": f"bench-{time.time_ns()}-{index}"},
                )
                response.raise_for_status()
                image_id = str(response.json()["id"])
                started[image_id] = t0
                return image_id

        begin = time.perf_counter()
        ids = await asyncio.gather(*(upload(i, p) for i, p in enumerate(photos)))
        uploaded = time.perf_counter() - begin

        async def poll(image_id: str) -> None:
            async with gate:
                response = await client.get(f"/v1/images/{image_id}")
            state = response.json().get("status")
            if state in FINAL and image_id not in finished:
                finished[image_id] = time.perf_counter()
                outcome[image_id] = state

        deadline = time.perf_counter() + 900
        while len(finished) < len(ids) and time.perf_counter() < deadline:
            await asyncio.gather(*(poll(i) for i in ids if i not in finished))
            await asyncio.sleep(poll_interval)
        total = (max(finished.values()) if finished else time.perf_counter()) - begin
    latencies = [finished[i] - started[i] for i in finished]
    counts = {state: sum(1 for v in outcome.values() if v == state) for state in FINAL}
    counts["unfinished"] = len(ids) - len(finished)
    return uploaded, total, latencies, counts


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--size", default="2048x1536")
    parser.add_argument("--concurrency", type=int, default=8, help="parallel HTTP requests")
    parser.add_argument("--poll-interval", type=float, default=0.2)
    args, _ = parser.parse_known_args()  # `make bench` passes the same argv to every script
    width, height = (int(v) for v in args.size.split("x"))
    photos = [make_jpeg(i, width, height) for i in range(args.images)]
    mean_kb = statistics.mean(len(p) for p in photos) / 1024
    print(f"{len(photos)} JPEGs {width}x{height}, mean {mean_kb:.0f} KiB", file=sys.stderr)

    runs: list[Run] = []
    stack("down")
    for workers in (int(w) for w in args.workers.split(",")):
        stack("up", WORKERS=str(workers))
        try:
            env = stack_env()
            key = create_key(env)
            base_url = f"http://127.0.0.1:{env['LOCAL_INGEST_PORT']}"
            load = os.getloadavg()[0]
            uploaded, total, latencies, counts = asyncio.run(
                run_once(base_url, key, photos, args.concurrency, args.poll_interval)
            )
        finally:
            stack("down")
        done = counts["ready"] + counts["rejected"]
        runs.append(
            Run(
                workers=workers,
                images=len(photos),
                ready=counts["ready"],
                rejected=counts["rejected"],
                upload_seconds=round(uploaded, 2),
                total_seconds=round(total, 2),
                images_per_second=round(done / total, 2),
                latency_p50=round(percentile(latencies, 0.5), 2),
                latency_p95=round(percentile(latencies, 0.95), 2),
                load_before=round(load, 2),
            )
        )
        print(f"workers={workers}: {runs[-1]}", file=sys.stderr)

    OUT.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "images": len(photos),
        "size": args.size,
        "mean_kib": round(mean_kb),
        "concurrency": args.concurrency,
        "date": time.strftime("%Y-%m-%d"),
    }
    (OUT / "e2e.json").write_text(
        json.dumps({"meta": meta, "runs": [asdict(r) for r in runs]}, indent=2)
    )
    print(
        "| workers | images ready / rejected | upload phase (s) | upload → all ready (s) "
        "| images/s | latency p50 / p95 (s) | load avg before |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in runs:
        print(
            f"| {r.workers} | {r.ready} / {r.rejected} | {r.upload_seconds} | "
            f"{r.total_seconds} | {r.images_per_second} | {r.latency_p50} / {r.latency_p95} "
            f"| {r.load_before} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
