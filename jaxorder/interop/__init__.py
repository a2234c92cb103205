"""Bridges to the wider ecosystem: Hugging Face export and import, lm-evaluation-harness, optional
extras. Each module imports its third-party library lazily, inside the functions that need it, so
`import jaxorder` never requires an extra; a missing one is a one-line error naming it."""
