"""Asks a tabnode relay for embeddings with the official OpenAI Python
client (its default request: base64 vectors, which it decodes).

    python openai_embed.py BASE_URL MODEL TEXT [TEXT ...]

Prints one JSON object: the model ids `/v1/models` lists, the vectors, and
the usage (the e2e test in embeddings.test.mjs runs it against a live
network).
"""

import json
import sys

from openai import OpenAI


def main(base_url, model, texts):
    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    ids = [m.id for m in client.models.list()]
    r = client.embeddings.create(model=model, input=texts)
    print(json.dumps({
        "models": ids,
        "vectors": [d.embedding for d in sorted(r.data, key=lambda d: d.index)],
        "prompt_tokens": r.usage.prompt_tokens,
        "model": r.model,
    }))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
