"""Data: tokenizers, document sources (incl. synthetic data with known answers) and the grain
pipeline (knows neither orders nor models)."""
from jaxorder.data.tokenizer import ByteTokenizer, DataError, make_tokenizer
from jaxorder.data.sources import Document, load_documents
from jaxorder.data.pipeline import DataBundle, make_data
from jaxorder.data.synthetic import is_valid_grid, markov_entropy_rate_bits, swap05

__all__ = ["make_data", "DataBundle", "ByteTokenizer", "make_tokenizer", "DataError",
           "load_documents", "Document", "markov_entropy_rate_bits", "is_valid_grid", "swap05"]
