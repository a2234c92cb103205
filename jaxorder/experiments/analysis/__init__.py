"""Analyses of trained runs (attention diagnostics: slash heads, rank-one q/k, entropy, sinks)."""
from jaxorder.experiments.analysis.attention import (
                                         DEFAULT_SLASH_THRESHOLD,
                                         AttentionAnalysis,
                                         Capture,
                                         analysis_view,
                                         analyze_capture,
                                         analyze_run,
                                         attention_probs,
                                         capture_attention,
                                         dominant_offset,
                                         entropy_and_sink,
                                         model_inputs,
                                         rank_one_ness,
                                         slash_dominant_fraction,
                                         slash_scores,
                                         summarize_run,
                                         supported,
)

__all__ = ["DEFAULT_SLASH_THRESHOLD", "AttentionAnalysis", "Capture", "analyze_capture", "analysis_view",
           "analyze_run",
           "attention_probs", "capture_attention", "dominant_offset", "entropy_and_sink", "model_inputs",
           "supported", "rank_one_ness", "slash_dominant_fraction", "slash_scores", "summarize_run"]
