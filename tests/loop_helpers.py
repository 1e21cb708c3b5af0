"""A small, fast training config shared by the end-to-end tests."""

from experiments import digits_cnn


def small_config(**overrides):
    """The digits quickstart shrunk to a few seconds: a narrow CNN for a few epochs."""
    c = digits_cnn.get_config()
    c.model.widths = (16, 32)
    c.learning_rate = 1e-2
    c.label_smoothing = 0.0
    c.num_epochs = 3
    c.batch_size = 64
    c.eval_batch_size = 96  # does not divide the 360 test images
    c.warmup_steps = 5
    c.log_every = 5
    c.progress_bar = False
    c.data_on_device = False
    for key, value in overrides.items():  # assignment, so a `model` dict replaces the model
        c[key] = value
    return c
