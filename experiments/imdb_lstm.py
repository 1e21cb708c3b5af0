"""IMDB sentiment (tfds imdb_reviews): word ids -> embedding -> bidirectional LSTM ->
masked mean over the review's words -> one logit. The vocabulary (20,000 words of the train
split) is saved to the vocab_file given, and read back from it on resume.

    python -m experiments.imdb_lstm --workdir runs/imdb \
        --config.data.vocab_file=runs/imdb/vocab.json
"""

import ml_collections

from jdl.config import base_config


def get_config():
    c = base_config()
    c.dataset = "imdb_reviews"
    vocab_size = ml_collections.FieldReference(20_000)
    c.data = ml_collections.ConfigDict(
        {
            "max_len": 256,  # words kept per review (its end), padded at the end
            "tokenizer": "words",  # words | bytes
            "vocab_size": vocab_size,
            "vocab_file": ml_collections.FieldReference(None, field_type=str),
        }
    )
    c.model = ml_collections.ConfigDict(
        {
            "name": "rnn",
            "cell": "lstm",
            "hidden_size": 64,
            "num_layers": 1,
            "dropout_rate": 0.3,  # before the head (and between layers)
            "bidirectional": True,
            "pooling": "mean",  # over the valid words only
            "vocab_size": vocab_size,  # the data's (ids < vocab_size)
            "embed_dim": 64,
        }
    )
    c.num_epochs = 3
    c.batch_size = 64
    c.eval_batch_size = 500
    c.optimizer = "adamw"
    c.learning_rate = 2e-3
    c.schedule = "warmup_cosine"
    c.warmup_steps = 100
    c.weight_decay = 1e-4
    c.grad_clip_norm = 1.0
    c.log_every = 50
    return c


if __name__ == "__main__":
    from experiments.cli import run

    run(get_config)
