"""errors.run_script: how benchmarks and scripts end on bad input."""

import pytest

from lldiff_cli.errors import LldiffError, run_script


def test_run_script_turns_bad_input_into_one_line_and_lets_bugs_through():
    def bad_input():
        raise LldiffError("no such folder: x")

    with pytest.raises(SystemExit, match="^error: no such folder: x$"):
        run_script(bad_input)
    with pytest.raises(ZeroDivisionError):
        run_script(lambda: 1 / 0)
    run_script(lambda: None)
