"""Moves a child process's real clock along with a clock-shifted test run.

Python imports ``sitecustomize`` at start-up.  When ``FUNNEL_TEST_NOW`` is set,
tests/conftest.py puts this folder on ``PYTHONPATH`` and exports
``TIME_TRAVEL_OFFSET`` (seconds between the shifted and the real clock), so a
``funnel send`` or ``funnel worker`` started by a test lives at the same
shifted instant as the test process.  Without that variable it does nothing.
"""

import os

_offset = os.environ.get("TIME_TRAVEL_OFFSET")
if _offset:
    import time

    import time_machine

    time_machine.travel(time.time() + float(_offset), tick=True).start()
