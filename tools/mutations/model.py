"""Mutations of the model's RoPE and attention masks, KV caches."""
from .base import BD3, Mutation

MUTATIONS: tuple[Mutation, ...] = (
    # ------------------------------------------------------------------ model: RoPE and masks
    Mutation(
        "rope-sin-sign", "jaxorder/model/rope.py",
        "[x1 * cos_BL1F - x2 * sin_BL1F, x2 * cos_BL1F + x1 * sin_BL1F]",
        "[x1 * cos_BL1F + x2 * sin_BL1F, x2 * cos_BL1F - x1 * sin_BL1F]",
        "RoPE rotates by -angle (sin sign flipped)",
        ("tests/test_model.py::test_rope_matches_complex_rotation_and_is_relative",)),
    Mutation(
        "rope-halves-swapped", "jaxorder/model/rope.py",
        "x1, x2 = jnp.split(x_BLHD.astype(jnp.float32), 2, axis=-1)",
        "x2, x1 = jnp.split(x_BLHD.astype(jnp.float32), 2, axis=-1)",
        "RoPE with the two halves of the head dim swapped",
        ("tests/test_model.py::test_rope_matches_complex_rotation_and_is_relative",)),
    Mutation(
        "causal-mask-strict", "jaxorder/model/attention.py",
        "return jnp.tril(jnp.ones((length, length), dtype=bool))",
        "return jnp.tril(jnp.ones((length, length), dtype=bool), k=-1)",
        "causal mask strictly lower (a slot cannot see itself; slot 0 sees nothing)",
        ("tests/test_model.py::test_causal_vs_bidirectional_masks",)),
    Mutation(
        "bd3-mask-noisy-clean", "jaxorder/model/attention.py",
        "(~q_clean & k_clean & (kb < qb))",
        "(~q_clean & k_clean & (kb <= qb))",
        "bd3 four-part mask: noisy -> clean also sees its own block (the answer)",
        (BD3 + "test_bd3_mask_equals_four_part_definition",)),
    # ------------------------------------------------------------------ KV caches
    Mutation(
        "decode-mask-off-by-one", "jaxorder/model/attention.py",
        "((slot_T >= index) & (slot_T <= new_L1))",
        "((slot_T >= index) & (slot_T < new_L1))",
        "causal decode mask: a new slot does not see itself",
        ("tests/test_decode.py::test_decode_masks",)),
    Mutation(
        "cache-index-stuck", "jaxorder/model/attention.py",
        "cache_index.value = idx + L",
        "cache_index.value = idx",
        "KV cache index not advanced after a decode call",
        ("tests/test_sampling_ar.py::test_decode_step_matches_full_forward_in_chunks",)),
)
