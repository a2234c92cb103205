"""The frontier's grid: every sampler setting `bench/decoding.py` measures, per run, and the
`--labels` / `--exclude` selection of its rows."""
from __future__ import annotations

import dataclasses

from decoding_common import BLOCK, LENGTH


@dataclasses.dataclass(frozen=True)
class Row:
    run: str
    sampler: str
    options: dict
    label: str
    baseline: str | None = None  # label of the uncached row this approximate-cache row is compared to


def grid(quick: bool) -> list[Row]:
    """The sampler settings of the frontier, per run (--quick: a smoke subset)."""
    mdm = dict(block_length=BLOCK)
    rows = [Row("l2r", "ar", {}, "ar (KV cache)")]
    for k in ((4,) if quick else (2, 4, 8)):  # the draft: a smaller l2r run of the same sweep
        rows.append(Row("l2r", "speculative", dict(draft="l2r_draft", draft_length=k),
                        f"speculative, draft l2r_draft, k={k}"))
    base = Row("mdm", "confidence", dict(steps=LENGTH, **mdm), "confidence, 1 token/step")
    rows += [base, Row("mdm", "confidence", dict(steps=64, **mdm), "confidence, 64 steps")]
    for cache in (("dual",) if quick else ("prefix", "dual", "free")):
        rows.append(Row("mdm", "confidence", dict(steps=LENGTH, approx_cache=cache, **mdm),
                        f"confidence, 1 token/step, {cache} cache", baseline=base.label))
    for tau, caches in (((0.9, ("dual",)),) if quick else ((0.9, ("dual", "free")), (0.7, ("dual",)))):
        plain = Row("mdm", "threshold", dict(steps=LENGTH, threshold=tau, **mdm), f"threshold {tau}")
        rows.append(plain)
        for cache in caches:
            rows.append(Row("mdm", "threshold", dict(steps=LENGTH, threshold=tau, approx_cache=cache, **mdm),
                            f"threshold {tau}, {cache} cache", baseline=plain.label))
    if not quick:  # the dual cache's two remedies: refreshed within a block, and shorter blocks
        rows.append(Row("mdm", "threshold", dict(steps=LENGTH, threshold=0.9, approx_cache="dual",
                                                 cache_refresh=8, **mdm),
                        "threshold 0.9, dual cache, refresh 8", baseline="threshold 0.9"))
        short = dict(steps=LENGTH, threshold=0.9, block_length=BLOCK // 2)
        rows.append(Row("mdm", "threshold", short, f"threshold 0.9, blocks of {BLOCK // 2}"))
        rows.append(Row("mdm", "threshold", dict(short, approx_cache="dual"),
                        f"threshold 0.9, dual cache, blocks of {BLOCK // 2}",
                        baseline=f"threshold 0.9, blocks of {BLOCK // 2}"))
    rows.append(Row("mdm", "factor", dict(steps=LENGTH, factor=1.0, **mdm), "factor 1"))
    if not quick:
        rows.append(Row("mdm", "factor", dict(steps=LENGTH, factor=1.0, approx_cache="dual", **mdm),
                        "factor 1, dual cache", baseline="factor 1"))
    for rho in ((1.0,) if quick else (0.5, 1.0)):  # the remasking corrector at a quarter of the steps
        rows.append(Row("mdm", "confidence", dict(steps=64, remask=rho, remask_candidates=8, **mdm),
                        f"confidence, 64 steps + remask {rho}"))
        if not quick:  # only the tokens whose newer context made them less likely
            rows.append(Row("mdm", "confidence", dict(steps=64, remask=rho, remask_candidates=8,
                                                      remask_dropped=True, **mdm),
                            f"confidence, 64 steps + remask {rho}, dropped only"))
            rows.append(Row("mdm", "confidence", dict(steps=64, remask=rho, remask_candidates=8,
                                                      remask_resample=True, **mdm),
                            f"confidence, 64 steps + remask {rho}, resample"))
            rows.append(Row("mdm", "confidence", dict(steps=64, remask=rho, remask_candidates=BLOCK, **mdm),
                            f"confidence, 64 steps + remask {rho}, {BLOCK} candidates"))  # the whole block
    if not quick:  # Info-Gain at the same commits per step as "confidence, 64 steps"
        for steps, c, ref in ((64, 2, "confidence, 64 steps"), (64, 8, "confidence, 64 steps"),
                              (LENGTH, 8, base.label)):  # and at one token per step
            rows.append(Row("mdm", "info-gain", dict(steps=steps, candidates=c, **mdm),
                            f"info-gain, {steps} steps, C={c}", baseline=ref))
            if c == 8:  # the immediate cost as the committed draws' surprisal, not their positions' entropy
                surprisal = dict(steps=steps, candidates=c, commit_cost="surprisal", **mdm)
                rows.append(Row("mdm", "info-gain", surprisal, f"info-gain surprisal, {steps} steps, C={c}",
                                baseline=ref))
        for t in (0.9, 0.8):  # controls: lower-entropy text from the confidence rule by temperature alone
            rows.append(Row("mdm", "confidence", dict(steps=64, temperature=t, **mdm),
                            f"confidence, 64 steps, temperature {t}", baseline="confidence, 64 steps"))
        warmer = dict(steps=64, candidates=8, commit_cost="surprisal", temperature=1.1, **mdm)
        rows.append(Row("mdm", "info-gain", warmer,  # its entropy back up to confidence's at temperature 1
                        "info-gain surprisal, 64 steps, C=8, temperature 1.1",
                        baseline="confidence, 64 steps"))
        # at temperature 0 the drawn token is the argmax: the cost's entropies then describe the
        # committed tokens' own distributions, as in the Info-Gain paper's greedy decoding
        greedy64 = dict(steps=64, temperature=0.0, **mdm)
        rows.append(Row("mdm", "confidence", greedy64, "greedy, 64 steps"))
        rows.append(Row("mdm", "info-gain", dict(greedy64, candidates=8), "greedy info-gain, 64 steps, C=8",
                        baseline="greedy, 64 steps"))
    for tau in ((0.1,) if quick else (0.1, 0.3)):  # AR guidance by the small l2r run (not the judge)
        rows.append(Row("mdm", "guided", dict(steps=LENGTH, guide="l2r_draft", guide_threshold=tau, **mdm),
                        f"guided by l2r_draft, p >= {tau}"))
    if not quick:  # a rejected first proposal replaced by the guide's own draw, or the two models' product
        for fallback, what, taus in (("guide", "guide's draw", (0.1, 0.3)),
                                     ("product", "product draw", (0.05, 0.1, 0.3, 1.0))):
            for tau in taus:
                rows.append(Row("mdm", "guided", dict(steps=LENGTH, guide="l2r_draft", guide_threshold=tau,
                                                      guide_fallback=fallback, **mdm),
                                f"guided by l2r_draft, p >= {tau}, {what} on rejection"))
    rows.append(Row("mdm", "confidence", dict(steps=LENGTH, prophet=5.0, **mdm), "confidence + Prophet 5"))
    if not quick:
        for g in (2.5, 1.0, 0.5):  # below Prophet's own 5: where it starts to fire on this model
            rows.append(Row("mdm", "confidence", dict(steps=LENGTH, prophet=g, **mdm),
                            f"confidence + Prophet {g}"))
        rows.append(Row("mdm", "threshold", dict(steps=LENGTH, threshold=0.9, prophet=5.0,
                                                 approx_cache="dual", **mdm),
                        "threshold 0.9, dual cache + Prophet 5", baseline="threshold 0.9"))
    if not quick:  # temperature 0, the setting of Fast-dLLM and Prophet: compare prompted rows and agreement
        greedy = dict(steps=LENGTH, temperature=0.0, **mdm)
        rows.append(Row("mdm", "confidence", greedy, "greedy, 1 token/step"))
        for extra, label in ((dict(prophet=5.0), "greedy + Prophet 5"),
                             (dict(prophet=2.5), "greedy + Prophet 2.5"),
                             (dict(prophet=1.0), "greedy + Prophet 1.0"),
                             (dict(prophet=0.5), "greedy + Prophet 0.5"),
                             (dict(threshold=0.9), "greedy, threshold 0.9"),
                             (dict(threshold=0.9, approx_cache="dual"), "greedy, threshold 0.9, dual cache")):
            sampler = "threshold" if "threshold" in extra else "confidence"
            rows.append(Row("mdm", sampler, dict(greedy, **extra), label, baseline="greedy, 1 token/step"))
    rows.append(Row("l2r_draft", "ar", {}, "ar (KV cache)"))  # the guide's and the draft's own samples
    rows += [Row("bd3_b4", "confidence", dict(steps=LENGTH), "confidence, 1 token/step (exact cache)"),
             Row("bd3_b4", "threshold", dict(steps=LENGTH, threshold=0.9), "threshold 0.9 (exact cache)"),
             Row("ao_ar", "random", {}, "random order (KV cache)")]
    for k in ((4,) if quick else (2, 4, 8)):
        rows.append(Row("ao_ar", "speculative", dict(draft_length=k), f"any-subset speculative, k={k}"))
    return rows


def select_rows(rows: list[Row], wanted: list[str] | None, dropped: list[str]) -> list[Row]:
    """The rows whose label has a `wanted` substring (all if None) and no `dropped` one; the first
    row of each run (the reference of the paired differences) and the baselines of chosen rows stay."""
    firsts = {(run, next(r.label for r in rows if r.run == run)) for run in {r.run for r in rows}}
    chosen = {(r.run, r.label) for r in rows if (r.run, r.label) in firsts or (
        (wanted is None or any(x in r.label for x in wanted)) and not any(x in r.label for x in dropped))}
    chosen |= {(r.run, r.baseline) for r in rows if (r.run, r.label) in chosen and r.baseline}
    return [r for r in rows if (r.run, r.label) in chosen]
