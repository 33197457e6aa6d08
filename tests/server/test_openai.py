"""test_openai — `kiln serve` through the official `openai` Python client.

Two servers on the CPU backend: the example model (examples/tinyfortune, copied by run.sh with a
chat template added) behind --api-key, and the BERT fixture (no tokenizer: token-id inputs only)
without one. Every generated sequence is checked against the oracle, `kilnc ref` on the same
checkpoint (greedy, fp32): completions from a string, a list of strings and token ids, chat;
sampling is checked for what must hold (a seed reproduces, top_p -> 0 and top_k = 1 are greedy);
stop strings against the greedy text; logprobs against the reference logits; embeddings against
`kilnc ref --dump` within 1e-4. Errors: the status and the client's exception class.
Both servers must exit 0 on SIGTERM with no sanitizer report.
"""
import base64
import concurrent.futures
import struct
import unittest

import openai

import kserve

KEY = "test-key-123"
NAME = "tinyfortune"
PROMPT = "A fool and"
LIMIT = 512            # tinyfortune's max_position_embeddings: the CPU backend's default max-seq-len

srv = bert = client = bclient = None


def setUpModule():
    global srv, bert, client, bclient
    srv = kserve.Server("openai", kserve.MODEL, "--model-name", NAME, "--api-key", KEY)
    bert = kserve.Server("bert", kserve.BERT)
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0, timeout=120 * kserve.SLOW)
    bclient = openai.OpenAI(base_url=bert.url + "/v1", api_key="unused", max_retries=0,
                            timeout=120 * kserve.SLOW)


def tearDownModule():
    errors = []
    for s in (srv, bert):
        if s is not None:
            try:
                s.stop()
            except AssertionError as e:
                errors.append(str(e))
    assert not errors, "\n".join(errors)


def complete(**kw):
    """A completion with token ids returned (and greedy, unless kw says otherwise)."""
    extra = {"return_token_ids": True, **kw.pop("extra_body", {})}
    kw.setdefault("temperature", 0)
    return client.completions.create(model=NAME, extra_body=extra, **kw)


def extra(obj, field):
    """A kiln extension field of a response object (pydantic keeps unknown fields as extras)."""
    v = getattr(obj, field, None)
    if v is None and obj.model_extra:
        v = obj.model_extra.get(field)
    assert v is not None, f"no '{field}' in {obj}"
    return v


