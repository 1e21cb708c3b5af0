"""Sequence data and experiments: the adding problem, images as row sequences, tfds text under
mock data (tiny_shakespeare, imdb_reviews, seq_mnist), and end-to-end training runs."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments import adding_problem, char_rnn, imdb_lstm, seq_mnist
from jdl import train_and_evaluate
from jdl.config import validate_config
from jdl.data import DATASETS, pad_batch
from jdl.data.embedded import digits_splits
from jdl.data.sequences import ADDING_TRIVIAL_MSE, adding_problem_arrays
from jdl.data.tfds_text import build_vocabulary, char_chunks, pad_or_truncate
from jdl.metrics import read_records
from jdl.tasks import make_task

BATCHING = {"batch_size": 8, "eval_batch_size": 16, "seed": 0}


def test_adding_problem_marks_one_number_per_half_and_targets_their_sum():
    data = adding_problem_arrays(5_000, 20, seed=3)
    values, markers = data["sequence"][..., 0], data["sequence"][..., 1]
    assert data["sequence"].shape == (5_000, 20, 2) and data["sequence"].dtype == np.float32
    np.testing.assert_array_equal(markers[:, :10].sum(1), 1)
    np.testing.assert_array_equal(markers[:, 10:].sum(1), 1)
    np.testing.assert_allclose(data["target"], (values * markers).sum(1), rtol=1e-6)
    # Predicting the mean (1) scores the trivial MSE 1/6.
    assert np.mean((data["target"] - 1.0) ** 2) == pytest.approx(ADDING_TRIVIAL_MSE, abs=0.01)
    same, other = adding_problem_arrays(5_000, 20, seed=3), adding_problem_arrays(5_000, 20, seed=4)
    np.testing.assert_array_equal(same["target"], data["target"])
    assert not np.array_equal(other["target"], data["target"])


def test_adding_problem_dataset_pads_float_targets_for_evaluation():
    dataset = DATASETS["adding_problem"](seq_len=7, num_train=40, num_eval=20, **BATCHING)
    assert dataset.info.input_shape == (7, 2) and dataset.info.input_key == "sequence"
    batches = list(dataset.eval_batches())
    assert [b["mask"].sum() for b in batches] == [16, 4]
    last = batches[-1]
    assert last["target"].dtype == np.float32 and last["target"].shape == (16,)
    np.testing.assert_array_equal(last["target"][4:], 0.0)


def test_pad_batch_pads_every_entry_along_its_first_axis():
    batch = {"tokens": np.ones((2, 3), np.int32), "target": np.ones((2, 4), np.float32)}
    padded = pad_batch(batch, 5)
    assert padded["tokens"].shape == (5, 3) and padded["target"].shape == (5, 4)
    np.testing.assert_array_equal(padded["mask"], [1, 1, 0, 0, 0])


def test_seq_digits_reads_each_image_row_as_a_time_step():
    dataset = DATASETS["seq_digits"](**BATCHING)
    assert dataset.info.input_shape == (8, 8) and dataset.info.input_key == "sequence"
    x_train = digits_splits()[0]
    np.testing.assert_array_equal(dataset.train_arrays()["sequence"], x_train[..., 0])
    first = next(dataset.eval_batches())
    assert first["sequence"].shape == (16, 8, 8) and first["label"].shape == (16,)


def test_text_helpers():
    np.testing.assert_array_equal(char_chunks(np.arange(8), 3), [[0, 1, 2, 3], [3, 4, 5, 6]])
    padded = pad_or_truncate([[5, 6, 7], [], [8]], 2)
    np.testing.assert_array_equal(padded["tokens"], [[6, 7], [0, 0], [8, 0]])
    np.testing.assert_array_equal(padded["length"], [2, 1, 1])
    vocabulary = build_vocabulary(["b a b<br />C", "a b"], size=4)
    assert vocabulary == ("<pad>", "<unk>", "b", "a")


def test_tiny_shakespeare_windows_overlap_by_one_character(tmp_path):
    with tfds.testing.mock_data(num_examples=10):
        dataset = DATASETS["tiny_shakespeare"](seq_len=16, data_dir=str(tmp_path), **BATCHING)
    tokens = dataset.train_arrays()["tokens"]
    assert tokens.shape[1] == 17 and dataset.info.num_classes == len(dataset.vocabulary)
    np.testing.assert_array_equal(tokens[1:, 0], tokens[:-1, -1])
    assert dataset.vocabulary[0] == "\ufffd" and list(dataset.vocabulary[1:]) == sorted(
        dataset.vocabulary[1:]
    )


def test_imdb_words_vocabulary_is_saved_and_reused_and_bytes_need_none(tmp_path):
    vocab_file = tmp_path / "run" / "vocab.json"
    with tfds.testing.mock_data(num_examples=12):
        words = DATASETS["imdb_reviews"](max_len=6, vocab_file=str(vocab_file), **BATCHING)
        vocab_file.write_text(json.dumps(["<pad>", "<unk>", "zzz"]))  # read back, not rebuilt
        reread = DATASETS["imdb_reviews"](max_len=6, vocab_file=str(vocab_file), **BATCHING)
        raw = DATASETS["imdb_reviews"](max_len=6, tokenizer="bytes", **BATCHING)
        with pytest.raises(ValueError, match="Unknown tokenizer 'chars'"):
            DATASETS["imdb_reviews"](tokenizer="chars", **BATCHING)
    batch = next(words.eval_batches())
    assert set(batch) == {"tokens", "length", "label", "mask"}
    assert batch["tokens"].shape == (16, 6) and words.info.input_key == "tokens"
    assert len(words.vocabulary) > 3 and reread.vocabulary == ("<pad>", "<unk>", "zzz")
    assert raw.train_arrays()["tokens"].max() <= 256 and len(raw.vocabulary) == 257


@pytest.mark.parametrize("experiment", [adding_problem, seq_mnist, imdb_lstm, char_rnn])
def test_every_config_uses_only_the_shared_vocabulary(experiment):
    validate_config(experiment.get_config())


@pytest.mark.parametrize(
    ("cell", "max_mse"), [("lstm", 0.03), ("rnn", None)], ids=["lstm", "simple-rnn"]
)
def test_adding_problem_end_to_end(tmp_path, cell, max_mse):
    """At T = 10 the LSTM beats the trivial MSE 0.167 by far within seconds."""
    config = adding_problem.get_config()
    config.data.update(seq_len=10, num_train=3_200, num_eval=500)
    config.model.update(cell=cell, hidden_size=16)
    config.update(num_epochs=6, learning_rate=1e-2, eval_every=0, progress_bar=False)
    result = train_and_evaluate(config, tmp_path)
    assert result.metrics["step"] == 6 * 3_200 // 64
    if max_mse is not None:
        assert result.metrics["eval/loss"] < max_mse
    assert result.metrics["eval/loss"] < ADDING_TRIVIAL_MSE


def mock_config(experiment, tmp_path, **model):
    config = experiment.get_config()
    config.model.update(hidden_size=8, **model)
    config.update(
        num_epochs=1,
        batch_size=8,
        eval_batch_size=16,
        warmup_steps=1,
        log_every=2,
        progress_bar=False,
        data_dir=str(tmp_path / "tfds"),
    )
    return config


def test_char_rnn_trains_on_mock_tfds_and_saves_sampled_text(tmp_path, capsys):
    config = mock_config(char_rnn, tmp_path, num_layers=1)
    config.data.seq_len = 16
    config.task.update(sample_tokens=40, prompt="a")
    with tfds.testing.mock_data(num_examples=40):
        result = train_and_evaluate(config, tmp_path / "run")
    sample = (tmp_path / "run" / "samples" / "epoch_1.txt").read_text()
    assert len(sample) == 41 and sample.startswith("a")
    assert sample in capsys.readouterr().out
    assert records_end_with(tmp_path / "run", result, "eval/loss")


def test_imdb_lstm_trains_on_mock_tfds_with_lengths(tmp_path):
    config = mock_config(imdb_lstm, tmp_path, embed_dim=8)
    config.data.update(max_len=12, vocab_file=str(tmp_path / "run" / "vocab.json"))
    with tfds.testing.mock_data(num_examples=48):
        result = train_and_evaluate(config, tmp_path / "run")
    assert (tmp_path / "run" / "vocab.json").exists()
    correct = result.metrics["eval/accuracy"] * 48  # each of the 48 mock reviews counted once
    assert correct == pytest.approx(round(correct), abs=1e-3)
    assert records_end_with(tmp_path / "run", result, "eval/accuracy")


def test_seq_mnist_on_mock_tfds_and_a_prompt_outside_the_vocabulary(tmp_path):
    config = mock_config(seq_mnist, tmp_path)
    with tfds.testing.mock_data(num_examples=32):
        result = train_and_evaluate(config, tmp_path / "run")
        assert result.metrics["step"] == 4
        lm = mock_config(char_rnn, tmp_path)
        lm.task.prompt = "~"
        dataset = DATASETS["tiny_shakespeare"](seq_len=8, data_dir=lm.data_dir, **BATCHING)
    with pytest.raises(ValueError, match="must be non-empty text of the vocabulary"):
        make_task(validate_config(lm), dataset)


def records_end_with(workdir, result, name: str) -> bool:
    return read_records(workdir / "metrics.jsonl")[-1][name] == pytest.approx(result.metrics[name])
