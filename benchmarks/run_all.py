#!/usr/bin/env python
# Copyright 2026 The specpatch authors. Licensed under the Apache License, Version 2.0.
"""Runs every benchmark of the project and writes their side-by-side ratios, with the machine, to RESULTS.md.

    python benchmarks/run_all.py                 # full run (tens of minutes on a 2-core CPU)
    python benchmarks/run_all.py --quick         # short run: fewer repeats, smaller batches, no slow HF backward
    python benchmarks/run_all.py --only features,specmask --output /tmp/RESULTS.md --json /tmp/results.json

Each benchmark script runs in its own process (as a user would run it), one after the other:

| key | script | what it compares, side by side in one process |
|---|---|---|
| `features` | `bench_features.py` | batched kaldi / log-mel front ends vs transformers' `ASTFeatureExtractor` |
| `specmask` | `bench_specmask.py` | batched SpecMask vs Algorithm 1 run sample by sample |
| `patching` | `bench_patching.py` | FFTP-AST (ViT-B) Table II patchings: patches, GMACs, latency vs square; vs transformers AST |
| `aum` | `bench_aum.py` | selective scan mixer vs transformers' `MambaMixer`; FFTP-AuM latency per patching |
| `sblu` | `bench_sblu.py` | SBLU convolution (chunked, custom backward) vs the direct form: time and peak memory |
| `aape` | `bench_aape.py` | AaPE patch-embedding parameter counts vs the paper; pre-training step, standard vs AaPE |

The printed output of every script is kept in RESULTS.md; the tables are parsed from it (or from the JSON the
script writes). Ratios compare across machines; absolute times are this machine's and are reported as such. While
each script runs, the CPU time that *other* processes take (all CPU time in `/proc/stat` minus this run's own) and
the hypervisor's steal time are recorded: the load average cannot tell a shared machine from the benchmarks' own
threads. On a shared machine absolute times suffer far more than the ratios, which every script measures with
interleaved or back-to-back runs.

On a CUDA machine (`--device cuda`, the default when one is visible) the scripts that take a device run on it, and a
GPU section adds absolute forward latency and throughput of the three models (`gpu_throughput`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(REPO, "benchmarks")
DEFAULT_OUTPUT = os.path.join(BENCHMARKS, "RESULTS.md")

# FFTP paper, Table III (AST, one A100): GFLOPs as printed (multiply-accumulates, see NOTES.md) and latency in ms.
PAPER_TABLE_III = {
    "square-1212": (103.35, 14.50),
    "fftp-96": (4.15, 0.96),
    "fftp-196": (17.30, 2.18),
    "fftp-248": (21.48, 2.62),
    "fftp-496": (42.79, 5.38),
    "fftp-991": (85.32, 11.62),
}
PRESET_ORDER = ["square-1212", "fftp-96", "fftp-196", "fftp-248", "fftp-496", "fftp-991"]


@dataclass
class Benchmark:
    """One benchmark script and its arguments for a full and a quick run (`{json}` is replaced by a JSON path)."""

    key: str
    script: str
    full_args: list[str]
    quick_args: list[str]
    device_arg: bool = False  # the script takes `--device`
    timeout_s: int = 3600


BENCHMARKS_TO_RUN = [
    Benchmark(
        "features",
        "bench_features.py",
        ["--json", "{json}"],
        ["--repeats", "2", "--max-rounds", "3", "--batch-size", "8", "--json", "{json}"],
    ),
    Benchmark(
        "specmask", "bench_specmask.py", ["--json", "{json}"], ["--max-rounds", "6", "--json", "{json}"], device_arg=True
    ),
    Benchmark(
        "patching",
        "bench_patching.py",
        ["--json", "{json}"],
        ["--repeats", "2", "--max-rounds", "3", "--json", "{json}"],
    ),
    Benchmark(
        "aum",
        "bench_aum.py",
        ["--json", "{json}"],
        [
            "--repeats", "1", "--model-repeats", "2", "--max-rounds", "3", "--skip-hf-backward",
            "--step-batch", "16", "--json", "{json}",
        ],
    ),  # fmt: skip
    Benchmark("sblu", "bench_sblu.py", [], ["--batch", "2", "--repeats", "1"]),
    Benchmark("export", "bench_export.py", ["--json", "{json}"], ["--repeats", "2", "--no-compile", "--json", "{json}"]),
    Benchmark("aape", "bench_aape.py", [], ["--repeats", "1", "--views", "2"], device_arg=True),
]


# Learning benchmarks: training runs of their own (tens of minutes each), run and reported separately.
SEPARATE_SCRIPTS = {
    "bench_from_scratch.py": "from-scratch learning benchmark (accuracy side by side), reported by its own run",
    "bench_ssl_probe.py": "self-supervised probing benchmark, reported by its own run",
}


@dataclass
class RunResult:
    key: str
    command: list[str]
    returncode: int
    seconds: float
    stdout: str
    stderr: str
    data: dict = field(default_factory=dict)  # JSON written by the script, if any
    parsed: dict = field(default_factory=dict)
    load_after: tuple | None = None  # 1, 5, 15-minute load average when the script finished
    other_load: dict | None = None  # {"other": cores, "steal": cores} of CPU not ours while it ran (`foreign_load`)


# ----------------------------------------------------------------------------------------------------------------------
# Machine
# ----------------------------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else platform's description."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """What the results depend on: CPU, cores, threads, library versions, GPU, load."""
    import torch
    import transformers

    info = {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import mamba_ssm  # noqa: F401

        info["mamba_ssm"] = True
    except ImportError:
        info["mamba_ssm"] = False
    return info


def cpu_snapshot() -> dict | None:
    """CPU seconds so far: `busy` (all cores, non-idle, from `/proc/stat`), `steal` (taken by the hypervisor) and
    `ours` (this process and its finished children), with the wall clock; `None` where `/proc/stat` is missing."""
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) / ticks for x in fields[1:9])
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "time": time.perf_counter(),
        "busy": user + nice + system + irq + softirq,
        "steal": steal,
        "ours": own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime,
    }


def foreign_load(before: dict | None, after: dict | None) -> dict | None:
    """Average number of cores that other processes (`other`) and the hypervisor (`steal`) took between two
    `cpu_snapshot`s: the load a benchmark competed with, which the load average mixes with its own threads."""
    if not before or not after or after["time"] <= before["time"]:
        return None
    seconds = after["time"] - before["time"]
    other = (after["busy"] - before["busy"]) - (after["ours"] - before["ours"])
    return {
        "other": round(max(0.0, other) / seconds, 2),
        "steal": round(max(0.0, after["steal"] - before["steal"]) / seconds, 2),
    }


def load_average() -> tuple[float, float, float] | None:
    try:
        return tuple(round(x, 2) for x in os.getloadavg())
    except (AttributeError, OSError):
        return None


# ----------------------------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------------------------


def run_benchmark(benchmark: Benchmark, quick: bool, device: str, workdir: str) -> RunResult:
    json_path = os.path.join(workdir, f"{benchmark.key}.json")
    args = [a.replace("{json}", json_path) for a in (benchmark.quick_args if quick else benchmark.full_args)]
    if benchmark.device_arg and device != "cpu":
        args += ["--device", device]
    command = [sys.executable, os.path.join(BENCHMARKS, benchmark.script), *args]
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    try:
        process = subprocess.run(
            command, capture_output=True, text=True, cwd=REPO, env=env, timeout=benchmark.timeout_s
        )
        returncode, stdout, stderr = process.returncode, process.stdout, process.stderr
    except subprocess.TimeoutExpired as err:
        returncode = -9
        stdout = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        stderr = f"timed out after {benchmark.timeout_s} s"
    result = RunResult(benchmark.key, command, returncode, time.perf_counter() - start, stdout, stderr)
    if os.path.isfile(json_path):
        with open(json_path) as handle:
            result.data = json.load(handle)
    result.parsed = PARSERS[benchmark.key](result.stdout, result.data)
    return result


# ----------------------------------------------------------------------------------------------------------------------
# Parsing the scripts' output (tolerant: a line that is not found leaves its value out, the raw output stays)
# ----------------------------------------------------------------------------------------------------------------------

_NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"


def _search(pattern: str, text: str, cast=float):
    match = re.search(pattern, text, flags=re.MULTILINE)
    if match is None:
        return None
    values = [cast(g.replace(",", "")) for g in match.groups()]
    return values[0] if len(values) == 1 else values


def _threads(text: str) -> int | None:
    return _search(r"(\d+) threads", text, int) or _search(r"torch threads (\d+)", text, int)


def parse_features(stdout: str, data: dict) -> dict:
    if data.get("speedups"):
        kaldi, logmel = data["speedups"]["kaldi"], data["speedups"].get("logmel", {})
        times = data["times"]
        return {
            "threads": data.get("threads"),
            "backend": data.get("backend"),
            "clips": data.get("clips"),
            "seconds": data.get("seconds"),
            "ast_s": round(times["ASTFeatureExtractor"]["median"], 3),
            "kaldi_s": round(times["SpecPatch kaldi"]["median"], 3),
            "kaldi_speedup": kaldi["median"],
            "kaldi_noisy": kaldi["noisy"],
            "logmel_s": round(times["SpecPatch logmel"]["median"], 3) if "SpecPatch logmel" in times else None,
            "logmel_speedup": logmel.get("median"),
            "logmel_noisy": logmel.get("noisy", False),
            "max_abs_difference": data.get("max_abs_difference"),
        }
    out = {"threads": _threads(stdout)}
    ast = _search(rf"^ASTFeatureExtractor\s+{_NUMBER}\s+", stdout)
    kaldi = _search(rf"^SpecPatch kaldi \(batched torch\)\s+{_NUMBER}\s+{_NUMBER}x", stdout)
    logmel = _search(rf"^SpecPatch logmel \(AaPE\)\s+{_NUMBER}\s+{_NUMBER}x", stdout)
    batch = _search(r"^batch: (\d+) clips x ([0-9.]+) s", stdout)
    if ast is not None:
        out["ast_s"] = ast
    if kaldi:
        out["kaldi_s"], out["kaldi_speedup"] = kaldi
    if logmel:
        out["logmel_s"], out["logmel_speedup"] = logmel
    if batch:
        out["clips"], out["seconds"] = int(batch[0]), batch[1]
    difference = _search(rf"max \|AST - ours\| = {_NUMBER}", stdout)
    if difference is not None:
        out["max_abs_difference"] = difference
    return out


def parse_specmask(stdout: str, data: dict) -> dict:
    if data.get("settings"):
        return {
            "threads": data.get("threads"),
            "device": data.get("device"),
            "settings": data["settings"],
        }
    out = {"threads": _threads(stdout)}
    batched = _search(rf"^SpecMask \(batched\)\s+{_NUMBER}", stdout)
    reference = _search(rf"^spec_mask_reference loop \(pure Python\)\s+{_NUMBER}\s+{_NUMBER}x", stdout)
    tensor = _search(rf"^tensor-slicing loop \(information\)\s+{_NUMBER}\s+{_NUMBER}x", stdout)
    batch = _search(r"batch (\d+) x 1000 frames", stdout, int)
    if batched is not None:
        out["batched_ms"] = batched
    if reference:
        out["reference_ms"], out["reference_speedup"] = reference
    if tensor:
        out["tensor_loop_ms"], out["tensor_loop_speedup"] = tensor
    if batch is not None:
        out["batch"] = batch
    return out


def parse_patching(stdout: str, data: dict) -> dict:
    out = {"threads": _search(r"batch \d+, (\d+) threads", stdout, int)}
    if data:
        out["rows"] = {row["config"]: row for row in data.get("rows", [])}
        out["transformers_ast_time_ratio"] = data.get("transformers_ast_time_ratio")
        out["fftp248_speedup"] = data.get("fftp248_speedup")
        out["noisy"] = data.get("noisy") or {}
    difference = _search(rf"max \|logit diff\| {_NUMBER}", stdout)
    if difference is not None:
        out["max_logit_difference"] = difference
    return out


def parse_aum(stdout: str, data: dict) -> dict:
    out = {"threads": _threads(stdout)}
    if data:
        out.update(data)
    size = _search(r"^2\. FFTP-AuM-(\w+) \(([\w-]+)\)", stdout, str)
    if size:
        out["size"], out["bimamba_type"] = size
    return out


def parse_sblu(stdout: str, data: dict) -> dict:
    out = {"threads": _threads(stdout)}
    batch = _search(r"^shape: batch (\d+) x", stdout, int)
    if batch is not None:
        out["batch"] = batch
    row = re.compile(
        rf"^(\w+)\s+{_NUMBER}\s+{_NUMBER}x\s+{_NUMBER}\s+{_NUMBER}x\s+(?:{_NUMBER}\s+{_NUMBER}|n/a)\s*$", re.MULTILINE
    )
    for section, title in (("adaptive", "Adaptive SBLU"), ("non_adaptive", "Non-adaptive SBLU")):
        start = stdout.find(title)
        if start < 0:
            continue
        end = stdout.find("\n\n", start)
        table = {}
        for match in row.finditer(stdout[start : end if end > 0 else None]):
            method, fwd, fwd_x, fb, fb_x, mem, mem_ratio = match.groups()
            table[method] = {
                "forward_ms": float(fwd),
                "forward_speedup": float(fwd_x),
                "forward_backward_ms": float(fb),
                "forward_backward_speedup": float(fb_x),
                "peak_mib": float(mem) if mem is not None else None,
                "memory_ratio": float(mem_ratio) if mem_ratio is not None else None,
            }
        out[section] = table
    return out


def parse_aape(stdout: str, data: dict) -> dict:
    out = {"threads": _search(r"device \S+, (\d+) threads", stdout, int)}
    counts = {}
    for match in re.finditer(
        rf"^(standard|aape_nonadaptive|aape)\s+([\d,]+)\s+{_NUMBER}M\s+{_NUMBER}\s*$", stdout, re.M
    ):
        counts[match.group(1)] = {"measured": int(match.group(2).replace(",", "")), "paper_m": float(match.group(3))}
    out["counts"] = counts
    steps = {}
    for match in re.finditer(
        rf"^(standard|aape_nonadaptive|aape)\s+{_NUMBER}\s+{_NUMBER}\s+{_NUMBER}\s+{_NUMBER}\s*$", stdout, re.M
    ):
        kind, step_s, clips, patch_tokens, student_tokens = match.groups()
        steps[kind] = {
            "step_s": float(step_s),
            "clips_per_s": float(clips),
            "patch_tokens_per_s": float(patch_tokens),
            "student_tokens_per_s": float(student_tokens),
        }
    out["steps"] = steps
    overhead = _search(rf"^aape overhead: {_NUMBER} % of its step time \(step time x{_NUMBER}", stdout)
    if overhead:
        out["overhead_percent"], out["step_ratio"] = overhead
        out["noisy"] = bool(re.search(r"^aape overhead: .*\(noisy", stdout, re.M))
    setting = _search(r"ViT-B, (\d+) clip\(s\) x (\d+) views, (\d+) frames", stdout, int)
    if setting:
        out["clips"], out["views"], out["frames"] = setting
    return out


def parse_export(stdout: str, data: dict) -> dict:
    """bench_export's JSON as it is (no summary row yet: its table is in the raw output)."""
    return dict(data)