class Completions(unittest.TestCase):
    def test_string_prompt_equals_reference(self):
        r = complete(prompt=PROMPT, max_tokens=12, extra_body={"ignore_eos": True})
        prompt_ids = extra(r, "prompt_token_ids")
        c = r.choices[0]
        ids = extra(c, "token_ids")
        self.assertEqual(ids, kserve.ref_ids(kserve.MODEL, prompt_ids, 12))
        self.assertEqual(prompt_ids[0], 0, "tinyfortune's tokenizer adds <|endoftext|> (id 0) first")
        self.assertEqual(c.finish_reason, "length")
        self.assertEqual(r.usage.completion_tokens, 12)
        self.assertEqual(r.usage.prompt_tokens, len(prompt_ids))
        self.assertEqual(r.usage.total_tokens, 12 + len(prompt_ids))
        self.assertEqual(r.model, NAME)
        self.assertEqual(r.object, "text_completion")
        self.assertTrue(c.text.startswith(" his honey are soon parted."), c.text)

    def test_eos_stops_with_finish_stop(self):
        # greedy "A fool and" ends its fortune with <|endoftext|> (id 0) after 9 tokens
        r = complete(prompt=PROMPT, max_tokens=12)
        prompt_ids = extra(r, "prompt_token_ids")
        ref = kserve.ref_ids(kserve.MODEL, prompt_ids, 12)
        eos_at = ref.index(0)
        ids = extra(r.choices[0], "token_ids")
        self.assertEqual(r.choices[0].finish_reason, "stop")
        self.assertIn(ids, (ref[:eos_at], ref[:eos_at + 1]), "greedy tokens up to the eos")
        self.assertEqual(r.usage.completion_tokens, len(ids))
        self.assertNotIn("<|endoftext|>", r.choices[0].text)

    def test_list_of_strings_and_token_ids(self):
        prompts = [PROMPT, "The early bird", "Never"]
        r = complete(prompt=prompts, max_tokens=4, extra_body={"ignore_eos": True})
        self.assertEqual(len(r.choices), 3)
        for i, c in enumerate(sorted(r.choices, key=lambda c: c.index)):
            self.assertEqual(c.index, i)
            alone = complete(prompt=prompts[i], max_tokens=4, extra_body={"ignore_eos": True})
            self.assertEqual(extra(c, "token_ids"), extra(alone.choices[0], "token_ids"), prompts[i])
            self.assertEqual(c.text, alone.choices[0].text)
            # the same prompt as token ids
            by_ids = complete(prompt=extra(alone, "prompt_token_ids"), max_tokens=4,
                              extra_body={"ignore_eos": True})
            self.assertEqual(extra(by_ids.choices[0], "token_ids"), extra(c, "token_ids"))
        # a list of token-id prompts
        r2 = complete(prompt=[[0, 33, 1332, 303], [0, 33]], max_tokens=4, extra_body={"ignore_eos": True})
        got = {c.index: extra(c, "token_ids") for c in r2.choices}
        self.assertEqual(got[0], kserve.ref_ids(kserve.MODEL, [0, 33, 1332, 303], 4))
        self.assertEqual(got[1], kserve.ref_ids(kserve.MODEL, [0, 33], 4))
        self.assertEqual(r2.usage.completion_tokens, 8)

    def test_seed_reproduces(self):
        kw = dict(prompt=PROMPT, max_tokens=8, temperature=1.0, seed=1234, extra_body={"ignore_eos": True})
        a = extra(complete(**kw).choices[0], "token_ids")
        b = extra(complete(**kw).choices[0], "token_ids")
        self.assertEqual(a, b, "the same seed gives the same tokens")
        greedy = extra(complete(prompt=PROMPT, max_tokens=8, extra_body={"ignore_eos": True}).choices[0],
                       "token_ids")
        others = [extra(complete(**{**kw, "seed": s}).choices[0], "token_ids") for s in (1, 2, 3)]
        self.assertTrue(any(o != a for o in others) and any(o != greedy for o in others + [a]),
                        "temperature 1 samples: different seeds give different tokens")
        # the seeded request again, among four other requests running at the same time
        with concurrent.futures.ThreadPoolExecutor(5) as ex:
            futs = [ex.submit(complete, **kw)] + [
                ex.submit(complete, prompt=p, max_tokens=8, temperature=0.8, seed=7)
                for p in ("The", "Never give", "A", "Love")]
            self.assertEqual(extra(futs[0].result().choices[0], "token_ids"), a, "seeded, in a batch")

    def test_top_p_and_top_k_limits_are_greedy(self):
        greedy = extra(complete(prompt=PROMPT, max_tokens=10, extra_body={"ignore_eos": True}).choices[0],
                       "token_ids")
        p = complete(prompt=PROMPT, max_tokens=10, temperature=1.5, top_p=1e-6, seed=5,
                     extra_body={"ignore_eos": True})
        self.assertEqual(extra(p.choices[0], "token_ids"), greedy, "top_p -> 0 keeps only the best token")
        k = complete(prompt=PROMPT, max_tokens=10, temperature=1.5, seed=5,
                     extra_body={"ignore_eos": True, "top_k": 1})
        self.assertEqual(extra(k.choices[0], "token_ids"), greedy, "top_k = 1 keeps only the best token")

    def test_stop_string_spanning_tokens(self):
        n = 16
        full = complete(prompt="Never", max_tokens=n, extra_body={"ignore_eos": True}).choices[0]
        # the text of each token, from the stream (ASCII here: one delta per token)
        pieces = []
        for ch in client.completions.create(model=NAME, prompt="Never", max_tokens=n, temperature=0,
                                            stream=True,
                                            extra_body={"ignore_eos": True, "return_token_ids": True}):
            if ch.choices and ch.choices[0].text:
                pieces.append(ch.choices[0].text)
        self.assertEqual("".join(pieces), full.text)
        # a stop string from the second character of one token's text to the first of the next
        offsets = [sum(len(x) for x in pieces[:i]) for i in range(len(pieces) + 1)]
        spans = [i for i in range(2, len(pieces) - 2) if len(pieces[i]) >= 2 and pieces[i + 1]]
        self.assertTrue(spans, f"no token to split in {pieces}")
        i = spans[0]
        stop = full.text[offsets[i] + 1:offsets[i + 1] + 1]
        cut = full.text.find(stop)
        r = complete(prompt="Never", max_tokens=n, stop=[stop, "zzzzqqq"], extra_body={"ignore_eos": True})
        self.assertEqual(r.choices[0].finish_reason, "stop")
        self.assertEqual(r.choices[0].text, full.text[:cut], f"stop {stop!r}")
        streamed = []
        finish = None
        for ch in client.completions.create(model=NAME, prompt="Never", max_tokens=n, temperature=0,
                                            stop=stop, stream=True, extra_body={"ignore_eos": True}):
            if ch.choices:
                streamed.append(ch.choices[0].text or "")
                finish = ch.choices[0].finish_reason or finish
        self.assertEqual("".join(streamed), full.text[:cut], "no part of the stop string is streamed")
        self.assertEqual(finish, "stop")

    def test_echo(self):
        r = complete(prompt=PROMPT, max_tokens=5, echo=True, extra_body={"ignore_eos": True})
        plain = complete(prompt=PROMPT, max_tokens=5, extra_body={"ignore_eos": True})
        self.assertEqual(r.choices[0].text, PROMPT + plain.choices[0].text)

    def test_logprobs_match_reference(self):
        r = complete(prompt=PROMPT, max_tokens=4, logprobs=3, extra_body={"ignore_eos": True})
        lp = r.choices[0].logprobs
        ids = extra(r.choices[0], "token_ids")
        self.assertEqual(len(lp.tokens), 4)
        self.assertEqual(len(lp.token_logprobs), 4)
        self.assertEqual(len(lp.top_logprobs), 4)
        self.assertEqual("".join(lp.tokens), r.choices[0].text)
        for t, top in zip(lp.token_logprobs, lp.top_logprobs):
            self.assertLessEqual(t, 0.0)
            self.assertTrue(1 <= len(top) <= 4, top)  # the alternatives and the chosen token
            # greedy: the chosen token is the most likely one
            self.assertAlmostEqual(t, max(top.values()), delta=1e-5)
        # the first generated token's log-probability from the reference's last prompt logits
        prompt_ids = extra(r, "prompt_token_ids")
        d = kserve.ref_dump(kserve.MODEL, prompt_ids)
        (rows, vocab), logits = d["logits"]
        row = kserve.log_softmax_row(logits[(rows - 1) * vocab:rows * vocab])
        self.assertAlmostEqual(lp.token_logprobs[0], row[ids[0]], delta=1e-4)
        best = sorted(row, reverse=True)[:3]
        self.assertEqual(len(lp.top_logprobs[0]), 3)
        for got, want in zip(sorted(lp.top_logprobs[0].values(), reverse=True), best):
            self.assertAlmostEqual(got, want, delta=1e-4)


