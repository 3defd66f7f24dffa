"""Asks a tabnode relay with the official OpenAI Python client, streaming.

    python openai_client.py BASE_URL MODEL PROMPT MAX_TOKENS [API_KEY]

Prints one JSON object: the model ids `/v1/models` lists, the streamed
answer's text, its number of content chunks and its finish reason (the e2e
tests in models.test.mjs and accounts.test.mjs run it against a live
network); or, when the API refuses, `{"error": {"status", "code",
"message"}}`. Without API_KEY the client sends a placeholder (anonymous).
"""

import json
import sys

from openai import APIStatusError, OpenAI


def main(base_url, model, prompt, max_tokens, api_key="unused"):
    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
    try:
        ids = [m.id for m in client.models.list()]
        answer(client, ids, model, prompt, max_tokens)
    except APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        error = body.get("error", body)
        print(json.dumps({"error": {"status": e.status_code, "code": error.get("code"), "message": error.get("message")}}))


def answer(client, ids, model, prompt, max_tokens):
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
    main(*sys.argv[1:6])
