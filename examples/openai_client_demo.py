"""Generate, vary and edit images through the Covercraft service with only the ``openai`` client.

Start the service, then run this script against it:

    export COVERCRAFT_API_KEYS=sk-local-demo
    covercraft api --model random-tiny &            # or the embedded model: covercraft api
    python examples/openai_client_demo.py --base-url http://127.0.0.1:8000/v1 --api-key sk-local-demo

Or let the script start a service in-process on a free loopback port (random-init tiny model):

    python examples/openai_client_demo.py --local

It writes generated.png, variation-*.png and edited.png into --out (default ./openai-demo) and
finishes with the publishing hook (one image per platform) through plain HTTP.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import sys
from contextlib import nullcontext
from pathlib import Path

import httpx
import openai
from PIL import Image


def demo(base_url: str, api_key: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    client = openai.OpenAI(base_url=base_url, api_key=api_key)
    print("models:", [m.id for m in client.models.list().data])

    # 1. Generate: standard OpenAI parameters, plus Covercraft extras through extra_body.
    gen = client.images.generate(
        prompt="a lighthouse on a cliff at sunrise",
        n=2,
        size="256x256",
        response_format="b64_json",
        extra_body={"style": "watercolor", "seed": 42, "negative_prompt": "people"},
    )
    first = base64.b64decode(gen.data[0].b64_json)
    (out / "generated.png").write_bytes(first)
    print("generated:", out / "generated.png", "| revised prompt:", gen.data[0].revised_prompt)

    # 2. Variations of that image (URLs served by the service; they expire).
    var = client.images.create_variation(image=("generated.png", first, "image/png"), n=2, size="256x256")
    for i, item in enumerate(var.data):
        path = out / f"variation-{i + 1}.png"
        path.write_bytes(httpx.get(item.url).content)
        print("variation:", path, "<-", item.url)

    # 3. Edit: the mask's transparent pixels (here the top half) are redrawn from the prompt.
    mask = Image.new("RGBA", (256, 256), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 256, 128))
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    edit = client.images.edit(
        image=("generated.png", first, "image/png"),
        mask=("mask.png", buf.getvalue(), "image/png"),
        prompt="a lighthouse under a starry night sky",
        size="256x256",
        response_format="b64_json",
    )
    (out / "edited.png").write_bytes(base64.b64decode(edit.data[0].b64_json))
    print("edited:", out / "edited.png")

    # 4. Errors arrive as the client's exceptions.
    try:
        client.images.generate(prompt="a lighthouse", n=11)
    except openai.BadRequestError as err:
        print("bad request as expected:", err.body["param"], "-", err.body["message"])

    # 5. The publishing hook (not part of OpenAI's API): plain HTTP with the same key.
    root = base_url.removesuffix("/v1")
    post = "# Lighthouses of the north\n\nA short history of the lighthouses that guide ships along " \
           "the rocky northern coast, their keepers and the lamps they tended."
    resp = httpx.post(f"{root}/v1/hooks/publish", headers={"Authorization": f"Bearer {api_key}"},
                      json={"text": post, "platforms": ["linkedin", "instagram"], "style": "flat vector"},
                      timeout=600)
    resp.raise_for_status()
    hook = resp.json()
    print("hook prompt:", hook["prompt"], "| topics:", ", ".join(hook["topics"]))
    for item in hook["images"]:
        path = out / f"hook-{item['platform']}.png"
        path.write_bytes(httpx.get(item["url"]).content)
        print(f"hook image: {path} ({item['width']}x{item['height']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="OpenAI client demo against a Covercraft service")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default=os.environ.get("COVERCRAFT_API_KEY", "sk-local-demo"))
    parser.add_argument("--local", action="store_true", help="start a random-init tiny service in-process")
    parser.add_argument("--out", type=Path, default=Path("openai-demo"))
    args = parser.parse_args(argv)

    context = nullcontext(None)
    if args.local:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        from flows.model import get_generator
        from flows.service import ServiceSettings, create_app
        from flows.service.testing import running
        from flows.settings import ModelSettings, load_settings

        app = create_app(ServiceSettings(), load_settings(), environ={"COVERCRAFT_API_KEYS": args.api_key},
                         generator=get_generator(ModelSettings(source="random-tiny")))
        context = running(app)
    with context as server:
        base_url = server.base_url + "/v1" if server else args.base_url
        demo(base_url, args.api_key, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
