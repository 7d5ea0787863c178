"""moto's server with a cheaper clock, for the local stack's SQS.

moto's SQS asks the time, through two datetime conversions, for every message of the
queue on every receive; with a few hundred messages waiting a receive took over a second.
`time.time()` gives the same epoch seconds at a fraction of the cost.
"""
from __future__ import annotations

import time

import moto.core.utils
import moto.sqs.models
from moto.server import main

_datetime_unix_time = moto.core.utils.unix_time


def unix_time(dt=None) -> float:
    return time.time() if dt is None else _datetime_unix_time(dt)


def unix_time_millis(dt=None) -> float:
    return unix_time(dt) * 1000.0


for module in (moto.core.utils, moto.sqs.models):
    module.unix_time = unix_time
    module.unix_time_millis = unix_time_millis

if __name__ == "__main__":
    main()
