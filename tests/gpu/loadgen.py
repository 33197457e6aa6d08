#!/usr/bin/env python3
"""loadgen.py — a load generator for an OpenAI-compatible streaming server (`kiln serve`).

Standard library only (asyncio streams speaking HTTP/1.1 and SSE): it runs on the GPU machine,
which has no network and no `openai` package. Every request is a streaming /v1/completions of
token ids, greedy (or, with --sample, seeded sampling: temperature 0.8, top_p 0.95 and a seed of
its own per request), with `ignore_eos` (so each output has exactly max_tokens tokens) and kiln's
`return_token_ids` (each SSE chunk carries its ids). Prompt ids are random in [1, --vocab),
seeded: a run is reproducible.

  loadgen.py URL MODE [options] [--json FILE]
  modes:
    sweep       Poisson arrivals at each rate of --rates (req/s) for --duration s each
    concurrent  --streams requests all started at once (--requests in all, --streams in flight)
    ttft        light load: --requests requests one after another, same prompt length
    soak        --streams in flight for --seconds s; the server's RSS (/proc/--pid/status VmRSS)
                sampled every 10 s, with the trend (a least-squares slope, MiB per minute)

For each run: output tok/s (generated tokens over the run's wall time), decode tok/s as `kiln run`
computes it (tokens after each stream's first, over the time from the earliest first token to the
last token: comparable with kiln run's for the same batch), steady decode tok/s (tokens received
while every stream was past its first token and none had finished: a full batch), time to first
token and inter-token latency (the gap between successive chunks) p50/p90/p99, errors by HTTP
status or exception, lost streams (no `data: [DONE]`, or fewer tokens than max_tokens). With
--check K, K completed requests (spread over the run) are re-run alone afterwards, one at a time,
and their token ids compared: exact matches, and for each mismatch the first differing position.
Greedy decoding in bf16 can flip a near-tie between a batch and a single run (unless the model
was compiled with `kilnc compile --batch-invariant`), so mismatches are reported, not fatal; with --fail-on-mismatch they make the exit status 1. Exit status 1 also on
any error or lost stream.
"""
import argparse
import asyncio
import json
import math
import random
import resource
import sys
import time
from urllib.parse import urlparse


class HttpError(Exception):
    def __init__(self, status, body):
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status


class Conn:
    """Where the server is, and the headers every request carries."""

    def __init__(self, url, api_key, model, timeout):
        u = urlparse(url)
        self.host, self.port = u.hostname, u.port or 80
        self.model, self.timeout = model, timeout
        self.auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""


async def read_head(reader):
    """Status line and headers: (status, {lower-case name: value})."""
    line = await reader.readline()
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ConnectionError(f"bad status line {line[:100]!r}")
    status = int(parts[1])
    headers = {}
    for _ in range(200):
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers


