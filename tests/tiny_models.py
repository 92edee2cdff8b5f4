"""Tiny, seeded, randomly initialised models for tests: built in well under a second, never downloaded.

They load through the ordinary sentence-transformers entry points (``CrossEncoder(dir)``,
``SentenceTransformer(dir)``), so code under test exercises the same loading path as with real models.
Their scores are meaningless; tests compare them against the library, never against relevance.
"""

from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Words common in test passages and queries (cities, population, museums, rivers, ...), plus punctuation and digits.
WORDS = """
a an the of in on at to for from by with about as and or but not no is are was were be been being has have had
do does did will would can could should may might must it its this that these those there here what which who
whom whose when where why how many much more most less least some any all each every other another such than
then so very also only just over under between into through during before after above below up down out off
again new old first last second third one two three four five six seven eight nine ten hundred thousand million
billion percent year years century day time people person population inhabitants residents citizens live lives
lived living home city cities town village capital country countries state nation region area district metropolitan
urban world europe european germany german berlin paris france french london england english britain british
rome italy italian madrid spain spanish vienna austria tokyo japan new york america american usa united kingdom
amsterdam netherlands munich hamburg river rivers rhine thames seine danube spree lake sea ocean mountain mountains
bridge bridges street park parks garden museum museums art gallery galleries history historical collection
collections exhibition painting paintings island famous known well largest large small biggest smallest
highest long longest built founded located situated visit visitors tourist tourists attraction attractions
culture cultural music theatre opera university universities school students science research library church
cathedral palace castle tower wall government parliament president king queen war peace trade economy
economic industry company companies market money bank price cost water food weather climate rain winter summer
spring autumn north south east west northern southern eastern western central border population density census
estimated estimate approximately about around roughly total number numbers grew growth increase decrease
according official statistics data report reported record recorded rank ranked second most populous populated
language languages spoken speak word words book books author wrote written novel story film films movie
computer computers software data search engine query queries document documents passage passages answer
answers question questions result results model models machine learning neural network cat cats dog dogs animal
animals bird birds fish tree trees plant plants flower flowers red blue green black white color
""".split()

SUFFIXES = ["##s", "##es", "##ed", "##ing", "##er", "##ers", "##est", "##ly", "##ion", "##al", "##an", "##ian", "##ity"]
PUNCTUATION = list(".,;:!?'\"()-/%$&")
DIGITS = list("0123456789") + ["##" + d for d in "0123456789"]


def write_tiny_vocab(directory: str | Path) -> Path:
    """Write a small WordPiece ``vocab.txt`` (special tokens, ~400 lowercase words, suffixes, digits) and return its path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokens = list(dict.fromkeys(SPECIAL_TOKENS + WORDS + SUFFIXES + PUNCTUATION + DIGITS))
    path = directory / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


def _tiny_bert_config(vocab_size: int, **extra):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=0.2,
        **extra,
    )


def _tokenizer(vocab_path: Path):
    from transformers import BertTokenizerFast

    # Positional: the vocab file path is the first parameter in both transformers 4 (vocab_file) and 5 (vocab).
    return BertTokenizerFast(str(vocab_path), do_lower_case=True, model_max_length=128)


def build_tiny_cross_encoder(directory: str | Path, seed: int = 0) -> Path:
    """Save a 2-layer, hidden-32 ``BertForSequenceClassification`` (num_labels=1) + tokenizer loadable by ``CrossEncoder(dir)``."""
    import torch
    from transformers import BertForSequenceClassification

    directory = Path(directory)
    vocab = write_tiny_vocab(directory)
    tokenizer = _tokenizer(vocab)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(_tiny_bert_config(len(tokenizer), num_labels=1)).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_tiny_bi_encoder(directory: str | Path, seed: int = 0) -> Path:
    """Save a tiny ``BertModel`` + mean-pooling ``SentenceTransformer`` (``.save(dir)``) loadable by ``SentenceTransformer(dir)``."""
    import tempfile

    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import BertModel

    directory = Path(directory)
    with tempfile.TemporaryDirectory() as backbone:
        tokenizer = _tokenizer(write_tiny_vocab(backbone))
        torch.manual_seed(seed)
        BertModel(_tiny_bert_config(len(tokenizer))).eval().save_pretrained(backbone)
        tokenizer.save_pretrained(backbone)
        # A plain transformers directory gets sentence-transformers' default Transformer + mean Pooling stack.
        SentenceTransformer(backbone, device="cpu").save(str(directory))
    return directory
