"""tfds text datasets as token arrays: `imdb_reviews` (sentiment) and `tiny_shakespeare`
(character language model).

Both are small enough to tokenise once into NumPy and serve as in-memory `TextDataset`s,
which then batch, shuffle and shard exactly like `jdl.data.from_arrays`. Vocabularies are
built from the train split only.
"""

import collections
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jdl.data.arrays import ArrayDataset
from jdl.data.dataset import Batch, DatasetInfo
from jdl.data.tfds_data import _tf_and_tfds, prepared_builder

PAD, UNKNOWN = 0, 1  # word ids 0 and 1; words start at 2


class TextDataset(ArrayDataset):
    """Token arrays with the `vocabulary` that maps ids to strings (id i is vocabulary[i])."""

    def __init__(self, info: DatasetInfo, train: Batch, eval_split: Batch, vocabulary, **batching):
        super().__init__(info, train, eval_split, **batching)
        self.vocabulary = tuple(vocabulary)

    def decode(self, ids: Sequence[int], separator: str = "") -> str:
        return separator.join(self.vocabulary[int(i)] for i in ids)


def _split_examples(builder, split: str) -> list[dict]:
    """Every example of a prepared split as NumPy, read once."""
    _, tfds = _tf_and_tfds()
    return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


def _texts(examples: list[dict]) -> list[str]:
    return [example["text"].decode("utf-8") for example in examples]


# --- tiny_shakespeare -------------------------------------------------------------------
def char_chunks(ids: np.ndarray, seq_len: int) -> np.ndarray:
    """[N, seq_len + 1] windows at stride seq_len: every id after the first is a target once."""
    num = (len(ids) - 1) // seq_len
    if num < 1:
        raise ValueError(f"A text of {len(ids)} characters is too short for seq_len {seq_len}")
    starts = np.arange(num)[:, None] * seq_len
    return ids[starts + np.arange(seq_len + 1)[None, :]]


def load_tiny_shakespeare(
    *, seq_len: int = 128, data_dir: str | None = None, download: bool = True, **batching
) -> TextDataset:
    """tfds `tiny_shakespeare` as `tokens` [N, seq_len + 1] of character ids.

    The vocabulary is "\\ufffd" (id 0, any character absent from the train split) followed
    by the train split's characters in sorted order. Evaluation is on the validation split.
    """
    builder = prepared_builder("tiny_shakespeare", data_dir, download)
    train_text = "".join(_texts(_split_examples(builder, "train")))
    eval_text = "".join(_texts(_split_examples(builder, "validation")))
    vocabulary = ("\ufffd", *sorted(set(train_text)))
    index = {char: i for i, char in enumerate(vocabulary)}

    def encode(text: str) -> np.ndarray:
        return np.array([index.get(char, 0) for char in text], np.int32)

    train = {"tokens": char_chunks(encode(train_text), seq_len)}
    eval_split = {"tokens": char_chunks(encode(eval_text), seq_len)}
    info = DatasetInfo(
        name="tiny_shakespeare",
        input_shape=(seq_len,),
        num_classes=len(vocabulary),  # next-token classes
        num_train=len(train["tokens"]),
        num_eval=len(eval_split["tokens"]),
        input_key="tokens",
    )
    return TextDataset(info, train, eval_split, vocabulary, **batching)


# --- imdb_reviews -----------------------------------------------------------------------
_WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    """Lower-cased words and numbers; the reviews' HTML line breaks are spaces."""
    return _WORD.findall(text.lower().replace("<br />", " "))


def build_vocabulary(texts: Sequence[str], size: int) -> tuple[str, ...]:
    """ "<pad>", "<unk>", then the `size` - 2 most frequent words (ties by spelling)."""
    counts = collections.Counter(word for text in texts for word in words(text))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ("<pad>", "<unk>", *(word for word, _ in ranked[: size - 2]))


def _word_vocabulary(texts: Sequence[str], size: int, vocab_file: str | None) -> tuple:
    """The vocabulary read from `vocab_file` if it exists; else built, and saved there."""
    if vocab_file and Path(vocab_file).exists():
        return tuple(json.loads(Path(vocab_file).read_text()))
    vocabulary = build_vocabulary(texts, size)
    if vocab_file:
        Path(vocab_file).parent.mkdir(parents=True, exist_ok=True)
        Path(vocab_file).write_text(json.dumps(vocabulary))
    return vocabulary


def pad_or_truncate(sequences: Sequence[Sequence[int]], max_len: int) -> Batch:
    """`tokens` [N, max_len] (the last max_len ids of each, zero-padded at the end) and
    `length` [N] (at least 1, so an empty text is one pad token)."""
    tokens = np.zeros((len(sequences), max_len), np.int32)
    lengths = np.ones(len(sequences), np.int32)
    for row, ids in enumerate(sequences):
        kept = list(ids)[-max_len:]
        tokens[row, : len(kept)] = kept
        lengths[row] = max(len(kept), 1)
    return {"tokens": tokens, "length": lengths}


def load_imdb_reviews(
    *,
    max_len: int = 256,
    tokenizer: str = "words",
    vocab_size: int = 20_000,
    vocab_file: str | None = None,
    data_dir: str | None = None,
    download: bool = True,
    **batching,
) -> TextDataset:
    """tfds `imdb_reviews` (25,000 train / 25,000 test reviews, label 1 = positive) as
    `tokens` [N, max_len], `length` [N] and `label` [N].

    `tokenizer` "words": ids of the `vocab_size` - 2 most frequent train-split words (0 pad,
    1 unknown), the vocabulary saved as JSON in `vocab_file` when given (and read from it if
    it exists, e.g. on resume); "bytes": UTF-8 bytes + 1 (0 pad), no vocabulary to build.
    Reviews longer than `max_len` keep their end, where reviewers tend to sum up.
    """
    builder = prepared_builder("imdb_reviews", data_dir, download)
    examples = {split: _split_examples(builder, split) for split in ("train", "test")}
    texts = {split: _texts(examples[split]) for split in examples}
    if tokenizer == "words":
        vocabulary = _word_vocabulary(texts["train"], vocab_size, vocab_file)
        index = {word: i for i, word in enumerate(vocabulary)}

        def encode(text: str) -> list[int]:
            return [index.get(word, UNKNOWN) for word in words(text)]

    elif tokenizer == "bytes":
        vocabulary = ("<pad>", *(chr(b) if 32 <= b < 127 else f"\\x{b:02x}" for b in range(256)))

        def encode(text: str) -> list[int]:
            return [b + 1 for b in text.encode("utf-8")]

    else:
        raise ValueError(f"Unknown tokenizer {tokenizer!r}; valid: 'words', 'bytes'")
    splits = {
        split: {
            **pad_or_truncate([encode(text) for text in texts[split]], max_len),
            "label": np.array([example["label"] for example in examples[split]], np.int32),
        }
        for split in texts
    }
    info = DatasetInfo(
        name="imdb_reviews",
        input_shape=(max_len,),
        num_classes=2,
        num_train=len(splits["train"]["label"]),
        num_eval=len(splits["test"]["label"]),
        input_key="tokens",
    )
    return TextDataset(info, splits["train"], splits["test"], vocabulary, **batching)
