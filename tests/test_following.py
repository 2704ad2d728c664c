"""The live view of --wait, drawn on a terminal and in a log."""

import io

from piunet_dist.launch.following import LiveView

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
