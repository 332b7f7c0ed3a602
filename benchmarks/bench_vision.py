"""Benchmark the vision half of the core: VQGAN decode and CLIP ranking, with random weights.

Compile time and steady-state run time are measured separately (``jit(...).lower().compile()``
then timed calls with ``block_until_ready``). Random weights are drawn with numpy from the
parameter shapes (no checkpoint, no download); speed does not depend on their values.

    python benchmarks/bench_vision.py                 # CPU: tiny + f16 VQGAN decode, ViT-B/32 ranking
    python benchmarks/bench_vision.py --quick         # CPU, tiny models only
    python benchmarks/bench_vision.py --gpu           # on the default GPU, larger repeat counts
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="run on the GPU (fails if JAX sees none)")
    p.add_argument("--quick", action="store_true", help="tiny models only")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per case (default 3 CPU, 10 GPU)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="VQGAN decode batch sizes")
    return p.parse_args()


ARGS = _parse()
if not ARGS.gpu:
    os.environ["JAX_PLATFORMS"] = "cpu"  # must precede the jax import

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from dalle_core.checkpoints import flatten, unflatten  # noqa: E402
from dalle_core.config import CLIPConfig, VQGANConfig, get_variant  # noqa: E402
from dalle_core.models.clip import clip_param_shapes  # noqa: E402
from dalle_core.models.vqgan import VQModel, vqgan_param_shapes  # noqa: E402
from dalle_core.rank import VIEW_SHIFT, clip_scores, view_offsets  # noqa: E402


def random_params(shapes, seed: int = 0):
    """Fan-in-scaled normal weights, unit norm scales, small biases (keeps activations finite)."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, spec in flatten(shapes).items():
        shape = spec.shape
        if key.endswith("scale"):
            arr = np.ones(shape, np.float32)
        elif len(shape) >= 2:
            arr = rng.standard_normal(shape, np.float32) / np.sqrt(np.prod(shape[:-1]))
        else:
            arr = 0.02 * rng.standard_normal(shape, np.float32)
        out[key] = jnp.asarray(arr)
    return unflatten(out)


def bench(name: str, fn, args, repeats: int, items: int) -> dict:
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))  # warm-up (allocations, first transfer)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    row = dict(case=name, compile_s=compile_s, run_ms=med * 1e3, min_ms=min(times) * 1e3,
               per_s=items / med)
    print(f"{name:<44} compile {compile_s:7.2f} s   run {med * 1e3:10.1f} ms (min {min(times) * 1e3:9.1f})"
          f"   {items / med:8.2f} img/s", flush=True)
    return row


def vqgan_cases(name: str, cfg: VQGANConfig, repeats: int) -> list[dict]:
    params = random_params(vqgan_param_shapes(cfg))
    model = VQModel(cfg)
    rows = []
    for b in ARGS.batches:
        codes = jnp.asarray(
            np.random.default_rng(b).integers(0, cfg.n_embed, (b, cfg.grid_size**2)), jnp.int32
        )

        def decode(p, c):
            return model.apply({"params": p}, c, method="decode_code")

        rows.append(bench(f"VQGAN {name} decode {cfg.resolution}² batch {b}", decode, (params, codes),
                          repeats, b))
    return rows


def clip_case(name: str, cfg: CLIPConfig, repeats: int, n_images: int = 8, side: int = 256, views: bool = False) -> dict:
    """CLIP scoring of ``n_images`` against one prompt; ``views``: the Ranker's default five views."""
    params = random_params(clip_param_shapes(cfg))
    rng = np.random.default_rng(0)
    length = cfg.text.max_position_embeddings
    ids = rng.integers(0, cfg.text.vocab_size - 1, (1, length)).astype(np.int32)
    ids[0, 12] = cfg.text.vocab_size - 1  # an EOS-like highest id, as real prompts have
    mask = (np.arange(length) <= 12).astype(np.int32)[None]
    images = rng.integers(0, 256, (n_images, side, side, 3), dtype=np.uint8)
    index = np.zeros(n_images, np.int32)

    offsets = view_offsets(cfg, VIEW_SHIFT) if views else ((0, 0),)

    def score(p, i, m, x, t):
        return clip_scores(p, cfg, i, m, x, t, offsets=offsets)

    return bench(f"CLIP {name} rank {n_images}×{side}² vs 1 prompt, {len(offsets)} view(s)", score,
                 (params, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(images), jnp.asarray(index)),
                 repeats, n_images)


def main() -> int:
    dev = jax.devices()[0]
    if ARGS.gpu and dev.platform != "gpu":
        print(f"--gpu given but JAX's default device is {dev}", file=sys.stderr)
        return 2
    repeats = ARGS.repeats or (10 if ARGS.gpu else 3)
    print(f"device: {dev.device_kind} ({dev.platform}), jax {jax.__version__}, "
          f"cpus: {os.cpu_count()}, repeats: {repeats}", flush=True)
    tiny = get_variant("tiny")
    vqgan_cases("tiny f8", tiny.vqgan, repeats)
    clip_case("tiny", tiny.clip, repeats)
    clip_case("tiny", tiny.clip, repeats, views=True)
    if not ARGS.quick:
        # the f16 model is ~200 GFLOP per 256² image; one timed call is plenty on a CPU
        vqgan_cases("f16-16384", VQGANConfig(), repeats if ARGS.gpu else 1)
        clip_case("ViT-B/32", CLIPConfig(), repeats)
        clip_case("ViT-B/32", CLIPConfig(), repeats, views=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
