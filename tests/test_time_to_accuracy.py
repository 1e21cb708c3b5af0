"""The time-to-accuracy benchmark's whole-command row: its time counts only at the target."""

from benchmarks.time_to_accuracy import experiment_row


def test_whole_command_row_needs_the_target():
    row = experiment_row(
        "experiments.digits_cnn", ["--config.num_steps=4"], "digits", None, target=1.01
    )
    assert len(row["accuracies"]) == 1  # its one evaluation, read back from metrics.jsonl
    assert 0.0 < row["accuracies"][0] < 1.01
    assert row["seconds"] is None and "not reached" in row["note"]
