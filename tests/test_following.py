"""The live view of --wait, drawn on a terminal and in a log."""

import io
import time
from pathlib import Path

import pytest

from piunet_dist.core.config_load import load_config
from piunet_dist.launch.following import REFRESH, LiveView, Watched, wait_for
from piunet_dist.launch.submitting import make_executor

ROW = {
    "run": "a",
    "job": "1",
    "state": "RUNNING",
    "step": "2/8",
    "loss": "0.5",
    "val_cpsnr": "-",
    "samples_s": "3.0",
    "eta": "0:00:02",
}


def test_the_live_view_redraws_one_table_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    view = LiveView(screen)
    view.show([ROW, {**ROW, "run": "b"}])
    view.show([{**ROW, "step": "4/8"}, {**ROW, "run": "b"}])
    first, second = screen.getvalue().split("\x1b[3F\x1b[J")  # back up over the header and two rows
    assert first.splitlines()[0].split() == list(ROW) and len(first.splitlines()) == 3
    assert second.splitlines()[1].split()[3] == "4/8"


def test_in_a_log_a_run_gets_a_line_when_its_state_validation_or_tenth_of_steps_changes():
    log = io.StringIO()
    view = LiveView(log)
    view.show([ROW])
    view.show([{**ROW, "eta": "0:00:01"}])  # nothing worth a line
    view.show([{**ROW, "step": "4/8"}])  # another tenth of the run
    view.show([{**ROW, "step": "4/8", "val_cpsnr": "40.100"}])
    assert log.getvalue().splitlines() == [
        "a: job 1 RUNNING, step 2/8, loss 0.5, 3.0 samples/s, ETA 0:00:02",
        "a: job 1 RUNNING, step 4/8, loss 0.5, 3.0 samples/s, ETA 0:00:02",
        "a: job 1 RUNNING, step 4/8, loss 0.5, val cPSNR 40.100 dB, 3.0 samples/s, ETA 0:00:02",
    ]


def _sleep_until(deadline: float, ended: Path) -> None:
    time.sleep(max(0.0, deadline - time.time()))
    ended.write_text(str(time.time()))


@pytest.mark.processes
def test_a_local_job_is_seen_to_end_at_the_next_redraw(tmp_path, monkeypatch):
    # SLURM is asked at the first redraw after its pause, which grows 1.5x from 2 s: 0, 4, 10, 18 s
    # into the wait. A job that ends at 12.5 s, if asked only then, would hold the next phase back 5.5 s
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what a local executor sets for its processes, undone after
    executor = make_executor(load_config(None, ["launch.cpus_per_task=1"]), tmp_path, "sleeper", "local")
    job = executor.submit(_sleep_until, time.time() + 12.5, tmp_path / "ended")
    assert wait_for([Watched(job, "sleeper")]) == 0
    assert time.time() - float((tmp_path / "ended").read_text()) < REFRESH + 2
