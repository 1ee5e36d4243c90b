"""The PyPI `convex` client's set_auth / clear_auth against examples/chat, in its own process
(see python_client_scenarios.py for why). usage: python python_auth_scenario.py URL TOKEN API_KEY"""

from __future__ import annotations

import json
import sys

from convex import ConvexClient


def step(text: str) -> None:
    sys.stderr.write(f"step: {text}\n")
    sys.stderr.flush()


def main(url: str, token: str, key: str) -> None:
    seen = {}
    client = ConvexClient(url)
    step("whoami without auth")
    seen["anonymous"] = client.query("auth:whoami")
    step("set_auth with a minted token")
    client.set_auth(token)
    seen["user"] = client.query("auth:whoami")
    client.mutation("messages:send", {"body": "from python"})
    seen["authors"] = [m["author"] for m in client.query("messages:list")]
    step("clear_auth")
    client.clear_auth()
    seen["cleared"] = client.query("auth:whoami")
    step("set_auth with an API key")
    client.set_auth(key)
    seen["machine"] = client.query("auth:whoami")
    sys.stdout.write(json.dumps(seen) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:4])