PARSERS = {
    "export": parse_export,
    "features": parse_features,
    "specmask": parse_specmask,
    "patching": parse_patching,
    "aum": parse_aum,
    "sblu": parse_sblu,
    "aape": parse_aape,
}


# ----------------------------------------------------------------------------------------------------------------------
# GPU section: absolute latency and throughput of the three models
# ----------------------------------------------------------------------------------------------------------------------


def gpu_throughput(
    device: str = "cuda",
    batch_size: int = 32,
    repeats: int = 10,
    dtype: str = "bfloat16",
    overrides: dict | None = None,
    presets: list[str] | None = None,
) -> list[dict]:
    """Forward latency (ms per batch) and throughput (clips / s) of FFTP-AST (ViT-B), FFTP-AuM (base) and AaPE-ViT
    (ViT-B, 1024 frames) on `device`, under `torch.autocast(dtype)` in inference mode; median of `repeats` runs
    after two warm-up runs. `overrides` (config fields for every model) and `presets` make small test runs."""
    import statistics

    import torch

    from specpatch import (
        AaPEViTConfig,
        AaPEViTForAudioClassification,
        FFTPASTConfig,
        FFTPASTForAudioClassification,
        FFTPAuMConfig,
        FFTPAuMForAudioClassification,
    )

    overrides = dict(overrides or {})
    presets = presets or PRESET_ORDER
    device = torch.device(device)
    autocast_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": None}[dtype]
    models = []
    for preset in presets:
        models.append(
            ("FFTP-AST", preset, FFTPASTForAudioClassification, FFTPASTConfig.from_preset(preset, **overrides))
        )
    for preset in presets:
        aum_overrides = {k: v for k, v in overrides.items() if k not in ("num_attention_heads", "intermediate_size")}
        models.append(
            ("FFTP-AuM", preset, FFTPAuMForAudioClassification, FFTPAuMConfig.from_preset(preset, **aum_overrides))
        )
    models.append(
        ("AaPE-ViT", "16x16, 1024 frames", AaPEViTForAudioClassification, AaPEViTConfig(max_length=1024, **overrides))
    )

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    rows = []
    for name, setting, model_class, config in models:
        torch.manual_seed(0)
        model = model_class(config).eval().to(device)
        inputs = torch.randn(batch_size, config.max_length, config.num_mel_bins, device=device)
        times = []
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None),
        ):
            for index in range(repeats + 2):
                synchronize()
                start = time.perf_counter()
                model(inputs)
                synchronize()
                if index >= 2:
                    times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        rows.append(
            {
                "model": name,
                "setting": setting,
                "patches": getattr(config, "num_patches", None),
                "batch": batch_size,
                "ms_per_batch": 1e3 * seconds,
                "clips_per_s": batch_size / seconds,
            }
        )
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------------------------------


