"""``python tests/kill_job.py ROOT -- TRAIN ARGS``: kill a training run with SIGKILL at every rename, then resume it.

Run by tests/test_kill_resume.py. xpnet writes every file to a temporary and renames it into place (``os.replace``);
this job counts those renames in an uninterrupted run into ``ROOT/reference``, then for each rename N forks a
run into ``ROOT/kill-N`` that SIGKILLs itself just before rename N (and one that dies just after the last), copies
what the kill left to ``ROOT/kill-N.left`` for the test to inspect, and resumes the run in ``ROOT/kill-N`` the way a
user would (``--resume``, or the same command again when no checkpoint was written yet). Forking after the imports
keeps each of the ~20 runs to a fraction of a second. Prints JSON: the kill points and each resume's exit status.
"""

import json
import os
import shutil
import signal
import sys
from pathlib import Path

from xpnet import train

REAL_REPLACE = os.replace


def counting_replace(kill_before: int | None, kill_after: int | None, counter: list[int]):
    def replace(src, dst, *args, **kwargs):
        counter[0] += 1
        if counter[0] == kill_before:
            os.kill(os.getpid(), signal.SIGKILL)
        REAL_REPLACE(src, dst, *args, **kwargs)
        if counter[0] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    return replace


def in_child(work) -> int:
    """Run ``work()`` in a forked child; its exit status, or minus the signal that ended it."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = work()
        finally:
            sys.stdout.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def training(args: list[str], out: Path, kill_before=None, kill_after=None, counter=None):
    def work() -> int:
        os.replace = counting_replace(kill_before, kill_after, counter if counter is not None else [0])
        return train.main([*args, "--out", str(out)])

    return work


def main() -> int:
    split = sys.argv.index("--")
    root, args = Path(sys.argv[1]), sys.argv[split + 1:]
    counter = [0]
    os.replace = counting_replace(None, None, counter)  # count in this process: the reference runs here
    assert train.main([*args, "--out", str(root / "reference")]) == 0
    os.replace = REAL_REPLACE
    renames = counter[0]
    points = [("before", n) for n in range(1, renames + 1)] + [("after", renames)]
    results = []
    for when, n in points:
        folder = root / f"kill-{when}-{n}"
        killed = in_child(training(args, folder, **{f"kill_{when}": n}))
        shutil.copytree(folder, f"{folder}.left", symlinks=True)
        if any((folder / name).exists() for name in ("last.npz", "best.npz")):
            resumed = in_child(lambda: train.main(["--resume", str(folder)]))
        else:
            resumed = in_child(training(args, folder))
        results.append({"when": when, "rename": n, "folder": str(folder), "killed": killed, "resumed": resumed})
    print(json.dumps({"renames": renames, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
