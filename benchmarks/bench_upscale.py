"""Upscaling cost per image: Lanczos fallback vs SwinIR (random weights: cost only, not quality).

Prints, per method and input size, the first call (compile included) and the steady-state seconds per
image (median of --repeats runs), plus output megapixels per second.

    python benchmarks/bench_upscale.py                              # CPU: lanczos, tiny, M at 64 px
    python benchmarks/bench_upscale.py --sizes 64,256 --methods lanczos,tiny,M --repeats 1
    python benchmarks/bench_upscale.py --gpu --sizes 64,256,512 --methods lanczos,M,L

Without --gpu JAX is pinned to the CPU (JAX_PLATFORMS=cpu) even where an accelerator exists.
SwinIR runs tiled (--tile input pixels, overlap tile/4), so 256→1024 on the M model is 4 tiles
of 128² at the default tile size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="64", help="comma-separated input sides (output is 4x)")
    ap.add_argument(
        "--methods", default="lanczos,tiny,M", help="lanczos and/or SwinIR variants: tiny, M, L"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--tile-batch", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument(
        "--gpu", action="store_true", help="use the default JAX backend (GPU/TPU when present)"
    )
    args = ap.parse_args(argv)
    if not args.gpu:
        os.environ["JAX_PLATFORMS"] = "cpu"

    import jax
    import jax.numpy as jnp
    import numpy as np

    from dalle_core.upscale import SwinIRUpscaler, upscale

    print(
        f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), "
        f"{os.cpu_count()} CPUs visible, dtype {args.dtype}, tile {args.tile}"
    )
    print(f"{'method':<14}{'in→out':>14}{'1st call s':>11}{'s/image':>10}{'out MP/s':>10}")
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = np.random.default_rng(0)
    for method in args.methods.split(","):
        up = None
        if method != "lanczos":
            up = SwinIRUpscaler.random(
                method,
                tile=args.tile,
                tile_batch=args.tile_batch,
                dtype=jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32,
            )
        for side in sizes:
            # a smooth image with some texture (content does not change the cost)
            yy, xx = np.mgrid[0:side, 0:side] / side
            base = np.stack([yy, xx, (yy + xx) / 2], -1) * 200 + rng.integers(
                0, 50, (side, side, 3)
            )
            image = base.clip(0, 255).astype(np.uint8)
            t0 = time.perf_counter()
            first = upscale(image, up)  # compiles every tile shape it needs
            compile_s = time.perf_counter() - t0
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                upscale(image, up)
                times.append(time.perf_counter() - t0)
            per = statistics.median(times) if times else compile_s
            out_mp = first.image.shape[0] * first.image.shape[1] / 1e6
            label = first.method.replace("swinir:random-", "swinir-")
            print(
                f"{label:<14}{f'{side}→{first.image.shape[0]}':>14}{compile_s:>11.2f}{per:>10.3f}{out_mp / per:>10.3f}",
                flush=True,
            )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