class Chat(unittest.TestCase):
    MSG = "Tell me a fortune."

    def test_chat_equals_reference(self):
        ref = kserve.ref_chat_ids(kserve.MODEL, self.MSG, 24)
        r = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": self.MSG}],
                                           max_tokens=24, temperature=0,
                                           extra_body={"return_token_ids": True})
        c = r.choices[0]
        ids = extra(c, "token_ids")
        self.assertEqual(c.message.role, "assistant")
        self.assertEqual(r.object, "chat.completion")
        self.assertIn(0, ref, "the reference ends its fortune (<|endoftext|>) within 24 tokens")
        self.assertEqual(c.finish_reason, "stop")
        self.assertIn(ids, (ref[:ref.index(0)], ref[:ref.index(0) + 1]))
        self.assertEqual(r.usage.completion_tokens, len(ids))
        self.assertEqual(r.usage.prompt_tokens, len(extra(r, "prompt_token_ids")))
        self.assertGreater(len(c.message.content), 0)

    def test_chat_length_and_stream(self):
        kw = dict(model=NAME, messages=[{"role": "system", "content": "You are terse."},
                                        {"role": "user", "content": self.MSG}],
                  max_tokens=6, temperature=0, extra_body={"ignore_eos": True, "return_token_ids": True})
        r = client.chat.completions.create(**kw)
        self.assertEqual(r.choices[0].finish_reason, "length")
        self.assertEqual(r.usage.completion_tokens, 6)
        chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
        with_choices = [ch for ch in chunks if ch.choices]
        first = with_choices[0].choices[0]
        self.assertEqual(first.delta.role, "assistant", "the first delta carries the role")
        self.assertFalse(first.delta.content, "the role comes before any content")
        for ch in with_choices[1:]:
            self.assertIsNone(ch.choices[0].delta.role, "only the first delta has the role")
            self.assertEqual(ch.object, "chat.completion.chunk")
        text = "".join(ch.choices[0].delta.content or "" for ch in with_choices)
        self.assertEqual(text, r.choices[0].message.content)
        ids = [t for ch in with_choices for t in (ch.choices[0].model_extra or {}).get("token_ids") or []]
        self.assertEqual(ids, extra(r.choices[0], "token_ids"))
        finishes = [ch.choices[0].finish_reason for ch in with_choices if ch.choices[0].finish_reason]
        self.assertEqual(finishes, ["length"])
        self.assertEqual(len({ch.id for ch in chunks}), 1, "one id for the whole stream")
        self.assertIsNotNone(chunks[-1].usage, "stream_options.include_usage: a last chunk with usage")
        self.assertEqual(chunks[-1].usage.completion_tokens, 6)


