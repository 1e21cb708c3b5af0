"""Metric files: a metrics.jsonl that a kill cut short is repaired, not fatal."""

import json
import logging

import pytest

from jdl.metrics import METRICS_FILE, MetricWriter, read_records

RECORDS = [{"step": 5, "epoch": 1, "train/loss": 0.5}, {"step": 10, "epoch": 1, "train/loss": 0.25}]


def write_file(workdir, text: str):
    path = workdir / METRICS_FILE
    path.write_text(text)
    return path


def test_a_last_line_cut_by_a_kill_is_dropped_with_a_warning(tmp_path, caplog):
    lines = "".join(json.dumps(r) + "\n" for r in RECORDS)
    path = write_file(tmp_path, lines + '{"step": 15, "epoch": 1, "train/lo')
    with caplog.at_level(logging.WARNING, "jdl.metrics"):
        assert read_records(path) == RECORDS
    assert "cut short" in caplog.text and '{"step": 15' in caplog.text


def test_a_resumed_writer_repairs_a_cut_file_before_appending(tmp_path):
    lines = "".join(json.dumps(r) + "\n" for r in RECORDS)
    path = write_file(tmp_path, lines + '{"step": 15, "ep')
    writer = MetricWriter(tmp_path, enabled=True)
    writer.write(15, 2, {"train/loss": 0.125})
    writer.close()
    expected = [*RECORDS, {"step": 15, "epoch": 2, "train/loss": 0.125}]
    assert [json.loads(line) for line in path.read_text().splitlines()] == expected


def test_a_damaged_line_before_the_last_is_an_error_naming_it(tmp_path):
    path = write_file(
        tmp_path, json.dumps(RECORDS[0]) + "\n{oops\n" + json.dumps(RECORDS[1]) + "\n"
    )
    with pytest.raises(ValueError, match=f"{path} line 2 is not a JSON record"):
        read_records(path)