async def body_chunks(reader, headers):
    """The response body as it arrives, de-chunked (chunked, Content-Length or until close)."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await reader.readline()
            if not size_line:
                raise ConnectionError("connection closed inside a chunked body")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                return
            data = await reader.readexactly(size)
            await reader.readexactly(2)
            yield data
    elif "content-length" in headers:
        n = int(headers["content-length"])
        if n:
            yield await reader.readexactly(n)
    else:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            yield data


async def post(conn, path, body):
    """Opens a connection and sends one POST: (reader, writer, status, headers)."""
    reader, writer = await asyncio.open_connection(conn.host, conn.port, limit=1 << 22)
    data = json.dumps(body).encode()
    writer.write((f"POST {path} HTTP/1.1\r\nHost: {conn.host}:{conn.port}\r\nContent-Type: application/json\r\n"
                  f"{conn.auth}Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data)
    await writer.drain()
    status, headers = await read_head(reader)
    return reader, writer, status, headers


async def get(conn, path):
    reader, writer = await asyncio.open_connection(conn.host, conn.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {conn.host}\r\n{conn.auth}Connection: close\r\n\r\n".encode())
    await writer.drain()
    try:
        status, headers = await read_head(reader)
        body = b"".join([c async for c in body_chunks(reader, headers)])
        return status, body
    finally:
        writer.close()


class Result:
    __slots__ = ("prompt", "max_tokens", "seed", "t0", "t_first", "t_end", "chunk_times", "ids", "done", "error")

    def __init__(self, prompt, max_tokens, seed=None):
        self.prompt, self.max_tokens, self.seed = prompt, max_tokens, seed  # seed: sampled, else greedy
        self.t0 = self.t_first = self.t_end = None
        self.chunk_times = []    # (arrival time, tokens in the chunk)
        self.ids = []
        self.done = False
        self.error = None        # "HTTP 503", "TimeoutError", ...

    def lost(self):
        return self.error is None and (not self.done or len(self.ids) < self.max_tokens)


async def stream_completion(conn, res):
    """Runs one streaming request into res (never raises: failures land in res.error)."""
    body = {"model": conn.model, "prompt": res.prompt, "max_tokens": res.max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True, "return_token_ids": True}
    if res.seed is not None:
        body.update(temperature=0.8, top_p=0.95, seed=res.seed)
    res.t0 = time.perf_counter()
    writer = None
    try:
        async with asyncio.timeout(conn.timeout):
            reader, writer, status, headers = await post(conn, "/v1/completions", body)
            if status != 200:
                err = b"".join([c async for c in body_chunks(reader, headers)])
                raise HttpError(status, err)
            buf = b""
            async for chunk in body_chunks(reader, headers):
                buf += chunk
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    if event.startswith(b":"):      # an SSE comment (kiln serve's keep-alive)
                        continue
                    if not event.startswith(b"data: "):
                        raise ConnectionError(f"bad SSE event {event[:100]!r}")
                    payload = event[6:]
                    if payload == b"[DONE]":
                        res.done = True
                        continue
                    ev = json.loads(payload)
                    if "error" in ev:
                        raise ConnectionError(f"error event: {ev['error']}")
                    n = 0
                    for c in ev.get("choices", []):
                        ids = c.get("token_ids") or []
                        res.ids += ids
                        n += len(ids)
                    if n:
                        now = time.perf_counter()
                        if res.t_first is None:
                            res.t_first = now
                        res.chunk_times.append((now, n))
    except HttpError as e:
        res.error = f"HTTP {e.status}"
    except Exception as e:  # a load generator counts failures, it does not stop at the first
        res.error = type(e).__name__
    finally:
        res.t_end = time.perf_counter()
        if writer is not None:
            writer.close()


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(p / 100 * len(xs)) - 1))]


def ms(x):
    return None if x is None else round(x * 1e3, 2)


def summarize(name, results, wall):
    ok = [r for r in results if r.error is None and not r.lost()]
    ttft = [r.t_first - r.t0 for r in ok if r.t_first is not None]
    itl = [b[0] - a[0] for r in ok for a, b in zip(r.chunk_times, r.chunk_times[1:])]
    lat = [r.t_end - r.t0 for r in ok]
    errors = {}
    for r in results:
        if r.error is not None:
            errors[r.error] = errors.get(r.error, 0) + 1
    gen = sum(len(r.ids) for r in results)
    # steady decode: every stream past its first token, none finished
    steady = None
    started = [r for r in ok if r.t_first is not None]
    if len(started) == len(results) and started:
        lo = max(r.t_first for r in started)
        hi = min(r.chunk_times[-1][0] for r in started)
        if hi - lo > 0.05:
            n = sum(k for r in started for t, k in r.chunk_times if lo < t <= hi)
            steady = round(n / (hi - lo), 1)
    # kiln run's decode rate: tokens after each first one, from the earliest first token to the last token
    decode = None
    if started:
        span = max(r.chunk_times[-1][0] for r in started) - min(r.t_first for r in started)
        if span > 0:
            decode = round(sum(len(r.ids) - 1 for r in started) / span, 1)
    return {
        "run": name, "requests": len(results), "completed": len(ok), "wall_s": round(wall, 2),
        "prompt_tokens": sum(len(r.prompt) for r in results), "generated_tokens": gen,
        "output_tok_s": round(gen / wall, 1) if wall > 0 else None, "decode_tok_s": decode,
        "steady_decode_tok_s": steady,
        "ttft_ms": {"p50": ms(pct(ttft, 50)), "p90": ms(pct(ttft, 90)), "p99": ms(pct(ttft, 99))},
        "itl_ms": {"p50": ms(pct(itl, 50)), "p90": ms(pct(itl, 90)), "p99": ms(pct(itl, 99))},
        "latency_ms": {"p50": ms(pct(lat, 50)), "p99": ms(pct(lat, 99))},
        "errors": errors, "lost": sum(r.lost() for r in results),
    }


class Workload:
    """Seeded prompts and output lengths."""

    def __init__(self, a):
        self.rng = random.Random(a.seed)
        self.a = a

    def next(self):
        a, r = self.a, self.rng
        plen = r.randint(a.prompt_min, a.prompt_max)
        prompt = [r.randrange(1, a.vocab) for _ in range(plen)]
        return Result(prompt, r.randint(a.out_min, a.out_max), r.randrange(1 << 31) if a.sample else None)


async def run_concurrent(conn, wl, streams, total):
    """total requests with at most `streams` in flight (all `streams` started at once)."""
    results = [wl.next() for _ in range(total)]
    sem = asyncio.Semaphore(streams)

    async def one(r):
        async with sem:
            await stream_completion(conn, r)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(r) for r in results))
    return results, time.perf_counter() - t0


async def run_poisson(conn, wl, rate, duration, rng):
    """Poisson arrivals at `rate` req/s for `duration` s; waits for every request to finish."""
    tasks, results = [], []
    t0 = time.perf_counter()
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        if t > duration:
            break
        await asyncio.sleep(max(0.0, t0 + t - time.perf_counter()))
        r = wl.next()
        results.append(r)
        tasks.append(asyncio.create_task(stream_completion(conn, r)))
    await asyncio.gather(*tasks)
    return results, time.perf_counter() - t0


def read_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def slope(points):
    """Least-squares slope of (x, y) points."""
    n = len(points)
    if n < 2:
        return None
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else None


async def run_soak(conn, wl, streams, seconds, pid, log):
    """`streams` requests in flight for `seconds`, RSS sampled every 10 s."""
    results, rss = [], []
    stop_at = time.perf_counter() + seconds
    t0 = time.perf_counter()

    async def worker():
        while time.perf_counter() < stop_at:
            r = wl.next()
            results.append(r)
            await stream_completion(conn, r)

    async def sampler():
        while True:
            now = time.perf_counter()
            kib = read_rss_kib(pid)
            rss.append((round(now - t0, 1), kib))
            log(f"soak: t={now - t0:.0f} s RSS {kib / 1024:.1f} MiB, {len(results)} requests")
            if now >= stop_at:
                return
            await asyncio.sleep(min(10.0, max(0.0, stop_at - now)))

    await asyncio.gather(sampler(), *(worker() for _ in range(streams)))
    rss.append((round(time.perf_counter() - t0, 1), read_rss_kib(pid)))
    wall = time.perf_counter() - t0
    # the trend over the second half (the first fills caches and pools)
    half = [(t / 60, k / 1024) for t, k in rss if t >= seconds / 2]
    s = slope(half)
    trend = {"samples_s_kib": rss, "rss_first_mib": round(rss[0][1] / 1024, 1),
             "rss_last_mib": round(rss[-1][1] / 1024, 1),
             "rss_max_mib": round(max(k for _, k in rss) / 1024, 1),
             "second_half_slope_mib_per_min": None if s is None else round(s, 3)}
    return results, wall, trend


async def check_alone(conn, results, k, log):
    """Re-runs k completed requests alone, one at a time; compares token ids."""
    done = [r for r in results if r.error is None and not r.lost()]
    if not done or k <= 0:
        return {"checked": 0}
    step = max(1, len(done) // k)
    sample = done[::step][:k]
    exact, mismatches = 0, []
    for r in sample:
        again = Result(r.prompt, r.max_tokens, r.seed)
        await stream_completion(conn, again)
        if again.error is not None or again.lost():
            mismatches.append({"prompt_len": len(r.prompt), "error": again.error or "lost"})
            continue
        if again.ids == r.ids:
            exact += 1
            continue
        first = next((i for i, (x, y) in enumerate(zip(r.ids, again.ids)) if x != y), min(len(r.ids), len(again.ids)))
        mismatches.append({"prompt_len": len(r.prompt), "max_tokens": r.max_tokens, "first_diff": first})
    log(f"check: {exact}/{len(sample)} exact")
    return {"checked": len(sample), "exact": exact, "mismatches": mismatches}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", help="server base URL, e.g. http://127.0.0.1:8000")
    ap.add_argument("mode", choices=["sweep", "concurrent", "ttft", "soak"])
    ap.add_argument("--model", required=True, help="the served model name")
    ap.add_argument("--api-key")
    ap.add_argument("--rates", default="1,4,16,64", help="sweep: request rates (req/s), comma separated")
    ap.add_argument("--duration", type=float, default=30, help="sweep: seconds of arrivals per rate")
    ap.add_argument("--streams", type=int, default=64, help="concurrent, soak: requests in flight")
    ap.add_argument("--requests", type=int, help="concurrent: requests in all (default --streams); ttft: count")
    ap.add_argument("--seconds", type=float, default=300, help="soak: duration")
    ap.add_argument("--pid", type=int, help="soak: the server's process id (for its RSS)")
    ap.add_argument("--prompt-min", type=int, default=32)
    ap.add_argument("--prompt-max", type=int, default=2048)
    ap.add_argument("--out-min", type=int, default=16)
    ap.add_argument("--out-max", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=128256, help="prompt ids are drawn from [1, vocab)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample", action="store_true",
                    help="seeded sampling (temperature 0.8, top_p 0.95, a seed per request) instead of greedy")
    ap.add_argument("--check", type=int, default=0, help="re-run this many completed requests alone")
    ap.add_argument("--fail-on-mismatch", action="store_true")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per request at most")
    ap.add_argument("--json", help="also write the summary here")
    ap.add_argument("--prompts-out", help="write the prompts sent, one a line (comma-separated ids), for kiln run")
    a = ap.parse_args()
    if not (1 <= a.prompt_min <= a.prompt_max and 1 <= a.out_min <= a.out_max and a.vocab > 1):
        ap.error("need 1 <= --prompt-min <= --prompt-max, 1 <= --out-min <= --out-max, --vocab > 1")
    if a.mode == "soak" and a.pid is None:
        ap.error("soak needs --pid (the server's process id)")

    def log(msg):
        print(f"loadgen: {msg}", file=sys.stderr, flush=True)

    # one socket per stream: 1,000 streams need more than the usual soft limit of 1,024 files
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 65536:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard == resource.RLIM_INFINITY else min(hard, 65536), hard))
    conn = Conn(a.url, a.api_key, a.model, a.timeout)
    wl = Workload(a)

    async def go():
        status, _ = await get(conn, "/health")
        if status != 200:
            raise SystemExit(f"loadgen: {a.url}/health is {status}, not 200")
        runs, everything = [], []
        if a.mode == "sweep":
            rng = random.Random(a.seed + 1)
            for rate in [float(x) for x in a.rates.split(",")]:
                res, wall = await run_poisson(conn, wl, rate, a.duration, rng)
                s = summarize(f"rate {rate:g}/s", res, wall)
                s["rate"] = rate
                runs.append(s)
                everything += res
                log(json.dumps(s))
        elif a.mode == "concurrent":
            res, wall = await run_concurrent(conn, wl, a.streams, a.requests or a.streams)
            runs.append(summarize(f"{a.streams} concurrent", res, wall))
            everything += res
            log(json.dumps(runs[-1]))
        elif a.mode == "ttft":
            res, t0 = [], time.perf_counter()
            for _ in range(a.requests or 10):
                r = wl.next()
                await stream_completion(conn, r)
                res.append(r)
            runs.append(summarize("ttft (one at a time)", res, time.perf_counter() - t0))
            everything += res
            log(json.dumps(runs[-1]))
        else:
            res, wall, trend = await run_soak(conn, wl, a.streams, a.seconds, a.pid, log)
            s = summarize(f"soak {a.streams} streams {a.seconds:g} s", res, wall)
            s["rss"] = trend
            runs.append(s)
            everything += res
        if a.prompts_out:
            with open(a.prompts_out, "w") as f:
                f.writelines(",".join(map(str, r.prompt)) + "\n" for r in everything)
        summary = {"mode": a.mode, "url": a.url, "model": a.model, "runs": runs,
                   "check": await check_alone(conn, everything, a.check, log)}
        return summary

    summary = asyncio.run(go())
    text = json.dumps(summary, indent=1)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    bad = any(r["errors"] or r["lost"] for r in summary["runs"])
    bad = bad or (a.fail_on_mismatch and summary["check"].get("mismatches"))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
