"""test_load — the bounded load test of issue 10: many concurrent clients, some rude, nothing mixed.

CLIENTS threads start together against one server on the CPU backend. The model is the tiny llama
fixture (tests/fixtures/llama: 2 layers, hidden 96, vocab 512, eos 2), not the example model: what
is under test is the server and the scheduler, and at ~1/100 of the example model's cost per token
the same 2 cores run every client for many more steps (so streams interleave and disconnects land
mid-stream), under ASan too. Clients:
  - most stream a short completion (one of KINDS: greedy or seeded) and must get, through the
    SSE stream, exactly the token ids that prompt gets when it runs alone (measured first, one
    request at a time, on the same server), a finish_reason and `data: [DONE]`;
  - DISCONNECT of them ask for a long completion (LONG tokens) and hang up after the first event:
    the server must cancel them, which the token count in /metrics shows (at most CANCEL_SLACK
    tokens each after the hang-up, not LONG);
  - GARBAGE of them send bad JSON, a truncated body, binary junk, a huge Content-Length, a
    non-HTTP line, or half a header, and either get the right error status or are dropped.
Then the server must be idle (/metrics: 0 running, 0 KV blocks used) within a few seconds, still
healthy and still correct, and exit 0 on SIGTERM with no sanitizer report (LeakSanitizer included).
The KV cache holds fewer blocks than the running requests need, so the scheduler preempts some
(hundreds of times) and recomputes them: their tokens must still equal the request alone.
About 3 s on 2 cores with the plain build, 35 s under ASan+UBSan.
"""
import http.client
import json
import os
import random
import socket
import threading
import time
import unittest

import kserve

CLIENTS = 200
DISCONNECT = 20
GARBAGE = 20
MAX_BATCH = 32
KV_BLOCKS = 48        # of 32 tokens: fewer than MAX_BATCH running requests need, so some are preempted
LONG = 460            # a disconnecting client's max_tokens (prompt + LONG <= the max-seq-len, 512)
CANCEL_SLACK = 64     # tokens a disconnected request may still get before the server notices

MODEL = os.path.join(kserve.ROOT, "tests/fixtures/llama")
NAME = "llama"

rng = random.Random(10)
# short prompts (token ids below the fixture's vocabulary of 512)
PROMPTS = [[rng.randrange(3, 512) for _ in range(rng.randrange(1, 40))] for _ in range(16)]
# (prompt index, max_tokens, ignore_eos, seed) per normal client: a few distinct requests, many times
# each; without ignore_eos some stop early at the eos id; with a seed, sampled (temperature 0.9: one
# RNG stream per request, so alone or in any batch, preempted or not, the same tokens)
KINDS = [(i, 16 + 8 * i, i % 4 != 0, i if i % 3 == 0 else None) for i in range(len(PROMPTS))]


def body(kind, stream=True):
    p, n, ignore, seed = kind
    b = {"model": NAME, "prompt": PROMPTS[p], "max_tokens": n, "temperature": 0, "ignore_eos": ignore,
         "stream": stream, "return_token_ids": True}
    if seed is not None:
        b.update(temperature=0.9, seed=seed)
    return b


