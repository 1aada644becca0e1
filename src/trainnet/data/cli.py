"""`trainnet data`: prepare token datasets and inspect them.

    trainnet data prepare ~/texts/ --out data/prepared --tokenizer bpe:4096
    trainnet data prepare rows.jsonl --field text --out data/rows --tokenizer path/tokenizer.json
    trainnet data prepare docs.parquet --out data/docs --shard-tokens 65536 --val-every 20
    trainnet data prepare saved_dataset/ --split train --out data/saved
    trainnet data info data/prepared

Then point a run at it: `[data] path = "data/prepared"` (and, for a BPE tokenizer, `[model] tokenizer =
"data/prepared"` with a vocabulary at least as large).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from trainnet.data.sources import SourceError
from trainnet.data.token_corpus import PreparedDataError, load_prepared
from trainnet.data.tokenizing import TokenizerError


@click.group("data")
def data_cmd() -> None:
    """Prepare token datasets (text, jsonl, parquet, datasets folders) and inspect them."""


@data_cmd.command("prepare")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder to write the shards to.")
@click.option("--tokenizer", default="bytes", show_default=True,
              help="bytes | bpe:VOCAB (train a byte-level BPE on SRC, offline) | a tokenizer.json or a folder with one.")
@click.option("--field", default="text", show_default=True, help="Text field of jsonl rows / parquet and datasets columns.")
@click.option("--split", default=None, help="Split of a saved DatasetDict (default: train, or its only split).")
@click.option("--shard-tokens", type=click.IntRange(min=2), default=131_072, show_default=True)
@click.option("--val-every", type=click.IntRange(min=2), default=50, show_default=True,
              help="Every Nth shard is held out for validation.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None, help="Stop after this many tokens.")
@click.option("--bpe-sample-mb", type=click.IntRange(min=1), default=256, show_default=True,
              help="Text (MiB) the BPE is trained on: the start of SRC.")
@click.option("--overwrite", is_flag=True, help="Replace a prepared dataset already in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def prepare_cmd(src: Path, out: Path, tokenizer: str, field: str, split: str | None, shard_tokens: int,
                val_every: int, max_tokens: int | None, bpe_sample_mb: int, overwrite: bool, quiet: bool) -> None:
    """Stream SRC (text file or folder, jsonl, parquet, datasets save_to_disk folder) into token shards."""
    from trainnet.data.prepare import prepare

    try:
        corpus = prepare(src, out, tokenizer=tokenizer, field=field, split=split, shard_tokens=shard_tokens,
                         val_every=val_every, max_tokens=max_tokens, bpe_sample_bytes=bpe_sample_mb << 20,
                         overwrite=overwrite, quiet=quiet)
    except (SourceError, TokenizerError, PreparedDataError) as exc:
        raise click.ClickException(str(exc)) from None
    _summary(corpus)


@data_cmd.command("info")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print corpus.info() as JSON.")
def info_cmd(path: Path, as_json: bool) -> None:
    """Summarize a prepared dataset (shards, tokens, tokenizer, root hash)."""
    try:
        corpus = load_prepared(path)
    except PreparedDataError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(corpus.info(), indent=1))
    else:
        _summary(corpus)


def _summary(corpus) -> None:  # type: ignore[no-untyped-def]
    info = corpus.info()
    man = corpus.manifest
    text = sum(e.text_bytes for e in man.shards)
    tok = info["tokenizer"]
    click.echo(f"{corpus.root}: {len(corpus)} shards ({len(man.ids('train'))} train, {len(man.ids('val'))} val), "
               f"{info['ntokens']:,} tokens ({info['dtype']}), {text:,} bytes of text "
               f"({text / max(info['ntokens'], 1):.2f} bytes/token)")
    click.echo(f"tokenizer {tok['kind']} vocab {tok['vocab_size']:,} sha256 {tok['sha256'][:16]}; "
               f"root hash {info['root_hash'][:16]}")