def _x(value, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}x"


def _ms(value_s) -> str:
    return "n/a" if value_s is None else f"{1e3 * value_s:.1f} ms"


def _verdict(value, target, noisy: bool = False, lower_is_better: bool = False) -> str:
    """`met` / `**not met**` against the target; a noisy measurement is no finding either way."""
    if value is None or target is None:
        return ""
    if noisy:
        return "noisy (not a finding)"
    return "met" if (value <= target if lower_is_better else value >= target) else "**not met**"


def _xn(value, noisy: bool, digits: int = 1) -> str:
    """A ratio, marked when noisy."""
    return _x(value, digits) + (" (noisy)" if noisy and value is not None else "")


def _rows_features(p: dict) -> list[tuple]:
    what = f"{p.get('clips', '?')} clips x {p.get('seconds', '?')} s"
    backend = f", its {p['backend']} path" if p.get("backend") else ""
    return [
        (
            "features",
            f"speed-up of the batched torch kaldi fbank over transformers' `ASTFeatureExtractor` ({what}{backend})",
            _xn(p.get("kaldi_speedup"), p.get("kaldi_noisy", False)),
            ">= 10x",
            _verdict(p.get("kaldi_speedup"), 10, p.get("kaldi_noisy", False)),
            f"{p.get('kaldi_s', 'n/a')} s vs {p.get('ast_s', 'n/a')} s",
        ),
        (
            "features",
            "speed-up of the batched AaPE log-mel over `ASTFeatureExtractor`",
            _xn(p.get("logmel_speedup"), p.get("logmel_noisy", False)),
            "",
            "",
            f"{p.get('logmel_s', 'n/a')} s",
        ),
    ]