def stream_ids(srv, req, hang_up_after=None):
    """POST a streaming completion and read its SSE events: (token ids, finish reasons, saw [DONE]).
    With hang_up_after=k: close the connection after k events."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120 * kserve.SLOW)
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(req), headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 200, f"status {r.status}: {r.read()[:300]!r}"
        ids, finishes, done, events = [], [], False, 0
        for _ in range(100000):
            line = r.readline()
            if not line:
                break
            if line == b"\n" or line.startswith(b":"):     # an SSE comment (keep-alive)
                continue
            assert line.startswith(b"data: ") and line.endswith(b"\n"), line
            payload = line[6:-1]
            if payload == b"[DONE]":
                done = True
                assert r.readline() == b"\n"
                break
            ev = json.loads(payload)
            for c in ev["choices"]:
                ids += c.get("token_ids") or []
                if c.get("finish_reason"):
                    finishes.append(c["finish_reason"])
            events += 1
            if hang_up_after is not None and events >= hang_up_after:
                conn.sock.shutdown(socket.SHUT_RDWR)
                return ids, finishes, False
        return ids, finishes, done
    finally:
        conn.close()


def raw(srv, data, close_write=True, want=None):
    """Sends raw bytes; returns the status of the reply, or None when the server just closed."""
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=30 * kserve.SLOW)
    try:
        s.sendall(data)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        if want is None and not close_write:
            return None              # hang up with the request unfinished
        reply = b""
        for _ in range(1000):
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
            if b"\r\n\r\n" in reply:
                break
        if not reply.startswith(b"HTTP/1."):
            return None
        return int(reply.split(b" ", 2)[1])
    except (ConnectionResetError, BrokenPipeError):
        return None
    finally:
        s.close()


def post_head(length, extra=""):
    return (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n").encode()


GOOD = json.dumps(body(KINDS[0], stream=False)).encode()
BAD_JSON = b'{"model": "llama", "prompt": [1,2'
# (name, bytes, close the write side, the status that must come back, or None: any or none)
GARBAGE_KINDS = [
    ("bad JSON", post_head(len(BAD_JSON)) + BAD_JSON, True, 400),
    ("truncated body", post_head(len(GOOD)) + GOOD[:len(GOOD) // 2], False, None),
    ("binary junk", post_head(64) + bytes(rng.randrange(256) for _ in range(64)), True, 400),
    ("huge Content-Length", post_head(10 ** 15) + b'{"model": ', True, 413),
    ("not HTTP", bytes(rng.randrange(256) for _ in range(300)) + b"\r\n\r\n", True, None),
    ("half a header", b"POST /v1/completions HTTP/1.1\r\nContent-Le", False, None),
    ("JSON of the wrong shape", post_head(len(b'["a", {"b": null}]')) + b'["a", {"b": null}]', True, 400),
]


class Load(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = kserve.Server("load", MODEL, "--max-batch", str(MAX_BATCH), "--max-tokens", "256",
                                "--max-seq-len", "512", "--kv-blocks", str(KV_BLOCKS))

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    def test_load(self):
        srv = self.srv
        # each kind alone, one at a time: the expected tokens
        alone = {}
        for kind in KINDS:
            status, r = kserve.post_json(srv, "/v1/completions", body(kind, stream=False))
            self.assertEqual(status, 200, r)
            alone[kind] = r["choices"][0]["token_ids"]
            p, n, ignore, seed = kind
            if ignore:
                self.assertEqual(len(alone[kind]), n, kind)
            else:
                self.assertTrue(1 <= len(alone[kind]) <= n, kind)

        roles = (["disconnect"] * DISCONNECT + ["garbage"] * GARBAGE
                 + ["normal"] * (CLIENTS - DISCONNECT - GARBAGE))
        rng.shuffle(roles)
        results = [None] * CLIENTS
        start = threading.Barrier(CLIENTS + 1)

        def client(i):
            start.wait()
            try:
                role = roles[i]
                if role == "normal":
                    kind = KINDS[i % len(KINDS)]
                    results[i] = ("normal", kind, stream_ids(srv, body(kind)))
                elif role == "disconnect":
                    req = {**body(KINDS[i % len(KINDS)]), "max_tokens": LONG, "ignore_eos": True}
                    results[i] = ("disconnect", None, stream_ids(srv, req, hang_up_after=1))
                else:
                    name, data, close_write, want = GARBAGE_KINDS[i % len(GARBAGE_KINDS)]
                    results[i] = ("garbage", (name, want), raw(srv, data, close_write, want))
            except Exception as e:      # reported below, with the client's role
                results[i] = ("error", roles[i], repr(e))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        t0 = time.time()
        start.wait()
        for t in threads:
            t.join(timeout=300 * kserve.SLOW)
            self.assertFalse(t.is_alive(), "a client is still waiting")
        elapsed = time.time() - t0

        errors = [r for r in results if r[0] == "error"]
        self.assertEqual(errors, [], "clients failed")
        normal = [r for r in results if r[0] == "normal"]
        self.assertEqual(len(normal), CLIENTS - DISCONNECT - GARBAGE)
        for _, kind, (ids, finishes, done) in normal:
            self.assertTrue(done, f"{kind}: no [DONE]")
            self.assertEqual(len(finishes), 1, f"{kind}: finish reasons {finishes}")
            self.assertEqual(ids, alone[kind], f"{kind}: tokens under load differ from the request alone")
        for _, (name, want), status in (r for r in results if r[0] == "garbage"):
            if want is not None:
                self.assertEqual(status, want, name)

        # idle again: the disconnected requests were cancelled, every KV block is back
        deadline = time.time() + 10 * kserve.SLOW
        while True:
            samples, text = kserve.metrics(srv)
            running = samples["kiln_num_requests_running"]
            kv_used = samples["kiln_kv_blocks_used"]
            if running == 0 and kv_used == 0:
                break
            self.assertLess(time.time(), deadline,
                            f"not idle after the load: running {running}, KV blocks used {kv_used}\n{text}")
            time.sleep(0.1)
        self.assertEqual(samples["kiln_num_requests_waiting"], 0)
        self.assertGreater(samples["kiln_preemptions_total"], 0, f"KV blocks for fewer than {MAX_BATCH} requests")
        # the disconnected requests were cancelled, not run to their LONG tokens
        normal_tokens = sum(len(alone[k]) for k in KINDS) + sum(len(r[2][0]) for r in normal)
        self.assertLessEqual(samples["kiln_generation_tokens_total"], normal_tokens + DISCONNECT * CANCEL_SLACK,
                             f"{DISCONNECT} clients hung up: their requests must be cancelled")
        status, _, _ = kserve.request(srv, "GET", "/health")
        self.assertEqual(status, 200)
        kind = KINDS[1]
        self.assertEqual(stream_ids(srv, body(kind))[0], alone[kind], "correct after the load")
        print(f"\n  load: {CLIENTS} clients in {elapsed:.1f} s, {sum(len(r[2][0]) for r in normal)} tokens "
              f"streamed; the server generated {samples['kiln_generation_tokens_total']:.0f} tokens in "
              f"{samples['kiln_steps_total']:.0f} steps, {samples['kiln_preemptions_total']:.0f} preemptions",
              flush=True)


if __name__ == "__main__":
    unittest.main()
