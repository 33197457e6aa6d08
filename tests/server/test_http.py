"""test_http — `kiln serve` at the HTTP level, with curl: what the openai client hides.

SSE framing byte for byte (`data: {...}\\n\\n` events, `data: [DONE]\\n\\n` last, the event-stream
content type), per-chunk token ids adding up to the non-streamed ones, the status and the OpenAI
error object of 400 (bad JSON), 404 (route), 405 (method), 413 (body over --max-body), /health,
and /metrics in Prometheus text with every family issue 10 asks for. One server (the example model,
--max-body 64 KiB), which must exit 0 on SIGTERM with no sanitizer report. A second one, with room
for one running and one waiting request, for 503 + Retry-After when the queue is full and for
SIGTERM's grace: a stream running when the signal comes still ends with all its tokens.
A third (Hostile, the tiny llama fixture behind --api-key) takes raw requests: Authorization forms,
HEAD, pipelined and chunked bodies, Expect: 100-continue, a URL that is not UTF-8, and SIGTERM among
idle, slowloris and never-reading clients.
"""
import concurrent.futures
import http.client
import json
import os
import signal
import socket
import subprocess
import time
import unittest

import kserve

NAME = "tinyfortune"
srv = None


def setUpModule():
    global srv
    srv = kserve.Server("http", kserve.MODEL, "--model-name", NAME, "--max-body", "65536")


def tearDownModule():
    if srv is not None:
        srv.stop()


def curl(*args, data=None):
    """curl -s with the status code appended on its own last line: (status, body bytes)."""
    cmd = ["curl", "-sS", "--max-time", str(60 * kserve.SLOW), "-w", "\n%{http_code}", *args]
    if data is not None:
        path = os.path.join(kserve.TMP, "curl-body")
        with open(path, "wb") as f:
            f.write(data if isinstance(data, bytes) else json.dumps(data).encode())
        cmd += ["-H", "Content-Type: application/json", "--data-binary", "@" + path]
    out = subprocess.run(cmd, capture_output=True, timeout=90 * kserve.SLOW)
    assert out.returncode == 0, out.stderr.decode()
    body, _, code = out.stdout.rpartition(b"\n")
    return int(code), body


def assert_error(tc, status, body, want_status):
    tc.assertEqual(status, want_status, body[:500])
    err = json.loads(body)["error"]
    tc.assertIsInstance(err["message"], str)
    tc.assertTrue(err["message"], "the message says what is wrong")
    for k in ("type", "param", "code"):
        tc.assertIn(k, err)
    return err


