from jaxorder.model.attention import MASK_KINDS, attention_mask
from jaxorder.model.rope import apply_rope
from jaxorder.model.transformer import (
                                        Transformer,
                                        apply,
                                        apply_insertion,
                                        apply_with_hidden,
                                        count_params,
                                        init_boxed_params,
                                        init_params,
                                        logical_axes,
)

__all__ = ["MASK_KINDS", "attention_mask", "apply_rope", "Transformer", "apply", "apply_insertion",
           "apply_with_hidden",
           "count_params", "init_boxed_params", "init_params", "logical_axes"]