_SPECMASK_KINDS = {  # ratio key (before any ", N threads" / ", cold caches") -> (what, target)
    "new tensor": ("returning a new tensor", ">= 5x"),
    "in place": ("both in place (no copy of the batch)", ">= 5x"),
    "placement": ("mask placement only (no spectrogram), information", ""),
    "ceiling, new tensor": ("the most any implementation could reach returning a new tensor: numpy loop / a copy "
                            "of the batch, information", ""),
    "ceiling, in place": ("the most any implementation could reach in place: numpy loop / one read of the batch "
                          "(the means) and one write of the budget's cells, information", ""),
}  # fmt: skip


_SPECMASK_PAIRS = {  # (baseline, ours) rows of each ratio, for reports written before the script stored them
    "new tensor": ("numpy loop", "SpecMask"),
    "in place": ("numpy loop, in place", "SpecMask, in place"),
    "placement": ("numpy loop", "SpecMask placement only"),
}


def _specmask_row(key: str, name: str, result: dict) -> tuple | None:
    """One summary row of a `bench_specmask.py` ratio (`new tensor`, `in place, 2 threads`, `ceiling, in place`...)."""
    kind = max((k for k in _SPECMASK_KINDS if key == k or key.startswith(k + ", ")), key=len, default=None)
    if kind is None:
        return None
    what, target = _SPECMASK_KINDS[kind]
    stat = result["ratios"][key]
    qualifier = key[len(kind) + 2 :]
    if qualifier == "cold caches":
        qualifier = ", with the caches evicted before each call (as in a training step, the model ran in between)"
    elif qualifier.endswith("threads"):
        qualifier = f", with torch's {qualifier} (as the training scripts call it)"
    elif qualifier:
        return None
    if what.endswith(", information"):  # the qualifier belongs to the comparison, "information" closes the text
        what, qualifier = what[: -len(", information")] + qualifier + ", information", ""
    prefix = "" if kind.startswith("ceiling") else "speed-up over Algorithm 1 per sample in numpy, "
    baseline, ours = (result.get("pairs") or _SPECMASK_PAIRS).get(key, (None, None))
    times = result["times"]
    absolute = (
        f"{1e3 * times[ours]['median']:.2f} ms vs {1e3 * times[baseline]['median']:.2f} ms"
        if baseline in times and ours in times
        else ""
    )
    return (
        "SpecMask",
        f"{prefix}{what}{qualifier}; {name} ({result['setting']})",
        _xn(stat["median"], stat["noisy"], 2),
        target,
        _verdict(stat["median"], 5, stat["noisy"]) if target else "",
        absolute,
    )


def _rows_specmask(p: dict) -> list[tuple]:
    rows = []
    for name, result in (p.get("settings") or {}).items():
        for key in result["ratios"]:
            row = _specmask_row(key, name, result)
            if row is not None:
                rows.append(row)
        if "host_syncs_per_call" in result:
            rows.append(
                ("SpecMask", f"host synchronisations per call on CUDA, {name}", str(result["host_syncs_per_call"]),
                 "no sync per round", "", "")  # fmt: skip
            )
    if p.get("settings") and not str(p.get("device", "cpu")).startswith("cuda"):
        rows.append(("SpecMask", "CUDA: host synchronisations per call", "not measured here (no GPU)", "", "", ""))
    return rows