class Http(unittest.TestCase):
    def test_sse_framing_and_chunk_ids(self):
        req = {"model": NAME, "prompt": "A fool and", "max_tokens": 8, "temperature": 0,
               "ignore_eos": True, "return_token_ids": True}
        status, plain = curl(srv.url + "/v1/completions", data=req)
        self.assertEqual(status, 200, plain)
        plain = json.loads(plain)
        status, raw = curl("-N", "-D", os.path.join(kserve.TMP, "sse-headers"),
                           srv.url + "/v1/completions", data={**req, "stream": True})
        self.assertEqual(status, 200, raw)
        with open(os.path.join(kserve.TMP, "sse-headers")) as f:
            self.assertIn("content-type: text/event-stream", f.read().lower())
        events = kserve.sse_events(raw)
        ids = [t for e in events for c in e.get("choices", []) for t in c.get("token_ids") or []]
        self.assertEqual(ids, plain["choices"][0]["token_ids"])
        text = "".join(c.get("text") or "" for e in events for c in e.get("choices", []))
        self.assertEqual(text, plain["choices"][0]["text"])
        finishes = [c["finish_reason"] for e in events for c in e.get("choices", []) if c.get("finish_reason")]
        self.assertEqual(finishes, ["length"])
        self.assertTrue(all(e["object"] == "text_completion" for e in events))
        # chat: the same framing
        status, raw = curl("-N", srv.url + "/v1/chat/completions",
                           data={"model": NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
                                 "stream": True, "ignore_eos": True})
        self.assertEqual(status, 200, raw)
        events = kserve.sse_events(raw)
        self.assertEqual(events[0]["choices"][0]["delta"].get("role"), "assistant")

    def test_errors(self):
        status, body = curl(srv.url + "/v1/completions", data=b'{"model": "tinyfortune", "prompt": ')
        assert_error(self, status, body, 400)
        status, body = curl(srv.url + "/v1/completions", data=b"\xff\xfe\x00garbage")
        assert_error(self, status, body, 400)
        status, body = curl(srv.url + "/v1/completions", data=[1, 2, 3])
        assert_error(self, status, body, 400)
        status, body = curl(srv.url + "/v1/nothing-here")
        assert_error(self, status, body, 404)
        status, body = curl(srv.url + "/v1/completions")                       # GET
        assert_error(self, status, body, 405)
        status, body = curl("-X", "DELETE", srv.url + "/v1/models")
        assert_error(self, status, body, 405)
        big = {"model": NAME, "prompt": "x" * 70000, "max_tokens": 1}
        status, body = curl(srv.url + "/v1/completions", data=big)
        assert_error(self, status, body, 413)
        # a request just under the limit is served
        status, body = curl(srv.url + "/v1/completions",
                            data={"model": NAME, "prompt": "A fool and", "max_tokens": 1, "pad": "y" * 60000})
        self.assertEqual(status, 200, body[:300])

    def test_health_and_metrics(self):
        status, body = curl(srv.url + "/health")
        self.assertEqual(status, 200, body)
        status, _ = curl(srv.url + "/v1/completions",
                         data={"model": NAME, "prompt": "A fool and", "max_tokens": 3, "ignore_eos": True})
        self.assertEqual(status, 200)
        status, body = curl(srv.url + "/metrics")
        self.assertEqual(status, 200)
        text = body.decode()
        types = {}
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split()
                types[name] = kind
        # issue 10's families
        want = {"kiln_requests_total": "counter", "kiln_prompt_tokens_total": "counter",
                "kiln_generation_tokens_total": "counter", "kiln_num_requests_running": "gauge",
                "kiln_num_requests_waiting": "gauge", "kiln_kv_blocks_used": "gauge",
                "kiln_kv_blocks_total": "gauge", "kiln_preemptions_total": "counter",
                "kiln_time_to_first_token_seconds": "histogram", "kiln_inter_token_latency_seconds": "histogram",
                "kiln_request_latency_seconds": "histogram"}
        for name, kind in want.items():
            self.assertEqual(types.get(name), kind, f"/metrics: no {kind} {name}:\n{text}")
        self.assertRegex(text, r'status="200"', "requests are counted by status")
        samples, _ = kserve.metrics(srv)
        self.assertGreaterEqual(samples["kiln_generation_tokens_total"], 3)
        self.assertGreaterEqual(samples["kiln_prompt_tokens_total"], 4)
        self.assertGreaterEqual(samples['kiln_time_to_first_token_seconds_bucket{le="+Inf"}'], 1)
        self.assertGreater(samples["kiln_kv_blocks_total"], 0)
        self.assertEqual(samples["kiln_num_requests_running"], 0)

