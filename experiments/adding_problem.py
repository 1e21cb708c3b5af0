"""The adding problem (Hochreiter & Schmidhuber 1997): does the network carry a number
across T steps? The LSTM learns it; the simple tanh RNN stays at the trivial MSE 0.167.

    python -m experiments.adding_problem --workdir runs/adding_lstm
    python -m experiments.adding_problem --workdir runs/adding_rnn --config.model.cell=rnn
"""

import ml_collections

from jdl.config import base_config


def get_config():
    c = base_config()
    c.dataset = "adding_problem"
    c.data = ml_collections.ConfigDict(
        {
            "seq_len": 100,  # T: the two marked numbers lie in different halves
            "num_train": 20_000,  # generated once from data_seed
            "num_eval": 2_000,
            "data_seed": 0,
        }
    )
    c.task = ml_collections.ConfigDict({"name": "regression", "num_outputs": 1})
    c.model = ml_collections.ConfigDict(
        {
            "name": "rnn",
            "cell": "lstm",  # rnn | lstm | gru
            "hidden_size": 64,
            "num_layers": 1,
            "dropout_rate": 0.0,
            "bidirectional": False,
            "pooling": "last",  # the state after the last step predicts the sum
        }
    )
    c.batch_size = 64
    c.eval_batch_size = 500
    c.num_epochs = 4  # 1,248 steps
    c.optimizer = "adam"
    c.learning_rate = 3e-3
    c.grad_clip_norm = 1.0  # recurrent gradients can spike
    c.best_metric = "eval/loss"  # the MSE
    c.log_every = 100
    c.eval_every = 500
    return c


if __name__ == "__main__":
    from experiments.cli import run

    run(get_config)