def _rows_patching(p: dict) -> list[tuple]:
    table = p.get("rows") or {}
    if not table:
        return []
    square, fftp248, fftp991 = (table.get(k, {}) for k in ("square-1212", "fftp-248", "fftp-991"))
    noisy = p.get("noisy") or {}
    rows = [
        (
            "FFTP-AST",
            "speed-up of fftp-248 over square-1212, forward (ViT-B)",
            _xn(p.get("fftp248_speedup"), noisy.get("fftp248", False), 2),
            ">= 4.5x",
            _verdict(p.get("fftp248_speedup"), 4.5, noisy.get("fftp248", False)),
            f"{_ms(fftp248.get('latency_s'))} vs {_ms(square.get('latency_s'))}",
        )
    ]
    if square.get("gmacs_paper") and fftp991.get("gmacs_paper"):
        rows.append(
            (
                "FFTP-AST",
                "GMACs of square-1212 / fftp-991 (linear + conv)",
                _x(square["gmacs_paper"] / fftp991["gmacs_paper"], 2),
                "",
                "",
                f"{square['gmacs_paper']:.2f} vs {fftp991['gmacs_paper']:.2f} GMACs",
            )
        )
    rows.append(
        (
            "FFTP-AST",
            "time of transformers' `ASTForAudioClassification` / ours, same weights (square)",
            _xn(p.get("transformers_ast_time_ratio"), noisy.get("transformers_ast", False), 2),
            ">= 0.97x",
            _verdict(p.get("transformers_ast_time_ratio"), 0.97, noisy.get("transformers_ast", False)),
            "",
        )
    )
    rows.append(("FFTP-AST", *_monotone_row({k: {**v, "ratio_to_square": 1 / v["speedup_vs_square"]}
                                             for k, v in table.items() if v.get("speedup_vs_square")})))  # fmt: skip
    return rows


def _monotone_row(table: dict) -> tuple:
    """(comparison, result, target, verdict, detail): does forward latency grow with the patch count?"""
    ordered = sorted(table.values(), key=lambda row: row["patches"])
    ratios = [row["ratio_to_square"] for row in ordered]
    monotone = all(a <= b for a, b in zip(ratios, ratios[1:]))
    noisy = [row.get("config", "?") for row in ordered if row.get("noisy")]
    verdict = "met" if monotone else ("noisy (not a finding)" if noisy else "**not met**")
    detail = "latency vs square by patch count: " + ", ".join(
        f"{row['patches']}: {row['ratio_to_square']:.3f}{' (noisy)' if row.get('noisy') else ''}" for row in ordered
    )
    return ("forward latency grows with the patch count", "yes" if monotone else "no", "monotone", verdict, detail)


def _per_thread(value) -> dict:
    """bench_aum reports some figures per thread count (`{"1 thread": x, "2 threads": y}`), earlier ones as one value."""
    if isinstance(value, Mapping):
        return dict(value)
    return {"": value}


def _rows_aum(p: dict) -> list[tuple]:
    rows = []
    mixer = p.get("mixer") or {}
    if mixer:
        ratios = _per_thread(mixer.get("forward_ratio"))
        times = mixer.get("forward_s") or {}
        if ratios.keys() == {""}:
            times = {"": times}
        for key, ratio in ratios.items():
            t = times.get(key) or {}
            rows.append(
                (
                    "selective scan",
                    "speed-up of our Mamba mixer over transformers' `MambaMixer` slow path, forward"
                    + (f", {key}" if key else "")
                    + f" ({mixer.get('shape')})",
                    _x(ratio),
                    ">= 5x",
                    _verdict(ratio, 5),
                    f"{_ms(t.get('specpatch'))} vs {_ms(t.get('transformers'))}",
                )
            )
        if mixer.get("forward_backward_ratio") is not None:
            rows.append(
                (
                    "selective scan",
                    "speed-up of our Mamba mixer over `MambaMixer`, forward + backward",
                    _x(mixer["forward_backward_ratio"]),
                    ">= 20x",
                    _verdict(mixer["forward_backward_ratio"], 20),
                    f"{_ms(mixer.get('specpatch_forward_backward_s'))} vs "
                    f"{_ms(mixer.get('transformers_forward_backward_s'))}",
                )
            )
        else:
            rows.append(
                (
                    "selective scan",
                    "speed-up of our Mamba mixer over `MambaMixer`, forward + backward",
                    "not run (quick mode skips transformers' slow backward)",
                    ">= 20x",
                    "",
                    f"ours {_ms(mixer.get('specpatch_forward_backward_s'))}",
                )
            )
    scan = p.get("scan") or {}
    for _label, row in scan.items():
        if not isinstance(row, Mapping) or "speedups" not in row:
            continue
        for key, target in (("forward", 5), ("fwd+bwd", None)):
            stat, times = row["speedups"][key], row["times"]
            rows.append(
                (
                    "selective scan",
                    f"speed-up of our scan over mambapy's `pscan` selective scan, {key}, 1 thread ({row['shape']})",
                    _xn(stat["median"], stat["noisy"]),
                    f">= {target}x" if target else "",
                    _verdict(stat["median"], target, stat["noisy"]) if target else "",
                    f"{_ms(times[f'specpatch {key}']['median'])} vs {_ms(times[f'mambapy {key}']['median'])}",
                )
            )
    if "skipped" in scan:
        rows.append(("selective scan", "comparison with mambapy", f"skipped: {scan['skipped']}", "", "", ""))
    step = p.get("training_step") or {}
    for key, row in step.items():
        if not isinstance(row, Mapping):
            continue
        ratio, times = row["ratio"], row["times"]
        rows.append(
            (
                "FFTP-AuM",
                f"training step time, FFTP-AuM / FFTP-AST, {key} ({step.get('setting')})",
                _xn(ratio["median"], ratio["noisy"], 2),
                "<= 3x",
                _verdict(ratio["median"], 3, ratio["noisy"], lower_is_better=True),
                f"{_ms(times['FFTP-AuM']['median'])} vs {_ms(times['FFTP-AST']['median'])}",
            )
        )
    model = p.get("model") or {}
    if "fftp-248" in model and "square-1212" in model:
        noisy = bool(model["fftp-248"].get("noisy"))
        rows.append(
            (
                "FFTP-AuM",
                f"speed-up of fftp-248 over square-1212, forward (AuM-{p.get('size', '?')})",
                _xn(1 / model["fftp-248"]["ratio_to_square"], noisy, 2),
                "",
                "",
                f"{_ms(model['fftp-248']['latency_s'])} vs {_ms(model['square-1212']['latency_s'])}",
            )
        )
    if len(model) > 2:
        rows.append(("FFTP-AuM", *_monotone_row({k: {**v, "config": k} for k, v in model.items()})))
    return rows


