"""Character language model on tfds tiny_shakespeare (Karpathy's char-rnn): embedding ->
2-layer LSTM -> next-character logits. After every evaluation it prints and saves 500
sampled characters in DIR/samples/epoch_<N>.txt.

    python -m experiments.char_rnn --workdir runs/char_rnn --config.data_dir=~/tensorflow_datasets
"""

import ml_collections

from jdl.config import base_config


def get_config():
    c = base_config()
    c.dataset = "tiny_shakespeare"
    c.data = ml_collections.ConfigDict({"seq_len": 128})  # characters per training window
    c.task = ml_collections.ConfigDict(
        {
            "name": "language_model",
            "sample_tokens": 500,  # characters sampled after each evaluation
            "prompt": "ROMEO:",
            "temperature": 0.8,
            "top_k": 0,  # 0: sample from the whole vocabulary
        }
    )
    c.model = ml_collections.ConfigDict(
        {
            "name": "rnn_lm",
            "cell": "lstm",  # rnn | lstm | gru
            "hidden_size": 256,
            "num_layers": 2,
            "dropout_rate": 0.2,
            "embed_dim": 64,
        }
    )
    c.num_epochs = 15  # 15 x 243 steps of 32 windows
    c.batch_size = 32
    c.eval_batch_size = 128
    c.optimizer = "adam"
    c.learning_rate = 2e-3
    c.schedule = "warmup_cosine"
    c.warmup_steps = 100
    c.grad_clip_norm = 1.0
    c.best_metric = "eval/loss"  # nats per character
    c.log_every = 50
    return c


if __name__ == "__main__":
    from experiments.cli import run

    run(get_config)
