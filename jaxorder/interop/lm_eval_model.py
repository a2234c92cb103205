"""lm-evaluation-harness model `jaxorder` (needs the [eval] extra): any benchmark of `lm_eval` on a
run directory.

    python -m jaxorder.interop.lm_eval_model --model jaxorder --model_args run_dir=runs/l2r_tiny \\
        --tasks hellaswag

(the harness's own command line, with the `jaxorder` model registered first). model_args:
`run_dir` (required), `score` (auto | ar | l2r | elbo: see `lm_scoring`; auto is the run's
yardstick for AR runs and the left-to-right order for order-agnostic ones), `elbo_samples`,
`seed`. loglikelihood is log p(continuation | context) as `lm_scoring` defines it (exact for
l2r, ao_ar and mdm's l2r order; a bound for r2l and `score=elbo`); loglikelihood_rolling sums
disjoint windows; generate_until decodes greedily with the family's default sampler.
"""
from __future__ import annotations

import sys
from typing import Any

from jaxorder.config import ConfigError
from jaxorder.interop.extras import require
from jaxorder.interop.lm_scoring import RunScorer

_api = require("lm_eval.api.model", "eval", "the lm-evaluation-harness model")
_registry = require("lm_eval.api.registry", "eval", "the lm-evaluation-harness model")


@_registry.register_model("jaxorder")
class JaxorderLM(_api.LM):
    def __init__(self, run_dir: str, score: str = "auto", elbo_samples: int = 16, seed: int = 0,
                 batch_size: Any = 8, **harness_options: Any):
        super().__init__()
        del harness_options  # device, max_batch_size: placement is jaxorder's (JAX devices)
        size = int(batch_size) if str(batch_size).isdigit() else 8  # "auto" -> our default
        self.scorer = RunScorer(run_dir, score=score, elbo_samples=int(elbo_samples), seed=int(seed),
                                batch_size=size)

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        encode = self.scorer.encode
        pairs = [(encode(ctx), encode(cont)) for ctx, cont in (r.args for r in requests)]
        return [(s.logprob, s.is_greedy) for s in self.scorer.loglikelihood(pairs)]

    def loglikelihood_rolling(self, requests) -> list[float]:
        return [self.scorer.rolling(self.scorer.encode(r.args[0])) for r in requests]

    def generate_until(self, requests) -> list[str]:
        out = []
        for request in requests:
            context, gen_kwargs = request.args
            until = gen_kwargs.get("until", [])
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.get("max_gen_toks", 64))
            out.append(self.scorer.generate(self.scorer.encode(context), max_new, until))
        return out


def main() -> int:
    """`lm_eval`'s command line with the jaxorder model registered."""
    from lm_eval.__main__ import cli_evaluate

    try:
        cli_evaluate()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