def _rows_sblu(p: dict) -> list[tuple]:
    rows = []
    for section, label in (("adaptive", "adaptive"), ("non_adaptive", "non-adaptive")):
        table = p.get(section, {})
        best = "recursive" if section == "adaptive" else "conv"
        if best in table and "reference" in table:
            row = table[best]
            memory = f", peak memory x{row['memory_ratio']:.2f} of it" if row.get("memory_ratio") is not None else ""
            rows.append(
                (
                    "SBLU",
                    f"speed-up of the {label} SBLU conv (`{best}`) over the direct form "
                    f"(batch {p.get('batch', '?')}), fwd / fwd+bwd{memory}",
                    f"{_x(row['forward_speedup'])} / {_x(row['forward_backward_speedup'])}",
                    "",
                    "",
                    f"{row['forward_backward_ms']:.1f} ms vs {table['reference']['forward_backward_ms']:.1f} ms "
                    "(fwd+bwd)",
                )
            )
    return rows


def _rows_aape(p: dict) -> list[tuple]:
    rows = []
    steps = p.get("steps", {})
    if "standard" in steps and "aape" in steps:
        overhead = p.get("overhead_percent")
        rows.append(
            (
                "AaPE-ViT",
                f"pre-training step time, AaPE / standard patch embedding ({p.get('clips', '?')} clip(s) x "
                f"{p.get('views', '?')} views, ViT-B)",
                _x(p.get("step_ratio"), 2),
                "overhead < 35 %",
                ""
                if overhead is None
                else ("noisy (not a finding)" if p.get("noisy") else ("met" if overhead < 35 else "**not met**")),
                f"{steps['aape']['step_s']:.2f} s vs {steps['standard']['step_s']:.2f} s per step "
                f"(AaPE overhead {overhead} % of its step)",
            )
        )
    counts = p.get("counts", {})
    for kind in ("standard", "aape_nonadaptive", "aape"):
        if kind in counts:
            measured, paper = counts[kind]["measured"], counts[kind]["paper_m"]
            rows.append(
                (
                    "AaPE-ViT",
                    f"patch-embedding parameters, `{kind}`, ours / paper's {paper:.2f}M",
                    f"{measured / (paper * 1e6):.3f}",
                    "",
                    "",
                    f"{measured:,}",
                )
            )
    return rows


_ROW_BUILDERS = {
    "features": _rows_features,
    "specmask": _rows_specmask,
    "patching": _rows_patching,
    "aum": _rows_aum,
    "sblu": _rows_sblu,
    "aape": _rows_aape,
}


def summary_rows(results: dict[str, RunResult]) -> list[tuple]:
    """(benchmark, comparison, ratio, target, verdict, absolute times on this machine) rows of the summary table.

    The scripts belong to several people and change; a row that cannot be built from what a script printed becomes a
    pointer to its raw output instead of stopping the report."""
    rows = []
    for key, builder in _ROW_BUILDERS.items():
        result = results.get(key)
        if result is None:
            continue
        try:
            built = builder(result.parsed)
        except Exception as err:  # noqa: BLE001 - any parsing surprise: keep the report, point to the raw output
            built = [
                (key, f"could not summarise ({type(err).__name__}: {err}); see the raw output below", "", "", "", "")
            ]
        if not built:
            status = "failed" if result.returncode != 0 else "printed nothing this report recognises"
            built = [(key, f"{result.key} {status}; see the raw output below", "", "", "", "")]
        rows.extend(built)
    return rows


