"""Summarize py-spy collapsed stacks: where the server's samples went.

    BENCH_PROFILE=bench/results/im.txt python -m bench burst --servers im --n 10000 --runs 1
    python -m bench.profile_summary bench/results/im.txt [FILTER]

Prints the functions with the most samples, by own time and by inclusive time;
FILTER keeps only stacks that contain that text (e.g. ``deliver``).
"""

from __future__ import annotations

import sys
from collections import Counter


def main(path: str, keep: str = "") -> None:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    with open(path) as fh:
        for line in fh:
            stack, _, count = line.rstrip().rpartition(" ")
            if keep and keep not in stack:
                continue
            n = int(count)
            frames = stack.split(";")
            total += n
            own[frames[-1]] += n
            for f in set(frames):
                inclusive[f] += n
    print(f"{total} samples")
    for title, counter in (("own", own), ("inclusive", inclusive)):
        print(f"-- {title}")
        for name, n in counter.most_common(25):
            print(f"{100 * n / total:5.1f}%  {name}")


if __name__ == "__main__":
    main(*sys.argv[1:])
