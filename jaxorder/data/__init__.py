"""Data: tokenizers, document sources (incl. synthetic data with known answers) and the grain
pipeline (knows neither orders nor models)."""
from jaxorder.data.bundle import DataBundle, StepIterator
from jaxorder.data.documents import Document
from jaxorder.data.errors import DataError
from jaxorder.data.iterator_state import load_iterator_state, restore_iterator
from jaxorder.data.pipeline import make_data
from jaxorder.data.sources import load_documents
from jaxorder.data.synthetic import is_valid_grid, markov_entropy_rate_bits, swap05
from jaxorder.data.tokenizer import ByteTokenizer, load_tokenizer, make_tokenizer, save_tokenizer

__all__ = ["make_data", "DataBundle", "StepIterator", "ByteTokenizer", "make_tokenizer", "load_tokenizer",
           "save_tokenizer", "DataError", "load_documents", "Document", "load_iterator_state",
           "restore_iterator", "markov_entropy_rate_bits", "is_valid_grid", "swap05"]
# BPE (``jaxorder.data.bpe``) and prepared datasets (``jaxorder.data.prepared``) import HF
# tokenizers / TFDS lazily, only when used.
