"""kserve — what the server tests share: starting and stopping `kiln serve`, raw HTTP, the oracle.

The tests (test_*.py in this folder, run by run.sh) drive a real `kiln serve` over loopback. This
module starts one (`Server`): `kiln serve DIR --port 0 ...` with its stderr in a file, the port read
from the one `kiln serve: listening on http://HOST:PORT` line, then GET /health polled until 200.
`Server.stop()` sends SIGTERM and returns the exit status, and fails on any sanitizer report in the
server's stderr (ASan, LeakSanitizer, UBSan: run.sh runs the same tests on the SAN build).

The oracle is `kilnc ref` (the fp32 reference interpreter the CPU backend wraps) on the same
checkpoint: `ref_ids` gives its greedy tokens for a prompt, `ref_dump` its logits or embedding.

Environment (set by run.sh): KILN, KILNC (the binaries), KILN_TEST_TMP (a scratch folder removed
afterwards), KILN_TEST_MODEL (examples/tinyfortune copied with a chat template added), KILN_SAN=1
for a sanitizer build (timeouts are longer there).
"""
import http.client
import json
import math
import os
import re
import signal
import struct
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KILN = os.environ["KILN"]
KILNC = os.environ["KILNC"]
TMP = os.environ["KILN_TEST_TMP"]
MODEL = os.environ["KILN_TEST_MODEL"]
BERT = os.path.join(ROOT, "tests/fixtures/bert")
SAN = os.environ.get("KILN_SAN") == "1"
SLOW = 4 if SAN else 1          # timeout multiplier under ASan+UBSan

SAN_REPORT = re.compile(r"ERROR: (Address|Leak)Sanitizer|runtime error:|SUMMARY: \w+Sanitizer")
LISTENING = re.compile(r"kiln serve: listening on http://([0-9.]+):([0-9]+)\n")


class Server:
    """One `kiln serve` process. `name` names its stderr file in TMP."""

    def __init__(self, name, model_dir, *args):
        self.name = name
        self.log_path = os.path.join(TMP, f"serve-{name}.stderr")
        self.log = open(self.log_path, "wb")
        self.argv = [KILN, "serve", model_dir, "--port", "0", *args]
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.log, cwd=ROOT)
        self.port = None
        deadline = time.time() + 30 * SLOW
        while self.port is None:
            m = LISTENING.search(self.stderr())
            if m:
                self.host, self.port = m.group(1), int(m.group(2))
            elif self.proc.poll() is not None or time.time() > deadline:
                self.proc.kill()
                raise AssertionError(f"{' '.join(self.argv)}: no 'listening on' line "
                                     f"(exit {self.proc.poll()}); stderr:\n{self.stderr()}")
            else:
                time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"
        while True:
            try:
                status, _, _ = request(self, "GET", "/health", timeout=5)
                if status == 200:
                    break
                assert status == 503, f"/health before ready: expected 503 or 200, got {status}"
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.proc.kill()
                raise AssertionError(f"{self.name}: /health never 200; stderr:\n{self.stderr()}")
            time.sleep(0.05)

    def stderr(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self, expect_rc=0):
        """SIGTERM, wait, and check the exit status and that no sanitizer reported anything."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=60 * SLOW)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name}: still running {60 * SLOW} s after SIGTERM")
        self.log.close()
        err = self.stderr()
        assert not SAN_REPORT.search(err), f"{self.name}: sanitizer report in stderr:\n{err}"
        assert rc == expect_rc, f"{self.name}: exit status {rc} after SIGTERM, expected {expect_rc}:\n{err}"
        return err


def request(srv, method, path, body=None, headers=None, timeout=60):
    """One HTTP request on a fresh connection: (status, headers dict (lower-case keys), body bytes).
    A dict or list body is sent as JSON."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout * SLOW)
    try:
        h = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def post_json(srv, path, body, headers=None, timeout=60):
    """POST a JSON body; (status, parsed JSON response)."""
    status, _, data = request(srv, "POST", path, body, headers, timeout)
    return status, json.loads(data)


def sse_events(data):
    """Splits an SSE body into its `data: ` payloads, checking the framing on the way: every event
    is exactly `data: PAYLOAD\\n\\n` (or an SSE comment, `: keep-alive\\n\\n`, which the server
    sends while a request waits) and the last is `data: [DONE]`."""
    text = data.decode("utf-8")
    assert text.endswith("data: [DONE]\n\n"), f"stream does not end with 'data: [DONE]\\n\\n': {text[-200:]!r}"
    events = text.split("\n\n")
    assert events[-1] == "", repr(text[-200:])
    out = []
    for ev in events[:-1]:
        if ev.startswith(":") and "\n" not in ev:
            continue
        assert ev.startswith("data: ") and "\n" not in ev, f"bad SSE event {ev!r}"
        out.append(ev[len("data: "):])
    assert out[-1] == "[DONE]" and "[DONE]" not in out[:-1]
    return [json.loads(p) for p in out[:-1]]


def metrics(srv, headers=None):
    """GET /metrics parsed into {sample name with labels: value}, and the text."""
    status, h, data = request(srv, "GET", "/metrics", headers=headers)
    assert status == 200, f"/metrics: {status} {data[:300]!r}"
    text = data.decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples, text


def ref_ids(model_dir, ids, n):
    """kilnc ref's n greedy tokens after the prompt ids (exactly n: it does not stop at eos)."""
    out = subprocess.run([KILNC, "ref", model_dir, "--ids", ",".join(map(str, ids)), "--max-new", str(n)],
                         capture_output=True, text=True, timeout=120 * SLOW, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return [int(t) for t in out.stdout.splitlines()[0].split(",")]


def ref_chat_ids(model_dir, message, n):
    out = subprocess.run([KILNC, "ref", model_dir, "--chat", message, "--max-new", str(n)],
                         capture_output=True, text=True, timeout=120 * SLOW, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return [int(t) for t in out.stdout.splitlines()[0].split(",")]


def ref_dump(model_dir, ids, *extra):
    """The tensors of `kilnc ref --dump` for a prompt: {name: (shape, flat list of floats)}."""
    path = os.path.join(TMP, "ref-dump.safetensors")
    out = subprocess.run([KILNC, "ref", model_dir, "--ids", ",".join(map(str, ids)), "--max-new", "1",
                          "--dump", path, *extra], capture_output=True, text=True, timeout=120 * SLOW, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return read_safetensors(path)


def read_safetensors(path):
    """F32 and I64 tensors of a safetensors file, without numpy: {name: (shape, flat list)}."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        raw = blob[8 + n + a:8 + n + b]
        fmt = {"F32": "f", "I64": "q"}[t["dtype"]]
        out[name] = (t["shape"], list(struct.unpack(f"<{len(raw) // struct.calcsize(fmt)}{fmt}", raw)))
    return out


def log_softmax_row(row):
    m = max(row)
    lse = m + math.log(sum(math.exp(x - m) for x in row))
    return [x - lse for x in row]
