"""Logit transforms (golden values) and the scan sampler with fake step functions."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dalle_core.sampling import (
    LogitSettings,
    apply_temperature,
    init_state,
    mask_invalid,
    process_logits,
    sample,
    sample_steps,
    super_condition,
    top_k_filter,
    top_p_filter,
)

NEG = -np.inf


def test_super_condition_golden():
    cond = jnp.array([[1.0, 2.0, -1.0]])
    uncond = jnp.array([[0.5, 3.0, -1.0]])
    np.testing.assert_allclose(super_condition(cond, uncond, 3.0), [[2.0, 0.0, -1.0]])
    np.testing.assert_allclose(super_condition(cond, uncond, 1.0), cond)
    np.testing.assert_allclose(super_condition(cond, uncond, 0.0), uncond)


def test_mask_invalid_golden():
    x = jnp.array([[0.5, 0.25, 1.5, 0.75, 2.0]])
    np.testing.assert_array_equal(mask_invalid(x, 3), [[0.5, 0.25, 1.5, NEG, NEG]])
    np.testing.assert_array_equal(mask_invalid(x, 5), x)


def test_temperature_golden():
    np.testing.assert_allclose(apply_temperature(jnp.array([2.0, -4.0]), 0.5), [4.0, -8.0])


def test_top_k_golden():
    x = jnp.array([[1.0, 3.0, 2.0, 0.0], [5.0, 5.0, 1.0, 2.0]])
    np.testing.assert_array_equal(top_k_filter(x, 2), [[NEG, 3.0, 2.0, NEG], [5.0, 5.0, NEG, NEG]])
    np.testing.assert_array_equal(top_k_filter(x, 1), [[NEG, 3.0, NEG, NEG], [5.0, 5.0, NEG, NEG]])
    np.testing.assert_array_equal(top_k_filter(x, 0), x)
    np.testing.assert_array_equal(top_k_filter(x, None), x)


def test_top_k_traced_golden_and_no_recompile():
    x = jnp.array([[1.0, 3.0, 2.0, 0.0], [5.0, 5.0, 1.0, 2.0]])
    filt = jax.jit(process_logits)
    for k, want in [
        (2, [[NEG, 3.0, 2.0, NEG], [5.0, 5.0, NEG, NEG]]),
        (1, [[NEG, 3.0, NEG, NEG], [5.0, 5.0, NEG, NEG]]),
        (3, [[1.0, 3.0, 2.0, NEG], [5.0, 5.0, NEG, 2.0]]),
        (9, np.asarray(x)),  # k >= vocabulary keeps everything
    ]:
        np.testing.assert_array_equal(filt(x, LogitSettings.create(top_k=k)), want, err_msg=f"k={k}")
    assert filt._cache_size() == 1  # top_k is traced: one compilation for every k
    np.testing.assert_array_equal(top_k_filter(x, jnp.int32(0)), x)  # traced 0: no limit


def test_top_p_golden():
    # probabilities 0.5, 0.25, 0.125, 0.125 (logits are log-probs)
    x = jnp.log(jnp.array([[0.125, 0.5, 0.125, 0.25]]))
    expect = lambda kept: np.where(kept, np.asarray(x), NEG)  # noqa: E731
    np.testing.assert_array_equal(top_p_filter(x, 0.5), expect([0, 1, 0, 0]))
    np.testing.assert_array_equal(top_p_filter(x, 0.6), expect([0, 1, 0, 1]))
    np.testing.assert_array_equal(top_p_filter(x, 0.1), expect([0, 1, 0, 0]))  # top-1 always kept
    # mass before each 0.125 entry is 0.75 < 0.8, so both tied entries stay
    np.testing.assert_array_equal(top_p_filter(x, 0.8), expect([1, 1, 1, 1]))
    np.testing.assert_array_equal(top_p_filter(x, 1.0), x)


def test_process_logits_order():
    # id 3 is invalid (e.g. BOS) and would otherwise be the top-1
    x = jnp.array([[1.0, 2.0, 0.0, 9.0]])
    s = LogitSettings.create(temperature=2.0, top_k=1, num_valid=3)
    np.testing.assert_array_equal(process_logits(x, s), [[NEG, 1.0, NEG, NEG]])


def test_settings_validation():
    with pytest.raises(ValueError, match="temperature"):
        LogitSettings.create(temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        LogitSettings.create(top_p=1.5)


V, L, B = 7, 6, 3


def _chain_step(token, index, cache):
    """Fake model: the next token is (fed token + 1) mod V; the cache counts calls."""
    logits = jnp.where(jnp.arange(V)[None, :] == ((token + 1) % V)[:, None], 50.0, -50.0)
    return logits, cache + 1


def _noise_step(token, index, cache):
    """Fake model with flat logits: every token is a pure random draw."""
    return jnp.zeros((token.shape[0], V)), cache


def _settings(**kw):
    return LogitSettings.create(num_valid=V, **kw)


def test_sample_golden_chain():
    out = sample(
        _chain_step,
        jnp.int32(0),
        jax.random.PRNGKey(0),
        batch=B,
        length=L,
        bos_id=V - 1,
        settings=_settings(),
    )
    # BOS = 6 → 0 → 1 → ...
    np.testing.assert_array_equal(out, np.tile(np.arange(L), (B, 1)))
    state = sample_steps(
        _chain_step, init_state(jnp.int32(0), jax.random.PRNGKey(0), B, L, V - 1), L, _settings()
    )
    assert int(state.cache) == L and int(state.index) == L


def test_forced_tokens_are_kept_and_fed_back():
    forced = np.zeros((B, L), np.int32)
    mask = np.zeros((B, L), bool)
    forced[0, 2], mask[0, 2] = 4, True  # row 0: position 2 forced to 4, chain continues from it
    forced[1], mask[1] = [3, 3, 3, 3, 3, 3], True  # row 1: fully forced
    out = sample(
        _chain_step,
        jnp.int32(0),
        jax.random.PRNGKey(0),
        batch=B,
        length=L,
        bos_id=V - 1,
        settings=_settings(),
        forced_tokens=jnp.asarray(forced),
        forced_mask=jnp.asarray(mask),
    )
    np.testing.assert_array_equal(out[0], [0, 1, 4, 5, 6, 0])
    np.testing.assert_array_equal(out[1], [3] * L)
    np.testing.assert_array_equal(out[2], np.arange(L))
    with pytest.raises(ValueError, match="forced_mask"):
        sample(
            _chain_step,
            jnp.int32(0),
            jax.random.PRNGKey(0),
            batch=B,
            length=L,
            bos_id=0,
            settings=_settings(),
            forced_tokens=jnp.asarray(forced),
        )


# compiled once per chunk length (the step function and settings are fixed)
_noise_steps = jax.jit(partial(sample_steps, _noise_step), static_argnums=1)


def test_seed_determinism_and_chunking():
    def run(seed, chunks):
        state = init_state(jnp.int32(0), jax.random.PRNGKey(seed), B, L, 0)
        for n in chunks:
            state = _noise_steps(state, n, _settings())
        return np.asarray(state.tokens)

    a = run(0, [L])
    np.testing.assert_array_equal(a, run(0, [L]))
    np.testing.assert_array_equal(a, run(0, [2, 2, 2]))  # chunked == one scan
    assert not np.array_equal(a, run(1, [L]))
    assert a.min() >= 0 and a.max() < V


def test_top_k_one_is_greedy_and_invalid_never_sampled():
    logits = jnp.array([0.0, 1.0, 3.0, 2.0, 0.5, 0.2, 10.0])  # id 6 is "invalid" (BOS)

    def step(token, index, cache):
        return jnp.broadcast_to(logits, (token.shape[0], V)), cache

    greedy = sample(
        step,
        None,
        jax.random.PRNGKey(3),
        batch=B,
        length=L,
        bos_id=6,
        settings=LogitSettings.create(top_k=1, num_valid=6),
    )
    np.testing.assert_array_equal(greedy, np.full((B, L), 2))
    many = sample(
        step,
        None,
        jax.random.PRNGKey(3),
        batch=64,
        length=L,
        bos_id=6,
        settings=LogitSettings.create(top_k=3, num_valid=6),
    )
    assert set(np.unique(many)) <= {1, 2, 3}


def test_kth_largest_matches_lax_top_k_with_ties_and_masked_entries():
    from dalle_core.sampling import kth_largest

    rng = np.random.default_rng(0)
    for trial in range(60):
        v = int(rng.integers(2, 300))
        k = int(rng.integers(1, v + 1))
        x = rng.standard_normal((3, v)).astype(np.float32) * 10
        if trial % 3 == 0:
            x = np.round(x)  # many ties
        if trial % 4 == 0:
            x[:, : v // 3] = -np.inf  # masked ids; k may reach into them
        if trial % 5 == 0:
            x[0, :] = 0.0  # -0.0 and 0.0 mixed with a constant row
            x[0, ::2] = -0.0
        want = np.asarray(jax.lax.top_k(jnp.asarray(x), k)[0][..., -1:])
        np.testing.assert_array_equal(np.asarray(kth_largest(jnp.asarray(x), k)), want, err_msg=f"trial {trial}")