class Overload(unittest.TestCase):
    def test_queue_full_and_grace(self):
        small = kserve.Server("small", kserve.MODEL, "--model-name", NAME, "--max-batch", "1",
                              "--max-waiting", "1")
        try:
            req = {"model": NAME, "prompt": "A fool and", "max_tokens": 16, "ignore_eos": True}
            with concurrent.futures.ThreadPoolExecutor(6) as ex:
                replies = list(ex.map(lambda _: kserve.request(small, "POST", "/v1/completions", req), range(6)))
            statuses = sorted(r[0] for r in replies)
            self.assertIn(200, statuses)
            self.assertIn(503, statuses, "one running and one waiting at most: the rest are refused")
            self.assertEqual(set(statuses), {200, 503}, statuses)
            for status, headers, data in replies:
                if status == 503:
                    self.assertIn("retry-after", headers)
                    self.assertTrue(json.loads(data)["error"]["message"])
            # SIGTERM while a stream runs: it still gets every token, then the server exits 0
            conn = http.client.HTTPConnection("127.0.0.1", small.port, timeout=60 * kserve.SLOW)
            conn.request("POST", "/v1/completions", body=json.dumps({**req, "max_tokens": 24, "stream": True,
                                                                     "return_token_ids": True}),
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            self.assertEqual(r.status, 200)
            first = r.readline()
            self.assertTrue(first.startswith(b"data: "), first)
            small.proc.send_signal(signal.SIGTERM)
            rest = first + r.read()
            conn.close()
            events = kserve.sse_events(rest)
            ids = [t for e in events for c in e["choices"] for t in c.get("token_ids") or []]
            self.assertEqual(len(ids), 24, "the running request finished within the grace period")
            deadline = time.time() + 10 * kserve.SLOW
            while small.proc.poll() is None and time.time() < deadline:
                time.sleep(0.05)
            with self.assertRaises(OSError, msg="no new connections after SIGTERM"):
                kserve.request(small, "GET", "/health", timeout=5)
        finally:
            small.stop()


class Hostile(unittest.TestCase):
    """What unusual clients send: raw requests over a socket to a server behind --api-key on the
    tiny llama fixture (token-id prompts)."""

    @classmethod
    def setUpClass(cls):
        cls.srv = kserve.Server("hostile", os.path.join(kserve.ROOT, "tests/fixtures/llama"),
                                "--api-key", "sekrit")

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    def raw(self, data, timeout=10, half_close=True):
        """Sends bytes, half-closes (unless told not to: a POST whose answer takes over a second
        is cancelled as abandoned), and returns everything the server sends until it closes."""
        with socket.create_connection(("127.0.0.1", self.srv.port), timeout=timeout * kserve.SLOW) as s:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
            out = b""
            while True:
                d = s.recv(65536)
                if not d:
                    return out
                out += d

    def test_authorization_forms(self):
        # the scheme is case-insensitive and whitespace around the token is not part of it
        for auth in ("Bearer sekrit", "bearer sekrit", "BEARER  sekrit", "Bearer\tsekrit", "Bearer sekrit "):
            raw = self.raw(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth.encode() + b"\r\n\r\n")
            self.assertTrue(raw.startswith(b"HTTP/1.1 200 "), (auth, raw[:200]))
        for auth in ("Basic c2Vrcml0", "Bearer sekri", "Bearer sekritt", "Bearer", "Bearersekrit", "sekrit"):
            status, headers, _ = kserve.request(self.srv, "GET", "/v1/models", headers={"Authorization": auth})
            self.assertEqual(status, 401, auth)
            self.assertEqual(headers.get("www-authenticate"), "Bearer")

    def test_framing(self):
        # three pipelined POSTs on one keep-alive connection, Expect: 100-continue, a chunked
        # body, a query string, HTTP/1.0
        body = json.dumps({"prompt": [1, 2, 3], "max_tokens": 2}).encode()
        post = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sekrit\r\n"
                b"Content-Type: application/json\r\n")
        one = post + b"Content-Length: %d\r\n\r\n" % len(body) + body
        raw = self.raw(one * 2 + one.replace(b"Host: x", b"Host: x\r\nConnection: close"), half_close=False)
        self.assertEqual(raw.count(b"HTTP/1.1 200 OK\r\n"), 3, raw[:500])
        self.assertEqual(raw.count(b'"completion_tokens":2'), 3, raw[:500])
        post += b"Connection: close\r\n"
        raw = self.raw(post + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
                       half_close=False)
        self.assertTrue(raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"), raw[:300])
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7]) for i in range(0, len(body), 7))
        raw = self.raw(post + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n", half_close=False)
        self.assertTrue(raw.startswith(b"HTTP/1.1 200 OK\r\n"), raw[:300])
        raw = self.raw(post + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
        self.assertTrue(raw.startswith(b"HTTP/1.1 400 "), raw[:300])
        # both framings (a request smuggled past a proxy that reads Content-Length), and a coding
        # MHD does not know (it used to wait for the connection's timeout): refused, connection closed
        smuggled = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
        raw = self.raw(post + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % (len(chunks) + 5)
                       + chunks + b"0\r\n\r\n" + smuggled)
        self.assertTrue(raw.startswith(b"HTTP/1.1 400 "), raw[:300])
        self.assertEqual(raw.count(b"HTTP/1.1 "), 1, raw)
        for te in (b"gzip, chunked", b"identity"):
            raw = self.raw(post + b"Transfer-Encoding: " + te + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
                           timeout=5)
            self.assertTrue(raw.startswith(b"HTTP/1.1 501 "), raw[:300])
            self.assertIn(b"Transfer-Encoding: " + te + b" is not supported", raw)
        raw = self.raw(b"GET /v1/models?x=1&y HTTP/1.0\r\nAuthorization: Bearer sekrit\r\n\r\n")
        self.assertTrue(raw.startswith(b"HTTP/1.1 200 OK\r\n") and b'"object":"list"' in raw, raw[:300])

    def test_url_not_utf8(self):
        # the 404 quotes the URL, its bad bytes as U+FFFD (the message used to be lost whole)
        raw = self.raw(b"GET /v1/%FFx\xfe HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(raw.startswith(b"HTTP/1.1 404 "), raw[:200])
        err = json.loads(raw.split(b"\r\n\r\n", 1)[1])["error"]
        self.assertTrue(err["message"].startswith("no route GET /v1/\ufffdx\ufffd (routes: "), err)

    def test_head_and_methods(self):
        raw = self.raw(b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(raw.startswith(b"HTTP/1.1 200 "), raw[:200])
        self.assertTrue(raw.endswith(b"\r\n\r\n"), "a HEAD answer has no body: " + repr(raw[-100:]))
        status, headers, _ = kserve.request(self.srv, "OPTIONS", "/health")
        self.assertEqual((status, headers.get("allow")), (405, "GET, HEAD"))
        status, headers, _ = kserve.request(self.srv, "HEAD", "/v1/completions", headers={"Authorization": "Bearer sekrit"})
        self.assertEqual((status, headers.get("allow")), (405, "POST"))

    def test_sigterm_among_hostile_clients(self):
        # idle connections, bodies shorter than their Content-Length (slowloris), streams whose
        # client never reads, streams dropped at once: SIGTERM still exits 0 within --grace
        term = kserve.Server("hostile-term", os.path.join(kserve.ROOT, "tests/fixtures/llama"), "--grace", "1")
        socks = []
        try:
            stream = json.dumps({"prompt": [1, 2, 3], "max_tokens": 500, "ignore_eos": True, "stream": True}).encode()
            for i in range(120):
                s = socket.create_connection(("127.0.0.1", term.port), timeout=10 * kserve.SLOW)
                socks.append(s)
                if i % 3 == 1:
                    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"pro")
                elif i % 3 == 2:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
                    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(stream) + stream)
                    if i % 2:
                        s.close()
            # the others are still served (the engine is busy with the streams: /health is not)
            status, _, data = kserve.request(term, "GET", "/health")
            self.assertEqual(status, 200, data[:300])
            self.assertGreater(kserve.metrics(term)[0]["kiln_num_requests_running"], 0, "streams still running")
            t = time.time()
            term.proc.send_signal(signal.SIGTERM)
            term.proc.wait(timeout=60 * kserve.SLOW)
            self.assertLess(time.time() - t, 1 + 5 * kserve.SLOW, "exit within --grace 1 and the closing")
        finally:
            for s in socks:
                s.close()
            term.stop()

    def test_second_sigterm(self):
        # a second signal cuts --grace short, and the log says so (not that the grace ran out)
        term = kserve.Server("second-term", kserve.MODEL, "--grace", "60")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", term.port, timeout=60 * kserve.SLOW)
            conn.request("POST", "/v1/completions", headers={"Content-Type": "application/json"},
                         body=json.dumps({"prompt": "A fool", "max_tokens": 500, "ignore_eos": True, "stream": True}))
            r = conn.getresponse()
            self.assertTrue(r.readline().startswith(b"data: "))
            t = time.time()
            term.proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            term.proc.send_signal(signal.SIGTERM)
            rest = r.read()
            conn.close()
            term.proc.wait(timeout=60 * kserve.SLOW)
            self.assertLess(time.time() - t, 10 * kserve.SLOW)
            self.assertIn(b'"finish_reason":"abort"', rest)
        finally:
            err = term.stop()
        self.assertIn("second signal: cancelling the running requests", err)
        self.assertNotIn("after 60 s", err)


if __name__ == "__main__":
    unittest.main()