class Embeddings(unittest.TestCase):
    INPUTS = [[101, 203, 20, 102], [101, 7, 999, 450, 12, 102]]

    def check(self, vectors, inputs=INPUTS):
        self.assertEqual(len(vectors), len(inputs))
        for ids, got in zip(inputs, vectors):
            shape, want = kserve.ref_dump(kserve.BERT, ids)["embedding"]
            self.assertEqual(len(got), shape[0])
            err = max(abs(a - b) for a, b in zip(got, want))
            self.assertLess(err, 1e-4, f"embedding of {ids}: max abs difference {err}")

    def test_float_and_base64(self):
        r = bclient.embeddings.create(model="bert", input=self.INPUTS, encoding_format="float")
        self.assertEqual([d.index for d in r.data], [0, 1])
        self.check([d.embedding for d in r.data])
        self.assertEqual(r.usage.prompt_tokens, sum(map(len, self.INPUTS)))
        # the client's default is base64 (little-endian float32)
        r = bclient.embeddings.create(model="bert", input=self.INPUTS)
        vecs = []
        for d in r.data:
            e = d.embedding
            if isinstance(e, str):
                raw = base64.b64decode(e)
                e = list(struct.unpack(f"<{len(raw) // 4}f", raw))
            vecs.append(e)
        self.check(vecs)
        # one input, not a list of them
        one = bclient.embeddings.create(model="bert", input=self.INPUTS[1], encoding_format="float")
        self.check([one.data[0].embedding], [self.INPUTS[1]])

    def test_errors(self):
        with self.assertRaises(openai.BadRequestError) as e:
            bclient.embeddings.create(model="bert", input="text needs a tokenizer")
        self.assertIn("tokenizer", str(e.exception))
        with self.assertRaises(openai.BadRequestError):
            bclient.completions.create(model="bert", prompt=[101, 102], max_tokens=2)
        with self.assertRaises(openai.BadRequestError):
            client.embeddings.create(model=NAME, input=[[1, 2, 3]])
        with self.assertRaises(openai.BadRequestError) as e:
            bclient.embeddings.create(model="bert", input=[[101, 5000, 102]])
        self.assertIn("5000", str(e.exception))


class Errors(unittest.TestCase):
    def test_models(self):
        self.assertEqual([m.id for m in client.models.list()], [NAME])
        self.assertEqual([m.id for m in bclient.models.list()], ["bert"])

    def test_unknown_model_is_404(self):
        with self.assertRaises(openai.NotFoundError) as e:
            client.completions.create(model="no-such-model", prompt=PROMPT, max_tokens=2)
        self.assertIn("no-such-model", str(e.exception))
        with self.assertRaises(openai.NotFoundError):
            client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])

    def test_bad_types_are_400(self):
        for kw in (dict(max_tokens="many"), dict(temperature="hot"), dict(temperature=-1.0),
                   dict(top_p=1.5), dict(max_tokens=-3), dict(logprobs=6), dict(stop=["a", "b", "c", "d", "e"]),
                   dict(seed="x"), dict(extra_body={"top_k": "ten"})):
            with self.subTest(**{k: str(v) for k, v in kw.items()}):
                with self.assertRaises(openai.BadRequestError):
                    client.completions.create(model=NAME, prompt=PROMPT, **{"max_tokens": 2, **kw})
        for prompt in ([], [[]], [0.5, 1], [{"a": 1}], [-1, 5], [1 << 40], [4096]):
            with self.subTest(prompt=str(prompt)):
                with self.assertRaises(openai.BadRequestError):
                    client.completions.create(model=NAME, prompt=prompt, max_tokens=2)
        for messages in ([], [{"role": "user"}], [{"role": "user", "content": 5}], [{"role": 5, "content": "x"}],
                         "hello"):
            with self.subTest(messages=str(messages)):
                with self.assertRaises(openai.BadRequestError):
                    client.chat.completions.create(model=NAME, messages=messages, max_tokens=2)

    def test_prompt_too_long_names_both_numbers(self):
        with self.assertRaises(openai.BadRequestError) as e:
            client.completions.create(model=NAME, prompt=[5] * 600, max_tokens=1)
        msg = str(e.exception)
        self.assertIn("600", msg)
        self.assertIn(str(LIMIT), msg)

    def test_wrong_key_is_401(self):
        bad = openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0)
        with self.assertRaises(openai.AuthenticationError):
            bad.completions.create(model=NAME, prompt=PROMPT, max_tokens=2)
        with self.assertRaises(openai.AuthenticationError):
            bad.models.list()


if __name__ == "__main__":
    unittest.main()
