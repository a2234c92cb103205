"""`jaxorder data prepare`: the command line of the prepared-dataset writer (`prepared.py`); the `data`
parser also dispatches `data order` (`order_command.py`)."""
from __future__ import annotations

import argparse

from jaxorder import config as config_lib
from jaxorder.data import order_command
from jaxorder.data.prepared import prepare_dataset
from jaxorder.errors import ConfigError
from jaxorder.jsonout import dumps
from jaxorder.paths import absolute


def run_command(args: argparse.Namespace) -> int:
    if args.what == "order":
        return order_command.run_command(args)
    if not args.out:
        raise ConfigError("jaxorder data prepare needs --out DIR (the new dataset directory)")
    cfg = config_lib.load(args.config, args.overrides)
    out = absolute(args.out)  # a gs:// --out stays a URL (prepare_dataset refuses it in one line)
    meta = prepare_dataset(cfg.data, out)
    use = ["data.source=prepared", f"data.path={out}", f"data.seq_len={meta['seq_len']}",
           f"data.tokenizer={meta['tokenizer']}"]
    if meta["tokenizer"] == "bpe":
        use.append(f"data.bpe_vocab_size={meta['vocab_size']}")
    use.append(f"model.vocab_size={meta['vocab_size']}")
    if args.json:
        keys = ("tokenizer", "vocab_size", "seq_len", "val_bytes_per_token", "entropy_floor_bits_per_byte",
                "source", "train_documents", "val_documents", "train_tokens", "val_tokens", "train_windows",
                "val_windows")
        print(dumps({"out": str(out), **{k: meta[k] for k in keys}, "overrides": use}))
    else:
        print(f"prepared {out}: {meta['train_windows']} training and {meta['val_windows']} validation "
              f"windows of {meta['seq_len']} {meta['tokenizer']} tokens (vocabulary {meta['vocab_size']}, "
              f"{meta['val_bytes_per_token']:.3f} bytes/token) from {meta['source']}")
        print(f"train from it with: {' '.join(use)}")
    return 0


def add_command(sub, epilog: str) -> None:
    """`jaxorder data` on the CLI's subcommands (argparse; kept here beside what it runs)."""
    p = sub.add_parser("data", help="prepare a tokenized TFDS ArrayRecord dataset for training at scale, or "
                                    "read an order off the data's pairwise statistics",
                       description="`data prepare --out DIR`: load the documents picked by the data.* "
                                   "overrides (embedded corpus, data.source=text data.path=FILE_OR_DIR of "
                                   ".txt/.md/.jsonl files, or a synthetic task), split them by document, "
                                   "build the tokenizer (data.tokenizer=bpe: learned from the training "
                                   "documents), pack windows of data.seq_len tokens and write them as a TFDS "
                                   "dataset in ArrayRecord format with metadata.json and tokenizer.json. "
                                   "Train from it with data.source=prepared data.path=DIR. `data order "
                                   "[--out FILE]`: the chain of positions through the strongest mutual "
                                   "information between the tokens at two positions of the training "
                                   "windows (after data.transform), oriented toward reading order, printed "
                                   "and written as a perm file for objective.q_init=perm@FILE.",
                       epilog=epilog)
    p.add_argument("what", choices=["prepare", "order"], help="the data command (prepare | order)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted data.* overrides picking the source")
    p.add_argument("--out", help="prepare: the new dataset directory (must not exist or be empty); "
                                 "order: the perm file to write (optional)")
    p.add_argument("--windows", type=int, default=100_000,
                   help="order: at most this many training windows, spread over the set (default 100000)")
    p.add_argument("--config", help="read the data section from this experiment YAML first")
    p.add_argument("--json", action="store_true",
                   help="print the dataset summary as one JSON object on stdout")
    p.set_defaults(func=run_command)