def preset_table(results: dict[str, RunResult]) -> list[str]:
    patching = results.get("patching")
    aum = results.get("aum")
    ast_rows = patching.parsed.get("rows", {}) if patching else {}
    aum_rows = aum.parsed.get("model", {}) if aum else {}
    if not ast_rows and not aum_rows:
        return []
    aum_size = aum.parsed.get("size", "tiny") if aum else "?"
    lines = [
        f"| patching | patches | AST GMACs (linear + conv) | AST GMACs (with attention) | AST latency vs square "
        f"| AuM-{aum_size} latency vs square | paper GFLOPs (AST) | paper latency vs square (A100) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    paper_square = PAPER_TABLE_III["square-1212"][1]
    for preset in PRESET_ORDER:
        ast = ast_rows.get(preset, {})
        am = aum_rows.get(preset, {})
        patches = ast.get("patches", am.get("patches", ""))
        paper_gflops, paper_ms = PAPER_TABLE_III[preset]

        def fmt(value, pattern):
            return pattern.format(value) if value is not None else "n/a"

        ast_noisy = " (noisy)" if ast.get("noisy") else ""
        aum_noisy = " (noisy)" if am.get("noisy") else ""
        lines.append(
            f"| {preset} | {patches} | {fmt(ast.get('gmacs_paper'), '{:.2f}')} | {fmt(ast.get('gmacs_full'), '{:.2f}')} "
            f"| {fmt(1 / ast['speedup_vs_square'] if ast.get('speedup_vs_square') else None, '{:.3f}')}{ast_noisy} "
            f"| {fmt(am.get('ratio_to_square'), '{:.3f}')}{aum_noisy} | {paper_gflops:.2f} "
            f"| {paper_ms / paper_square:.3f} |"
        )
    return lines


def render_markdown(
    results: dict[str, RunResult],
    machine: dict,
    load_before,
    load_after,
    quick: bool,
    command: str,
    gpu_rows: list[dict] | None = None,
    started: str | None = None,
    total_seconds: float | None = None,
    load_max: float | None = None,
) -> str:
    """The RESULTS.md text: machine and load, the summary table, the per-patching table, GPU figures, raw outputs."""
    lines = [
        "# specpatch benchmark results",
        "",
        f"Generated by `{command}`{' (quick mode)' if quick else ''} on {started or 'an unknown date'}"
        + (f", {total_seconds / 60:.1f} min in all." if total_seconds else "."),
        "Everything below was measured by this project in this one run; the FFTP paper's own figures (Table III, one "
        "A100) appear only in the columns marked *paper*. Ratios are measured side by side (interleaved runs in "
        "one process) and compare across machines; absolute times are this machine's.",
        "",
        "## Machine",
        "",
        f"- CPU: {machine['cpu']}, {machine['logical_cores']} logical cores ({machine['usable_cores']} usable)",
        f"- torch {machine['torch']} ({machine['torch_threads']} threads by default), transformers "
        f"{machine['transformers']}, Python {machine['python']}, {machine['os']}",
        f"- GPU: {machine['gpu'] or 'none (CPU only)'}; mamba_ssm kernels: {'yes' if machine.get('mamba_ssm') else 'no'}",
    ]
    cores = machine.get("usable_cores") or 1
    measured = {key: r.other_load for key, r in results.items() if r.other_load}
    if measured:
        worst = max(measured, key=lambda key: measured[key]["other"] + measured[key]["steal"])
        other, steal = measured[worst]["other"], measured[worst]["steal"]
        lines.append(
            f"- CPU taken by other processes while the benchmarks ran (`/proc/stat` minus this run's own CPU time): "
            f"at most {other:.2f} of {cores} cores on average over one benchmark (`{worst}`), hypervisor steal "
            f"{steal:.2f} cores there; per benchmark in the raw outputs below (a virtual machine sees its own processes "
            "only: contention on the host shows as steal time where the hypervisor reports it, else only as slower "
            "absolute times)"
        )
        if other + steal > 0.25 * cores:
            lines.append(
                f"- **The machine was shared during this run** (other processes and the hypervisor took "
                f"{other + steal:.2f} of {cores} cores during `{worst}`): absolute times are inflated and noisy; the "
                "ratios, from interleaved runs, are the figures to read, and even they carry more noise than on an "
                "idle machine (multi-threaded kernels suffer most from oversubscribed cores)."
            )
    if load_before and load_after:
        peak = max(x for x in (load_max, load_before[0], load_after[0]) if x is not None)
        lines.append(
            f"- load average (1, 5, 15 min, `os.getloadavg()`): {tuple(load_before)} before, {tuple(load_after)} after "
            f"the run, 1-minute peak {peak:.1f} between benchmarks, on {cores} cores"
            + (" (it counts the benchmarks' own threads too)" if measured else "")
        )
        if not measured and max(peak, load_before[1]) > 0.75 * cores:  # no /proc/stat figures: the load average
            lines.append(
                f"- **The machine was shared and loaded during this run** (1-minute load up to {peak:.1f} on {cores} "
                "cores): absolute times are inflated and noisy; the ratios, from interleaved runs, are the figures to "
                "read, and even they carry more noise than on an idle machine (multi-threaded kernels suffer most "
                "from oversubscribed cores)."
            )
    lines += ["", "## Summary: ratios measured side by side", ""]
    lines += [
        "| benchmark | comparison | ratio | target | verdict | absolute, this machine |",
        "|---|---|---:|---|---|---|",
    ]
    for row in summary_rows(results):
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    failed = [r for r in results.values() if r.returncode != 0]
    if failed:
        lines += [
            "",
            "Failed: " + ", ".join(f"`{r.key}` (exit {r.returncode})" for r in failed) + "; see the raw output.",
        ]
    try:
        table = preset_table(results)
    except Exception as err:  # noqa: BLE001 - see summary_rows
        table = [f"(could not build the table: {type(err).__name__}: {err}; see the raw output)"]
    if table:
        lines += [
            "",
            "## Patch count and cost per Table II patching",
            "",
            "AST: FFTP-AST at ViT-B width (768 wide, 12 layers), batch 1, random weights; GMACs counted with "
            "`torch.utils.flop_counter`. AuM: FFTP-AuM forward latency, batch 1. Latencies are ratios to the same "
            "model's square (16 x 16, stride 10, 1212 patches) configuration; lower is faster.",
            "",
            *table,
        ]
    if gpu_rows:
        lines += [
            "",
            "## GPU: absolute latency and throughput",
            "",
            "| model | patching | patches | batch | ms / batch | clips / s |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for row in gpu_rows:
            lines.append(
                f"| {row['model']} | {row['setting']} | {row['patches']} | {row['batch']} | {row['ms_per_batch']:.2f} "
                f"| {row['clips_per_s']:.1f} |"
            )
    lines += ["", "## Raw output of every benchmark", ""]
    for result in results.values():
        command_line = " ".join(os.path.relpath(c, REPO) if c.startswith(REPO) else c for c in result.command[1:])
        lines += [
            "<details>",
            f"<summary><code>python {command_line}</code>: exit {result.returncode}, {result.seconds:.0f} s"
            + (f", load {result.load_after[0]:.1f} when it ended" if result.load_after else "")
            + (
                f", other processes {result.other_load['other']:.2f} cores, steal {result.other_load['steal']:.2f}"
                if result.other_load
                else ""
            )
            + "</summary>",
            "",
            "```text",
            result.stdout.rstrip() or "(no output)",
        ]
        if result.returncode != 0:
            lines += ["--- stderr (last lines) ---", *result.stderr.rstrip().splitlines()[-20:]]
        lines += ["```", "", "</details>", ""]
    return "\n".join(lines).rstrip() + "\n"


def _relative_json_paths(result: RunResult) -> None:
    """Replace the temporary JSON path in a command by a readable placeholder."""
    result.command = [re.sub(r".*/(\w+\.json)$", r"\1", c) if c.endswith(".json") else c for c in result.command]


def _save(path: str, state: dict) -> None:
    with open(path, "w") as handle:
        json.dump(state, handle, indent=1, default=str)


def _result_from_dict(key: str, raw: dict) -> RunResult:
    result = RunResult(
        key, raw["command"], raw["returncode"], raw["seconds"], raw["stdout"], raw["stderr"], raw.get("data") or {}
    )
    result.load_after = raw.get("load_after")
    result.other_load = raw.get("other_load")
    result.parsed = PARSERS[key](result.stdout, result.data)  # re-parsed with the current parsers
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short run: fewer repeats, smaller batches")
    parser.add_argument("--only", help="comma-separated benchmark keys: " + ",".join(b.key for b in BENCHMARKS_TO_RUN))
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="markdown file (default benchmarks/RESULTS.md)")
    parser.add_argument(
        "--json",
        default=os.path.join(tempfile.gettempdir(), "specpatch_run_all.json"),
        help="raw outputs and parsed results, saved after every benchmark (default: %(default)s)",
    )
    parser.add_argument("--from-json", help="re-render the markdown from a --json file of an earlier run; run nothing")
    parser.add_argument("--device", default=None, help="device for the scripts that take one (default: cuda if seen)")
    parser.add_argument("--gpu-batch", type=int, default=32, help="batch of the GPU throughput section")
    args = parser.parse_args(argv)

    if args.from_json:
        with open(args.from_json) as handle:
            state = json.load(handle)
        results = {key: _result_from_dict(key, raw) for key, raw in state["raw"].items()}
        markdown = render_markdown(
            results,
            state["machine"],
            state["load_before"],
            state["load_after"],
            state["quick"],
            state["command"],
            state.get("gpu"),
            state["started"],
            state.get("total_seconds"),
            state.get("load_max"),
        )
        with open(args.output, "w") as handle:
            handle.write(markdown)
        print(f"[run_all] wrote {args.output} from {args.from_json}")
        return state

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    selected = BENCHMARKS_TO_RUN
    if args.only:
        keys = args.only.split(",")
        unknown = sorted(set(keys) - {b.key for b in BENCHMARKS_TO_RUN})
        if unknown:
            raise SystemExit(f"Unknown benchmark(s) {unknown}; choose from {[b.key for b in BENCHMARKS_TO_RUN]}.")
        selected = [b for b in BENCHMARKS_TO_RUN if b.key in keys]

    command = "python benchmarks/run_all.py" + (" --quick" if args.quick else "")
    if args.only:
        command += f" --only {args.only}"
    state = {
        "command": command,
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "load_before": load_average(),
        "quick": args.quick,
        "raw": {},
    }
    print(f"[run_all] raw results go to {args.json} (re-render with --from-json)", flush=True)
    begin = time.perf_counter()
    results, loads = {}, [state["load_before"]]
    with tempfile.TemporaryDirectory() as workdir:
        for benchmark in selected:
            print(f"[run_all] {benchmark.key}: {benchmark.script} ...", flush=True)
            before = cpu_snapshot()
            result = run_benchmark(benchmark, args.quick, device, workdir)
            result.other_load = foreign_load(before, cpu_snapshot())
            _relative_json_paths(result)
            result.load_after = load_average()
            loads.append(result.load_after)
            results[benchmark.key] = result
            state["raw"][benchmark.key] = {
                "command": result.command,
                "returncode": result.returncode,
                "seconds": result.seconds,
                "stdout": result.stdout,
                "stderr": result.stderr,
                "data": result.data,
                "load_after": result.load_after,
                "other_load": result.other_load,
            }
            _save(args.json, state)
            status = "ok" if result.returncode == 0 else f"FAILED (exit {result.returncode})"
            print(f"[run_all] {benchmark.key}: {status} in {result.seconds:.0f} s", flush=True)
    if device.startswith("cuda"):
        print("[run_all] GPU throughput ...", flush=True)
        state["gpu"] = gpu_throughput(device, batch_size=args.gpu_batch, repeats=3 if args.quick else 10)
    state["load_after"] = load_average()
    loads.append(state["load_after"])
    state["load_max"] = max((load[0] for load in loads if load), default=None)
    state["total_seconds"] = time.perf_counter() - begin
    state["parsed"] = {key: r.parsed for key, r in results.items()}
    _save(args.json, state)

    markdown = render_markdown(
        results,
        state["machine"],
        state["load_before"],
        state["load_after"],
        args.quick,
        command,
        state.get("gpu"),
        state["started"],
        state["total_seconds"],
        state["load_max"],
    )
    with open(args.output, "w") as handle:
        handle.write(markdown)
    print(f"[run_all] wrote {args.output}")
    return state


if __name__ == "__main__":
    main()
