"""benchmarks/bench_peer.py's measurement: CPU of the whole process tree, orphans included (a child
subreaper reaps what the measured process leaves behind), and the overlap of two kept sets.

The measurement runs in a subprocess: a subreaper in the pytest process would adopt (and reap) the
children of other fixtures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

# The measured command: its child forks a grandchild that burns ~1 CPU-second after both parents have
# exited (an orphan, as a fork-server worker or an extractor's sandbox child can be).
ORPHAN_MAKER = """
import os, time
child = os.fork()
if child == 0:
    if os.fork() == 0:
        time.sleep(0.2)
        end = time.process_time() + 1.0
        while time.process_time() < end:
            pass
        os._exit(0)
    os._exit(0)
os.waitpid(child, 0)
print("{}")
"""

MEASURE = """
import json, sys
sys.path.insert(0, {benchmarks!r})
import bench_peer
if {subreaper}:
    bench_peer.become_subreaper()
result = bench_peer.measure([sys.executable, "-c", {maker!r}], bench_peer.Path({log!r}))
print(json.dumps(result))
"""


def measured(tmp_path: Path, subreaper: bool) -> dict:
    code = MEASURE.format(benchmarks=str(BENCHMARKS), subreaper=subreaper, maker=ORPHAN_MAKER,
                          log=str(tmp_path / f"log-{subreaper}"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_cpu_of_an_orphaned_grandchild_is_counted_only_with_the_subreaper(tmp_path: Path):
    with_reaper = measured(tmp_path, subreaper=True)
    assert with_reaper["orphans_reaped"] == 1
    assert with_reaper["cpu_s"] >= 0.9
    without = measured(tmp_path, subreaper=False)
    assert without["cpu_s"] < 0.9  # what /usr/bin/time would report: the orphan's second is lost


def test_overlap_of_kept_sets_by_url():
    sys.path.insert(0, str(BENCHMARKS))
    import bench_peer

    result = bench_peer.overlap(["a", "b", "c"], ["b", "c", "d", "d"])
    assert (result["datatrove"], result["ours"], result["both"]) == (3, 3, 2)
    assert (result["only_datatrove"], result["only_ours"]) == (1, 1)
    assert result["examples_only_datatrove"] == ["a"] and result["examples_only_ours"] == ["d"]
