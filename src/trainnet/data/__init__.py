"""Corpora, shards, manifests and the byte tokenizer."""

from trainnet.data.corpus import Corpus, CorpusError, Shard, load_corpus
from trainnet.data.manifest import Manifest, ShardEntry
from trainnet.data.tokenizer import ByteTokenizer

__all__ = ["ByteTokenizer", "Corpus", "CorpusError", "Manifest", "Shard", "ShardEntry", "load_corpus"]
