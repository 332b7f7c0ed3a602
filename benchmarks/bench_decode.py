"""DalleBart decoding speed: our compiled decode vs. a straightforward per-step decoder.

Ours (what ``Generator.sample_tokens`` runs): encoder + cross-attention K/V once per prompt, then
one jitted ``lax.scan`` over the tokens with a preallocated self-attention KV cache, with the
layers unrolled over per-layer weights and caches (``DalleBart(scan_layers=False)``). ``scanned``
is the same loop over dalle-mini's stacked (scanned) layer weights, shown with ``--scanned``.

Baseline (how dalle-mini and min-dalle decode): a jitted single-step function called from a
Python loop; each step re-projects every layer's cross-attention K/V from the encoder output
(self-attention still uses a KV cache, as both references do) and takes top-k with
``lax.top_k``, as Hugging Face's Flax top-k warper does (ours finds the k-th largest logit by
bisection, ``dalle_core.sampling.kth_largest``; ``--top-k-only`` times the two on their own).

Both sample with super conditioning (cond + uncond rows in one batch: 2B decoder rows) and
top-k 64, from random weights of the named variant. Each (variant, batch, implementation) runs in
a fresh subprocess so that its peak RSS is its own.

    python benchmarks/bench_decode.py                 # CPU: tiny (all 64 tokens) and mini (--mini-tokens)
    python benchmarks/bench_decode.py --mini-tokens 256 --batches 1 8
    python benchmarks/bench_decode.py --gpu           # mini/mega bf16, batch 1/8/64, all 256 tokens

Numbers printed: compile (first call minus a timed call); prefill seconds (encoder, plus the
cross-attention K/V for ours) and decode-loop seconds, each the median of the timed runs;
tokens/s of the decode loop (images × tokens per second; the speed-up compares these); images/s
for whole images (one prefill plus all the image's tokens at the measured rate, so estimated when
fewer tokens ran); peak RSS of the process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

TOP_K = 64  # dalle-mini's default


def _random_params(cfg, dtype, seed: int = 0):
    """Random weights made on the default device in one compiled call (no host copy of mega)."""
    import jax
    import jax.numpy as jnp

    from dalle_core.models.bart import param_shapes

    shapes = param_shapes(cfg)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)

    @jax.jit
    def make(key):
        keys = jax.random.split(key, len(leaves))
        out = []
        for k, (path, leaf) in zip(keys, leaves, strict=True):
            name = jax.tree_util.keystr(path)
            if "scale" in name:
                out.append(jnp.ones(leaf.shape, dtype))
            elif "bias" in name:
                out.append(jnp.zeros(leaf.shape, dtype))
            else:
                out.append(
                    (jax.random.normal(k, leaf.shape, jnp.float32) * cfg.init_std).astype(dtype)
                )
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shapes), out)

    del treedef
    return make(jax.random.PRNGKey(seed))


def run_one(variant: str, batch: int, impl: str, tokens: int, dtype_name: str) -> dict:
    import resource

    import jax
    import jax.numpy as jnp
    import numpy as np

    from dalle_core.config import get_variant
    from dalle_core.models.bart import DalleBart, init_kv_cache, unscan_params
    from dalle_core.sampling import (
        LogitSettings,
        init_state,
        process_logits,
        sample_steps,
        super_condition,
    )

    cfg = get_variant(variant).bart
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[dtype_name]
    model = DalleBart(cfg, dtype=dtype)
    params = _random_params(cfg, dtype)
    if impl == "ours":  # what the Generator does at load time: one array per layer
        params = unscan_params(params)
        model = DalleBart(cfg, dtype=dtype, scan_layers=False)
    rows = 2 * batch
    rng = np.random.default_rng(0)
    ids = np.ones((rows, cfg.max_text_length), np.int32)
    ids[:batch, : cfg.max_text_length // 2] = rng.integers(
        4, cfg.text_vocab_size, (batch, cfg.max_text_length // 2)
    )
    ids[:, 0] = 0
    mask = (ids != 1).astype(np.int32)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    settings = LogitSettings.create(
        temperature=1.0, top_k=TOP_K, num_valid=min(16384, cfg.image_vocab_size)
    )
    scale = jnp.float32(10.0)

    def guided_logits(params, token, index, cache, cross):
        """One decoder step for the cond + uncond rows → (guided logits [batch, V], cache)."""
        fed = jnp.concatenate([token, token])
        raw, cache = model.apply(
            {"params": params}, fed[:, None], index, cache, cross, mask, method=DalleBart.decode_step
        )
        raw = raw[:, 0].astype(jnp.float32)
        return super_condition(raw[:batch], raw[batch:], scale), cache

    if impl in ("ours", "scanned"):

        @jax.jit
        def prefill(params, ids, mask, key):
            enc = model.apply({"params": params}, ids, mask, method=DalleBart.encode)
            cross = model.apply({"params": params}, enc, method=DalleBart.cross_kv)
            cache = init_kv_cache(cfg, rows, dtype, per_layer=impl == "ours")
            return cross, init_state(cache, key, batch, cfg.image_length, cfg.image_bos_id)

        @jax.jit
        def loop(params, cross, state):
            def step(token, index, cache):
                return guided_logits(params, token, index, cache, cross)

            return sample_steps(step, state, tokens, settings).tokens

        def run(key):
            t0 = time.perf_counter()
            cross, state = jax.block_until_ready(prefill(params, ids, mask, key))
            t1 = time.perf_counter()
            np.asarray(loop(params, cross, state))
            return t1 - t0, time.perf_counter() - t1

    else:
        plain = LogitSettings.create(temperature=1.0, num_valid=settings.num_valid)

        def reference_top_k(logits, k):
            kth = jax.lax.top_k(logits, k)[0][..., -1:]
            return jnp.where(logits >= kth, logits, -jnp.inf)

        encode = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m, method=DalleBart.encode))

        @jax.jit
        def step(params, enc, token, index, cache, key):
            # the references project cross-attention K/V from the encoder output at every step
            cross = model.apply({"params": params}, enc, method=DalleBart.cross_kv)
            logits, cache = guided_logits(params, token, index, cache, cross)
            logits = reference_top_k(process_logits(logits, plain), TOP_K)
            nxt = jax.random.categorical(jax.random.fold_in(key, index), logits).astype(jnp.int32)
            return nxt, cache

        def run(key):
            t0 = time.perf_counter()
            enc = jax.block_until_ready(encode(params, ids, mask))
            t1 = time.perf_counter()
            cache = init_kv_cache(cfg, rows, dtype)
            token = jnp.full((batch,), cfg.image_bos_id, jnp.int32)
            out = []
            for t in range(tokens):
                token, cache = step(params, enc, token, jnp.int32(t), cache, key)
                out.append(token)
            np.asarray(jnp.stack(out, 1))
            return t1 - t0, time.perf_counter() - t1

    first = sum(run(jax.random.PRNGKey(0)))
    # timed runs: the median of up to 5, fewer when one run is long
    runs = []
    while len(runs) < 5 and (len(runs) < 1 or sum(map(sum, runs)) < 3.0):
        runs.append(run(jax.random.PRNGKey(1 + len(runs))))
    prefill_s, timed = (float(np.median(col)) for col in zip(*runs, strict=True))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "variant": variant,
        "batch": batch,
        "impl": impl,
        "tokens": tokens,
        "dtype": dtype_name,
        "device": jax.devices()[0].device_kind,
        "compile_s": max(first - timed - prefill_s, 0.0),
        "prefill_s": prefill_s,
        "decode_s": timed,
        "tokens_per_s": batch * tokens / timed,
        # a whole image: one prefill plus image_length steps at the measured rate
        "images_per_s": batch / (prefill_s + timed * cfg.image_length / tokens),
        "peak_rss_mb": peak_kb / 1024,
    }


def time_top_k(shapes=((8, 513), (1, 16385), (8, 16385), (64, 16415)), k: int = 64, reps: int = 50) -> None:
    """Time ``lax.top_k``'s k-th value against ``kth_largest`` (bisection) on random logits."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dalle_core.sampling import kth_largest

    fns = {"lax.top_k": lambda x: jax.lax.top_k(x, k)[0][..., -1:], "kth_largest": lambda x: kth_largest(x, k)}
    print(f"{'rows x vocab':>14} {'lax.top_k us':>13} {'kth_largest us':>15}  (k={k}, {jax.devices()[0].device_kind})")
    for shape in shapes:
        x = jnp.asarray(np.random.default_rng(0).standard_normal(shape, np.float32))
        row = []
        for fn in fns.values():
            loop = jax.jit(lambda x, fn=fn: jax.lax.fori_loop(0, reps, lambda i, a: a + fn(x + i).sum(), 0.0))
            loop(x).block_until_ready()
            t0 = time.perf_counter()
            loop(x).block_until_ready()
            row.append((time.perf_counter() - t0) / reps * 1e6)
        print(f"{shape[0]:>6} x {shape[1]:<6} {row[0]:13.0f} {row[1]:15.0f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--gpu", action="store_true", help="mini/mega in bf16, batch 1/8/64, 256 tokens"
    )
    ap.add_argument("--batches", type=int, nargs="+", default=None)
    ap.add_argument("--variants", nargs="+", default=None)
    ap.add_argument(
        "--mini-tokens", type=int, default=24, help="tokens decoded for mini/mega on CPU"
    )
    ap.add_argument(
        "--baseline-tokens",
        type=int,
        default=None,
        help="cap the baseline's tokens (its tokens/s is per token, so it stays comparable)",
    )
    ap.add_argument(
        "--scanned", action="store_true", help="also time our loop over stacked (scanned) layer weights"
    )
    ap.add_argument(
        "--one",
        nargs=5,
        metavar=("VARIANT", "BATCH", "IMPL", "TOKENS", "DTYPE"),
        help=argparse.SUPPRESS,
    )
    ap.add_argument("--top-k-only", action="store_true", help="time the top-k threshold alone and exit")
    args = ap.parse_args(argv)

    if args.top_k_only:
        time_top_k()
        return
    if args.one:
        v, b, impl, n, dt = args.one
        print(json.dumps(run_one(v, int(b), impl, int(n), dt)))
        return

    from dalle_core.config import get_variant

    if args.gpu:
        variants, batches, dtype = (
            args.variants or ["mini", "mega"],
            args.batches or [1, 8, 64],
            "bfloat16",
        )
    else:
        variants, batches, dtype = (
            args.variants or ["tiny", "mini"],
            args.batches or [1, 8],
            "float32",
        )
    header = (
        f"{'variant':8} {'batch':>5} {'impl':8} {'tokens':>6} {'compile s':>9} {'prefill s':>9} {'decode s':>9} "
        f"{'tokens/s':>9} {'images/s':>9} {'peak RSS MB':>11}"
    )
    print(header)
    print("-" * len(header))
    estimated = False
    for variant in variants:
        full = get_variant(variant).bart.image_length
        n = full if (args.gpu or variant == "tiny") else min(args.mini_tokens, full)
        for batch in batches:
            speeds = {}
            for impl in ("ours", "scanned", "baseline") if args.scanned else ("ours", "baseline"):
                m = (
                    min(n, args.baseline_tokens)
                    if (impl == "baseline" and args.baseline_tokens)
                    else n
                )
                cmd = [sys.executable, __file__, "--one", variant, str(batch), impl, str(m), dtype]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    print(f"{variant:8} {batch:5} {impl:8} failed:\n{proc.stderr[-2000:]}")
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                speeds[impl] = r["tokens_per_s"]
                est = "" if m == full else "*"
                estimated |= bool(est)
                print(
                    f"{variant:8} {batch:5} {impl:8} {m:6} {r['compile_s']:9.2f} {r['prefill_s']:9.2f} {r['decode_s']:9.2f} "
                    f"{r['tokens_per_s']:9.1f} {r['images_per_s']:8.3f}{est or ' '} {r['peak_rss_mb']:11.0f}"
                )
            if "ours" in speeds and "baseline" in speeds:
                print(
                    f"{'':8} {'':5} speed-up ours/baseline: {speeds['ours'] / speeds['baseline']:.1f}x "
                    f"(device: {r['device']})"
                )
    if estimated:
        print(
            "* images/s estimated for a full image from the prefill and the decode rate "
            "(fewer tokens were decoded than an image has; the KV cache is full size either way)"
        )


if __name__ == "__main__":
    main()
