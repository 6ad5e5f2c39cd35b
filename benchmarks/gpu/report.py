"""The last step of run.sh: gather what the stages left in OUTDIR into ``results.json`` and ``results.md``.

Reads ``probe.json`` (the device probe), ``stages.tsv`` (one line per stage: name, status, exit code, seconds,
log file, and the command run or why the stage was skipped) and, when the timing stage ran, ``epochs.json``.
Imports neither xpnet nor any GPU library.

    python benchmarks/gpu/report.py OUTDIR
"""

from __future__ import annotations

import json
import platform
import re
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

VERSIONS = ("numpy", "numba", "torch", "cupy-cuda13x", "cupy-cuda12x", "nvidia-cuda-nvrtc",
            "nvidia-cuda-nvrtc-cu12", "pytest", "pytest-benchmark")
PYTEST_SUMMARY = re.compile(r"\b(\d+ (?:passed|failed|skipped|errors?|deselected|xfailed|xpassed)\b.* in [\d.]+s)")
MAX_SKIP_LINES = 30


def read_stages(outdir: Path) -> list[dict[str, Any]]:
    """The stages in the order they ran, each with the pytest summary line and skip reasons of its log."""
    path = outdir / "stages.tsv"
    stages = []
    for line in path.read_text().splitlines() if path.exists() else []:
        name, status, rc, seconds, log, detail = line.split("\t", 5)
        text = (outdir / log).read_text(errors="replace") if log and (outdir / log).exists() else ""
        summaries = PYTEST_SUMMARY.findall(text)
        stages.append({"name": name, "status": status, "exit_code": int(rc), "seconds": float(seconds), "log": log,
                       "detail": detail, "summary": summaries[-1] if summaries else "",
                       "skipped": [s for s in text.splitlines() if s.startswith("SKIPPED")][:MAX_SKIP_LINES]})
    return stages


def versions() -> dict[str, str]:
    """Installed versions of the packages the run depends on (absent ones left out)."""
    found = {"python": platform.python_version()}
    for name in VERSIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def overall(probe: dict[str, Any], stages: list[dict[str, Any]]) -> str:
    """"no-gpu" when the probe found no usable device, else "passed" when no stage failed, else "failed"."""
    if not probe.get("usable"):
        return "no-gpu"
    return "passed" if all(s["status"] in ("passed", "skipped") for s in stages) else "failed"


def epoch_table(epochs: dict[str, Any]) -> list[str]:
    """Markdown rows: xpnet's and PyTorch's seconds per epoch side by side for each (model, batch size)."""
    cells: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for row in epochs.get("rows", []):
        cells.setdefault((row["model"], row["batch_size"]), {})[row["framework"]] = row
    meta = epochs.get("meta", {})
    ours_on, theirs_on = meta.get("backend", "cupy"), meta.get("torch_device", "cuda")
    lines = [f"| model | batch | xpnet ({ours_on}) s/epoch | PyTorch ({theirs_on}) s/epoch | xpnet / PyTorch "
             "| xpnet first step s | PyTorch first step s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for (model, batch), pair in cells.items():
        ours, theirs = pair.get("xpnet", {}), pair.get("pytorch", {})
        ratio = (f"{ours['epoch_s'] / theirs['epoch_s']:.2f}" if "epoch_s" in ours and "epoch_s" in theirs
                 and theirs["epoch_s"] > 0 else "-")
        lines.append(f"| {model} | {batch} | {_seconds(ours)} | {_seconds(theirs)} | {ratio} "
                     f"| {_first(ours)} | {_first(theirs)} |")
    return lines


def _cell(text: str) -> str:
    """``text`` safe inside a markdown table cell."""
    return text.replace("|", "\\|")


def _seconds(row: dict[str, Any]) -> str:
    """A row's seconds per epoch, or why it has none."""
    return f"{row['epoch_s']:.2f}" if "epoch_s" in row else f"not measured ({row.get('error', 'no row')})"


def _first(row: dict[str, Any]) -> str:
    """A row's first-step seconds, or a dash."""
    return f"{row['first_step_s']:.2f}" if "first_step_s" in row else "-"


def markdown(results: dict[str, Any]) -> str:
    """results.md: status, device, stages, and the epoch table when there is one."""
    probe, status = results["probe"], results["status"]
    skipped = [line for s in results["stages"] for line in s["skipped"]]
    if status == "no-gpu":
        status = f"no usable GPU: {probe.get('reason')}"
    elif skipped:
        status += ", with skipped tests (listed below)"
    lines = ["# xpnet on a GPU: benchmarks/gpu/run.sh", "", f"- **Status**: {status}",
             f"- **When**: {results['finished_utc']}",
             f"- **Device**: {json.dumps(probe['device']) if probe.get('device') else 'none'}",
             f"- **Versions**: {', '.join(f'{k} {v}' for k, v in results['versions'].items())}", "",
             "## Stages", "", "| stage | status | seconds | summary |", "|---|---|---:|---|"]
    for s in results["stages"]:
        skips = ", with skips (listed below)" if s["skipped"] else ""
        lines.append(f"| {s['name']} | {s['status']}{skips} (exit {s['exit_code']}) | {s['seconds']:.1f} "
                     f"| {_cell(s['summary'] or s['detail'])} |")
    epochs = results.get("epochs")
    if epochs:
        meta = epochs.get("meta", {})
        lines += ["", "## Seconds per training epoch", "",
                  f"{meta.get('data', '')}, {meta.get('dtype', '')}, Adam lr {meta.get('lr', '')}; each row the "
                  "median of its timed rounds over a subset, scaled to a full epoch (epochs.json has every round). "
                  f"PyTorch {meta.get('torch', '')} eager, cuDNN TF32 {meta.get('cudnn_allow_tf32')}, matmul TF32 "
                  f"{meta.get('matmul_allow_tf32')}, cudnn.benchmark {meta.get('cudnn_benchmark')}.", "",
                  *epoch_table(epochs)]
    if skipped:
        lines += ["", "## Skipped tests", "", *(f"- {line}" for line in skipped)]
    return "\n".join(lines) + "\n"


def main(outdir: str) -> int:
    out = Path(outdir)
    probe_path, epochs_path = out / "probe.json", out / "epochs.json"
    probe = json.loads(probe_path.read_text()) if probe_path.exists() else {"usable": False,
                                                                            "reason": "the probe wrote nothing"}
    stages = read_stages(out)
    finished = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    results = {"status": overall(probe, stages), "finished_utc": finished,
               "probe": probe, "versions": versions(), "stages": stages,
               "epochs": json.loads(epochs_path.read_text()) if epochs_path.exists() else None}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    print(f"results: {out / 'results.json'} and {out / 'results.md'} (status: {results['status']})")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
