"""Build the tiny models and synthetic datasets and upload them to S3.

    python -m kubetune_trainer.testing.fixtures upload --bucket kubetune [--prefix PATH]
    python -m kubetune_trainer.testing.fixtures build      # print the local model directories

The endpoint and credentials come from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY), as for the trainer. Layout under s3://<bucket>/<prefix>:

    models/tiny-llama/                    causal LM (Llama, 2 layers) + tokenizer + chat template
    models/tiny-bert/                     BERT encoder + WordPiece tokenizer
    datasets/quickstart/train.jsonl       text: capital facts and counting lines
    datasets/counting/{train,validation}.jsonl   prompt-completion
    datasets/chat/{train,validation}.jsonl       messages
    datasets/topics/{train,validation}.jsonl     classification (labels: sports, weather, ...)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from . import synthetic, tiny

log = logging.getLogger("kubetune.fixtures")


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def datasets() -> dict[str, bytes]:
    """Relative key -> content."""
    return {
        "datasets/quickstart/train.jsonl": jsonl(synthetic.quickstart_rows(seed=0)),
        "datasets/counting/train.jsonl": jsonl(synthetic.counting_rows(256, seed=0)),
        "datasets/counting/validation.jsonl": jsonl(synthetic.counting_rows(32, seed=99)),
        "datasets/chat/train.jsonl": jsonl(synthetic.counting_rows(256, seed=0, kind="messages")),
        "datasets/chat/validation.jsonl": jsonl(
            synthetic.counting_rows(32, seed=99, kind="messages")
        ),
        "datasets/topics/train.jsonl": jsonl(synthetic.topic_rows(256, seed=0)),
        "datasets/topics/validation.jsonl": jsonl(synthetic.topic_rows(64, seed=99)),
    }


def upload(bucket: str, prefix: str = "") -> list[str]:
    from ..s3 import S3, join

    s3 = S3()
    base = join(f"s3://{bucket}", prefix) if prefix else f"s3://{bucket}"
    out = []
    for name, path in (("tiny-llama", tiny.tiny_llama()), ("tiny-bert", tiny.tiny_bert())):
        uri = join(base, "models", name)
        n = len(s3.upload_dir(path, uri))
        log.info("uploaded %s (%d files) from %s", uri + "/", n, path)
        out.append(uri + "/")
    for key, data in datasets().items():
        uri = join(base, key)
        s3.put_bytes(uri, data, content_type="application/x-ndjson")
        out.append(uri)
        log.info("uploaded %s (%d bytes)", uri, len(data))
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("botocore").setLevel(logging.WARNING)
    p = argparse.ArgumentParser(prog="python -m kubetune_trainer.testing.fixtures")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("upload", help="build (cached) and upload models and datasets")
    up.add_argument("--bucket", required=True)
    up.add_argument("--prefix", default="", help="key prefix inside the bucket (default: none)")
    sub.add_parser("build", help="build the tiny models (cached) and print their directories")
    args = p.parse_args(argv)
    if args.cmd == "build":
        print(tiny.tiny_llama())
        print(tiny.tiny_bert())
        return 0
    upload(args.bucket, args.prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
