"""test_classify — `kiln serve`'s POST /v1/classify on the CPU backend.

A server on the qwen2_cls fixture (Qwen2ForSequenceClassification, labels negative / neutral /
positive; no tokenizer: token-id inputs only) answers one input and a batch with each input's raw
scores (logits), their softmax and the top label; the scores are checked against `kilnc ref --dump`
within 1e-5. Errors: /v1/classify on an embedding model (the BERT fixture) and on a text
generator (the example model), /v1/completions and /v1/embeddings on the classifier: 400 with a
message naming the right endpoint. Every server must exit 0 on SIGTERM with no sanitizer report.
"""
import math
import os
import unittest

import kserve

CLS = os.path.join(kserve.ROOT, "tests/fixtures/qwen2_cls")
LABELS = ["negative", "neutral", "positive"]
INPUTS = [[45, 60, 72, 254, 238, 65, 73, 78], [5, 6, 7], [200, 1, 17, 99, 3]]

cls = bert = gen = None


def setUpModule():
    global cls, bert, gen
    cls = kserve.Server("classify", CLS)
    bert = kserve.Server("classify-bert", kserve.BERT)
    gen = kserve.Server("classify-gen", kserve.MODEL)


def tearDownModule():
    errors = []
    for s in (cls, bert, gen):
        if s is not None:
            try:
                s.stop()
            except AssertionError as e:
                errors.append(str(e))
    assert not errors, "\n".join(errors)


class Classify(unittest.TestCase):
    def check(self, data, inputs):
        self.assertEqual([d["index"] for d in data], list(range(len(inputs))))
        for ids, d in zip(inputs, data):
            shape, want = kserve.ref_dump(CLS, ids)["scores"]
            self.assertEqual(shape, [3])
            self.assertEqual(d["num_classes"], 3)
            err = max(abs(a - b) for a, b in zip(d["scores"], want))
            self.assertLess(err, 1e-5, f"scores of {ids}: max abs difference {err}")
            self.assertEqual(d["label"], LABELS[max(range(3), key=lambda k: want[k])])
            z = sum(math.exp(s) for s in want)
            for p, s in zip(d["probs"], want):
                self.assertAlmostEqual(p, math.exp(s) / z, places=5)

    def test_batch_and_one(self):
        status, r = kserve.post_json(cls, "/v1/classify", {"model": "qwen2_cls", "input": INPUTS})
        self.assertEqual(status, 200, r)
        self.assertEqual(r["object"], "list")
        self.assertEqual(r["model"], "qwen2_cls")
        self.assertEqual(r["usage"]["prompt_tokens"], sum(map(len, INPUTS)))
        self.check(r["data"], INPUTS)
        # the labels differ between inputs (else the label check above proves little)
        self.assertGreater(len({d["label"] for d in r["data"]}), 1)
        status, r = kserve.post_json(cls, "/v1/classify", {"input": INPUTS[1]})
        self.assertEqual(status, 200, r)
        self.check(r["data"], [INPUTS[1]])

    def test_errors(self):
        status, r = kserve.post_json(cls, "/v1/classify", {"input": "text needs a tokenizer"})
        self.assertEqual(status, 400, r)
        self.assertIn("tokenizer", r["error"]["message"])
        status, r = kserve.post_json(cls, "/v1/classify", {"input": [[5, 256]]})
        self.assertEqual(status, 400, r)
        self.assertIn("256", r["error"]["message"])
        status, r = kserve.post_json(cls, "/v1/classify", {"model": "other", "input": [[5]]})
        self.assertEqual(status, 404, r)
        for path, body in (("/v1/completions", {"prompt": [5, 6], "max_tokens": 2}),
                           ("/v1/embeddings", {"input": [[5, 6]]})):
            status, r = kserve.post_json(cls, path, body)
            self.assertEqual(status, 400, r)
            self.assertIn("/v1/classify", r["error"]["message"])
        status, r = kserve.post_json(bert, "/v1/classify", {"input": [[101, 102]]})
        self.assertEqual(status, 400, r)
        self.assertIn("/v1/embeddings", r["error"]["message"])
        status, r = kserve.post_json(gen, "/v1/classify", {"input": [[1, 2]]})
        self.assertEqual(status, 400, r)
        self.assertIn("/v1/completions", r["error"]["message"])


if __name__ == "__main__":
    unittest.main()
