"""Sampling image tokens: tiny pure logit transforms and a ``lax.scan`` decode loop.

The loop knows nothing about DalleBart: it calls ``step_fn(token, index, cache) -> (logits,
cache)``, so it can be tested with a fake step function. Conventions (dalle-mini's):

* the token fed at decoder position 0 is BOS; the logits it returns are for image token 0;
* image token ``t`` is fed back at position ``t + 1``; ``length`` tokens need ``length`` steps
  (the last sampled token is never fed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from jax import lax

NEG_INF = -jnp.inf

# step_fn(token int32 [B], index int32 [], cache) -> (logits float32 [B, V], cache)
StepFn = Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, Any]]


# ---------------------------------------------------------------------------------------------
# Logit transforms: float [..., V] → float [..., V]; removed entries become -inf.


def super_condition(cond: jax.Array, uncond: jax.Array, scale) -> jax.Array:
    """Classifier-free guidance: ``uncond + scale * (cond - uncond)`` (scale 1 gives ``cond``)."""
    return uncond + scale * (cond - uncond)


def mask_invalid(logits: jax.Array, num_valid: int) -> jax.Array:
    """Only ids < ``num_valid`` are VQGAN codes; BOS and the padding rows of mega's head are not."""
    if num_valid >= logits.shape[-1]:
        return logits
    valid = jnp.arange(logits.shape[-1]) < num_valid
    return jnp.where(valid, logits, NEG_INF)


def apply_temperature(logits: jax.Array, temperature) -> jax.Array:
    return logits / temperature


def top_k_filter(logits: jax.Array, k: int | None) -> jax.Array:
    """Keep entries >= the k-th largest (ties at the threshold are kept); k 0/None: no limit."""
    if not k or k >= logits.shape[-1]:
        return logits
    kth = lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits >= kth, logits, NEG_INF)


def top_p_filter(logits: jax.Array, p) -> jax.Array:
    """Nucleus: keep the most likely entries whose probability mass *before* them is < p.

    The most likely entry is always kept; p >= 1 keeps everything (p may be traced).
    """
    sorted_desc = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = (mass_before < p).at[..., 0].set(True)
    # smallest kept logit is the threshold (entries tied with it are kept too)
    threshold = jnp.min(jnp.where(keep_sorted, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= threshold, logits, NEG_INF)


@flax.struct.dataclass
class LogitSettings:
    """What :func:`process_logits` does. Traced fields can change without recompiling.

    temperature, top_p: float32 scalars (traced). top_k: 0 for none. use_top_p: whether to run
    the nucleus filter (a full sort per step, so it is skipped when unused). num_valid: logits at
    ids >= num_valid are masked (the VQGAN codebook size).
    """

    temperature: jax.Array
    top_p: jax.Array
    top_k: int = flax.struct.field(pytree_node=False, default=0)
    use_top_p: bool = flax.struct.field(pytree_node=False, default=False)
    num_valid: int = flax.struct.field(pytree_node=False, default=1 << 30)

    @classmethod
    def create(cls, temperature=1.0, top_k=None, top_p=None, num_valid=1 << 30) -> LogitSettings:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if top_k is not None and top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        return cls(
            temperature=jnp.float32(temperature),
            top_p=jnp.float32(1.0 if top_p is None else top_p),
            top_k=int(top_k or 0),
            use_top_p=top_p is not None and top_p < 1.0,
            num_valid=int(num_valid),
        )


def process_logits(logits: jax.Array, settings: LogitSettings) -> jax.Array:
    """mask invalid ids → temperature → top-k → top-p (the order of HF's logits warpers)."""
    logits = mask_invalid(logits.astype(jnp.float32), settings.num_valid)
    logits = apply_temperature(logits, settings.temperature)
    logits = top_k_filter(logits, settings.top_k)
    if settings.use_top_p:
        logits = top_p_filter(logits, settings.top_p)
    return logits


# ---------------------------------------------------------------------------------------------
# The decode loop


@flax.struct.dataclass
class SampleState:
    """Loop state of :func:`sample_steps`.

    index: int32 [] position that ``token`` is fed at (0 = BOS); also the number of image
        tokens sampled so far.
    token: int32 [B] the token fed next.
    tokens: int32 [B, length] sampled tokens (zeros where not yet sampled).
    cache: the step function's cache (any pytree).
    rng: PRNG key; step ``i`` uses ``fold_in(rng, i)``, so results do not depend on chunking.
    """

    index: jax.Array
    token: jax.Array
    tokens: jax.Array
    cache: Any
    rng: jax.Array


def init_state(
    init_cache: Any, rng: jax.Array, batch: int, length: int, bos_id: int
) -> SampleState:
    return SampleState(
        index=jnp.int32(0),
        token=jnp.full((batch,), bos_id, jnp.int32),
        tokens=jnp.zeros((batch, length), jnp.int32),
        cache=init_cache,
        rng=rng,
    )


def sample_steps(
    step_fn: StepFn,
    state: SampleState,
    num_steps: int,
    settings: LogitSettings,
    forced_tokens: jax.Array | None = None,
    forced_mask: jax.Array | None = None,
) -> SampleState:
    """Run ``num_steps`` decode steps in one ``lax.scan``.

    forced_tokens int32 [B, length], forced_mask bool [B, length]: where the mask is set, the
    forced token is taken instead of a sample (and fed back), which powers variations, edits and
    outpainting. The step still runs, so the cache sees exactly what an unforced run would.
    """

    def body(state: SampleState, _):
        logits, cache = step_fn(state.token, state.index, state.cache)
        logits = process_logits(logits, settings)
        key = jax.random.fold_in(state.rng, state.index)
        token = jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
        if forced_tokens is not None:
            forced = lax.dynamic_index_in_dim(forced_tokens, state.index, axis=1, keepdims=False)
            use = lax.dynamic_index_in_dim(forced_mask, state.index, axis=1, keepdims=False)
            token = jnp.where(use, forced.astype(jnp.int32), token)
        tokens = lax.dynamic_update_slice(state.tokens, token[:, None], (0, state.index))
        new = SampleState(
            index=state.index + 1, token=token, tokens=tokens, cache=cache, rng=state.rng
        )
        return new, None

    state, _ = lax.scan(body, state, None, length=num_steps)
    return state


def sample(
    step_fn: StepFn,
    init_cache: Any,
    rng: jax.Array,
    *,
    batch: int,
    length: int,
    bos_id: int,
    settings: LogitSettings,
    forced_tokens: jax.Array | None = None,
    forced_mask: jax.Array | None = None,
) -> jax.Array:
    """Sample ``length`` tokens for ``batch`` rows in one scan → int32 [batch, length]."""
    _check_forced(forced_tokens, forced_mask, batch, length)
    state = init_state(init_cache, rng, batch, length, bos_id)
    state = sample_steps(step_fn, state, length, settings, forced_tokens, forced_mask)
    return state.tokens


def _check_forced(forced_tokens, forced_mask, batch: int, length: int) -> None:
    if (forced_tokens is None) != (forced_mask is None):
        raise ValueError("forced_tokens and forced_mask go together: pass both or neither")
    if forced_tokens is not None:
        for name, arr in (("forced_tokens", forced_tokens), ("forced_mask", forced_mask)):
            if tuple(arr.shape) != (batch, length):
                raise ValueError(
                    f"{name} must have shape {(batch, length)}, got {tuple(arr.shape)}"
                )
