"""Data: tokenizers, document sources and the grain pipeline (knows neither orders nor models)."""
from jaxorder.data.tokenizer import ByteTokenizer, DataError, make_tokenizer
from jaxorder.data.sources import Document, load_documents
from jaxorder.data.pipeline import DataBundle, make_data

__all__ = ["make_data", "DataBundle", "ByteTokenizer", "make_tokenizer", "DataError",
           "load_documents", "Document"]
