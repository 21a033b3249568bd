"""Run `hybrid.train` and fail it at a chosen moment, for tests/test_faults.py.

    python tests/fault_runner.py WHERE N SIGNAL -- TRAIN_ARGS...

WHERE is where the signal is sent, at its N-th occurrence (1-based):
  step        before a training step's batch is made (mid-epoch)
  checkpoint  while a checkpoint (.pt) is written: half its bytes are on disk
  metrics     just after an epoch's metrics.jsonl line, before its checkpoints
  evaluation  when the final evaluation scores its first domain
SIGNAL is KILL or INT. The patches live here, not in the project: the code under test is unchanged.
"""

from __future__ import annotations

import os
import signal
import sys


def _trip(n: int, sig: int):
    calls = {"n": 0}

    def maybe_fire() -> None:
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), sig)

    return maybe_fire


def _patch(where: str, fire) -> None:
    import hybrid.fit as fit
    import hybrid.rundir as rundir
    import hybrid.train as train

    if where == "step":
        make_batch = fit.make_batch
        fit.make_batch = lambda *a, **k: (fire(), make_batch(*a, **k))[1]
    elif where == "checkpoint":
        write_bytes = rundir.write_bytes

        def half_write(data: bytes, path) -> None:
            if str(path).endswith(".pt"):  # the temporary file gets half, then the signal may come
                with open(f"{path}.tmp", "wb") as fh:
                    fh.write(data[: len(data) // 2])
                    fh.flush()
                    fire()
            write_bytes(data, path)

        rundir.write_bytes = half_write
    elif where == "metrics":
        append_line = fit.append_line
        fit.append_line = lambda *a, **k: (append_line(*a, **k), fire())[0]
    elif where == "evaluation":
        evaluate_domains = train.evaluate_domains
        train.evaluate_domains = lambda *a, **k: (fire(), evaluate_domains(*a, **k))[1]
    else:
        raise SystemExit(f"unknown fault point {where!r}")


def main(argv: list[str]) -> int:
    where, n, sig, sep, *train_args = argv
    assert sep == "--"
    # A shell starts background jobs with SIGINT ignored, and Python keeps an ignored SIGINT, so a
    # suite launched with `cmd &` would never see Ctrl-C; restore what a terminal's Ctrl-C meets.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _patch(where, _trip(int(n), {"KILL": signal.SIGKILL, "INT": signal.SIGINT}[sig]))
    from hybrid import train

    return train.main(train_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
