"""Asks a tabnode relay with the official OpenAI Python client, streaming.

    python openai_client.py BASE_URL MODEL PROMPT MAX_TOKENS

Prints one JSON object: the model ids `/v1/models` lists, the streamed
answer's text, its number of content chunks and its finish reason (the e2e
test in models.test.mjs runs it against a live network).
"""

import json
import sys

from openai import OpenAI


def main(base_url, model, prompt, max_tokens):
    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    ids = [m.id for m in client.models.list()]
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=int(max_tokens),
        temperature=0,
        stream=True,
    )
    text, chunks, finish = "", 0, None
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        if choice.delta.content:
            text += choice.delta.content
            chunks += 1
        if choice.finish_reason:
            finish = choice.finish_reason
    print(json.dumps({"models": ids, "text": text, "chunks": chunks, "finish": finish}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
