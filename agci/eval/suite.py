"""``agci eval``: the paper's suite through lmms-eval at lambda 0 and at the given lambdas, for one
checkpoint, then a comparison table (markdown, JSON and a PNG of the deltas).

Each lambda is one ``lmms-eval`` run in its own folder; a rerun with the same checkpoint, tasks, data and
model arguments skips the lambdas whose results are already there, so an interrupted sweep loses only the
run in progress (more lambdas may be added on a rerun). The folder is locked for the run and a rerun with
other inputs is refused (see :mod:`agci.runs`); the model arguments are checked before lmms-eval starts.
With ``--data DIR`` the benchmarks are read from local copies (see ``BENCHMARKS`` for the layout) instead of the hub.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..configs import LAMBDA_KEY, format_lambda, validate_lambda
from ..fingerprints import model_fingerprint, versions
from ..runs import RunFolder, save_figure, write_json, write_text
from . import TASKS_DIR, engines
from .plugin import MODEL_NAMES

LOCAL_SUFFIX = "_local"
OUTPUTS = ("lambda_*", "local_tasks", "comparison.*")  # what agci eval writes into its folder


@dataclass(frozen=True)
class Benchmark:
    task: str  # lmms-eval task name (built-in or agci's)
    yaml: str  # "lmms_eval:<path>" (built-in task) or "agci:<path>" (agci's TASKS_DIR)
    folder: str  # the benchmark's folder under --data
    files: tuple[tuple[str, str], ...]  # (split, file in folder)
    hub: str  # where the data lives on the Hugging Face hub

    @property
    def builder(self) -> str:
        return "json" if self.files[0][1].endswith(".jsonl") else "parquet"


_CRPE_HUB = "OpenGVLab/CRPE (jsonl) + COCO val2017 images"


def _crpe(part: str, file: str) -> Benchmark:
    return Benchmark(f"agci_crpe_{part}", f"agci:agci_crpe/agci_crpe_{part}.yaml", "crpe", (("test", file),), _CRPE_HUB)


def _test_parquet(task: str, yaml: str, folder: str, hub: str) -> Benchmark:
    return Benchmark(task, yaml, folder, (("test", "test.parquet"),), hub)


BENCHMARKS: tuple[Benchmark, ...] = (
    _test_parquet("agci_pope", "agci:agci_pope/agci_pope.yaml", "pope", "lmms-lab-encoder/POPE"),
    _test_parquet("pope", "lmms_eval:pope/pope.yaml", "pope", "lmms-lab-encoder/POPE"),
    _crpe("exist", "crpe_exist.jsonl"),
    _crpe("subject", "crpe_relation.jsonl"),
    _crpe("predicate", "crpe_relation.jsonl"),
    _crpe("object", "crpe_relation.jsonl"),
    Benchmark(
        "agci_hallusion_bench_image_offline", "agci:agci_hallusion_bench/agci_hallusion_bench_image_offline.yaml",
        "hallusion_bench", (("image", "image.parquet"),), "lmms-lab-encoder/HallusionBench",
    ),
    Benchmark(
        "textvqa_val", "lmms_eval:textvqa/textvqa_val.yaml", "textvqa", (("validation", "validation.parquet"),),
        "lmms-lab-encoder/textvqa",
    ),
    _test_parquet("scienceqa_img", "lmms_eval:scienceqa/scienceqa_img.yaml", "scienceqa_img",
                  "lmms-lab-encoder/ScienceQA, config ScienceQA-IMG"),
    _test_parquet("mmmu_pro_standard", "lmms_eval:mmmu_pro/mmmu_pro_standard.yaml", "mmmu_pro_standard_10",
                  "MMMU/MMMU_Pro, config 'standard (10 options)'"),
    _test_parquet("agci_mmmu_pro_standard_4", "agci:agci_mmmu_pro/agci_mmmu_pro_standard_4.yaml",
                  "mmmu_pro_standard_4", "MMMU/MMMU_Pro, config 'standard (4 options)'"),
)  # fmt: skip
SUITE = "agci_paper"
PAPER_SUITE = [b.task for b in BENCHMARKS if b.task != "pope"]  # agci_pope scores POPE as the paper does
GROUPS = {"agci_crpe": [b.task for b in BENCHMARKS if b.task.startswith("agci_crpe_")]}


def _yaml_path(spec: str) -> Path:
    origin, rel = spec.split(":", 1)
    if origin == "agci":
        return TASKS_DIR / rel
    import lmms_eval

    return Path(lmms_eval.__file__).parent / "tasks" / rel


def expand_tasks(names: list[str]) -> list[str]:
    """Task names with ``agci_paper`` and ``agci_crpe`` expanded; unknown names are refused."""
    known = {b.task for b in BENCHMARKS}
    out: list[str] = []
    for name in names:
        parts = PAPER_SUITE if name == SUITE else GROUPS.get(name, [name])
        for part in parts:
            if part not in known:
                raise ValueError(
                    f"unknown task {part!r}; agci eval runs {SUITE}, agci_crpe or any of: {', '.join(sorted(known))}"
                )
            if part not in out:
                out.append(part)
    return out


def write_local_tasks(data: Path, out: Path, tasks: list[str]) -> list[str]:
    """YAMLs that read ``tasks`` from local copies under ``data``; returns the local task names.

    Each includes the original task (same prompt and scoring) and replaces only the data source;
    the names gain ``_local`` because lmms-eval's built-in names win over included ones."""
    import yaml

    check_local_files(data, tasks)
    data, out = Path(data).resolve(), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for bench in (b for b in BENCHMARKS if b.task in tasks):
        files = {split: data / bench.folder / name for split, name in bench.files}
        config = {
            "include": str(_yaml_path(bench.yaml)),
            "task": bench.task + LOCAL_SUFFIX,
            "tag": [],
            "dataset_path": bench.builder,
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: str(p) for split, p in files.items()}},
        }
        (out / f"{bench.task}{LOCAL_SUFFIX}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        names.append(bench.task + LOCAL_SUFFIX)
    return names


def check_local_files(data: Path, tasks: list[str]) -> None:
    """FileNotFoundError (one line) naming the local copies of ``tasks`` missing under ``data``."""
    data = Path(data).resolve()
    missing = [f"{data / bench.folder / name} ({bench.task}; on the hub: {bench.hub})"
               for bench in BENCHMARKS if bench.task in tasks for _, name in bench.files
               if not (data / bench.folder / name).is_file()]  # fmt: skip
    if missing:
        raise FileNotFoundError(
            f"--data {data}: {len(missing)} local benchmark file(s) missing: {'; '.join(missing)} (layout in README)"
        )


def model_name_for(pretrained: str) -> str:
    """The agci lmms-eval model name for a checkpoint, from its config.json."""
    from ..vlm import load_config
    from .plugin import model_name_for as name_for_type

    return name_for_type(load_config(pretrained).model_type)


def lambda_label(lam: float) -> str:
    return f"lambda_{format_lambda(lam)}"


def read_results(run_dir: Path) -> dict[str, dict[str, float]] | None:
    """task -> metric -> value from the newest lmms-eval results file under ``run_dir``."""
    files = sorted(run_dir.glob("*/*_results.json"))
    if not files:
        return None
    results = json.loads(files[-1].read_text())["results"]
    table: dict[str, dict[str, float]] = {}
    for task, metrics in results.items():
        for key, value in metrics.items():
            name, _, _ = key.partition(",")
            if "," not in key or "_stderr" in name or not isinstance(value, int | float):
                continue
            table.setdefault(task.removesuffix(LOCAL_SUFFIX), {})[name] = float(value)
    return table


def compare(by_lambda: dict[float, dict[str, dict[str, float]]]) -> list[dict]:
    """Rows of (task, metric, value per lambda, delta per lambda against lambda 0)."""
    base = by_lambda[0.0]
    rows = []
    for task in sorted(base):
        for metric in sorted(base[task]):
            row = {"task": task, "metric": metric, "values": {}, "deltas": {}}
            for lam, table in sorted(by_lambda.items()):
                value = table.get(task, {}).get(metric)
                row["values"][lambda_label(lam)] = value
                if lam != 0.0 and value is not None:
                    row["deltas"][lambda_label(lam)] = round(value - base[task][metric], 6)
            rows.append(row)
    return rows


def markdown(rows: list[dict], lambdas: list[float]) -> str:
    others = [lam for lam in lambdas if lam != 0.0]
    head = ["task", "metric", "λ=0", *(f"λ={format_lambda(lam)}" for lam in others),
            *(f"Δ λ={format_lambda(lam)}" for lam in others)]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def fmt(v):
        return "n/a" if v is None else f"{v:.4g}"

    for r in rows:
        cells = [r["task"], r["metric"], fmt(r["values"][lambda_label(0.0)])]
        cells += [fmt(r["values"].get(lambda_label(lam))) for lam in others]
        cells += [(f"{d:+.4g}" if (d := r["deltas"].get(lambda_label(lam))) is not None else "n/a") for lam in others]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_deltas(rows: list[dict], lambdas: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [lam for lam in lambdas if lam != 0.0]
    labels = [f"{r['task']}\n{r['metric']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(rows) + 2), 4))
    width = 0.8 / max(1, len(others))
    for k, lam in enumerate(others):
        deltas = [r["deltas"].get(lambda_label(lam)) or 0.0 for r in rows]
        ax.bar([i + k * width for i in range(len(rows))], deltas, width, label=f"λ={format_lambda(lam)}")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("change against λ=0")
    ax.set_title("AGCI: metric change per benchmark")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def _data_fingerprint(data: Path | None, tasks: list[str]) -> dict | None:
    """The local benchmark files a run reads: their paths and sizes (hashing gigabytes of images would
    take longer than some runs)."""
    if data is None:
        return None
    files = {}
    for bench in (b for b in BENCHMARKS if b.task in tasks):
        for _, name in bench.files:
            p = Path(data).resolve() / bench.folder / name
            files[str(p)] = p.stat().st_size if p.is_file() else None
    return files


def parse_model_args(text: str) -> dict:
    """``--model-args`` as lmms-eval reads it (``key=value,...``); ``pretrained`` and the lambda are agci
    eval's own arguments and refused here."""
    from lmms_eval.utils import simple_parse_args_string

    bad = [part for part in text.split(",") if part.strip() and "=" not in part]
    if bad:
        raise ValueError(f"--model-args takes key=value pairs separated by commas, e.g. dtype=bfloat16; got {bad[0]!r}")
    args = simple_parse_args_string(text)
    for key, fix in (("pretrained", "give the checkpoint as MODEL_PATH"), (LAMBDA_KEY, "give lambdas with --lambda")):
        if key in args:
            raise ValueError(f"--model-args must not set {key}: {fix}")
    return args


@dataclass(frozen=True)
class EvalConfig:
    """The inputs of one ``agci eval`` run and the checks of their values that need no file or model: the
    lambdas and ``limit`` are refused in words when the config is made."""

    pretrained: str  # checkpoint folder or hub id of a supported VLM
    lambdas: tuple[float, ...]  # compared with lambda 0 (which is always run)
    out: Path  # the run's folder; a rerun into it skips finished lambdas
    tasks: tuple[str, ...]  # agci_paper (the suite), agci_crpe, or task names
    data: Path | None = None  # local copies of the benchmarks (layout: BENCHMARKS); None: the hub
    model: str | None = None  # the agci lmms-eval model name; None: from config.json
    batch_size: int = 1
    limit: int | None = None  # the first N documents of each task
    model_args: str = ""  # more lmms-eval model_args (key=value,...)
    device: str | None = None
    extra: tuple[str, ...] = ()  # more arguments for lmms-eval
    force: bool = False  # delete the folder's results of a run with other inputs and start over
    engine: str = "transformers"  # or "vllm": lmms-eval's vllm model with agci's vLLM plugin

    def __post_init__(self):
        if self.engine not in engines.ENGINES:
            raise ValueError(f"--engine must be one of {', '.join(engines.ENGINES)}, got {self.engine!r}")
        if self.engine == "vllm" and self.model is not None:
            raise ValueError("--lmms-model names an agci model on transformers; with --engine vllm lmms-eval's vllm "
                             "model runs: leave --lmms-model out")  # fmt: skip
        for lam in self.lambdas:
            validate_lambda(lam)
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1 (the first N documents of each task), got {self.limit}")

    @property
    def swept(self) -> list[float]:
        """Lambda 0 and the given lambdas, in order, each once."""
        return sorted({0.0, *(validate_lambda(lam) for lam in self.lambdas)})


def run(config: EvalConfig) -> dict:
    """The suite at lambda 0 and ``config.lambdas``; returns the comparison (also written under ``config.out``)."""
    from .lmms_model import check_model_args

    c = config
    lambdas = c.swept
    vllm = c.engine == "vllm"
    model = engines.VLLM_MODEL if vllm else c.model or model_name_for(c.pretrained)
    if model not in MODEL_NAMES and not vllm:
        raise ValueError(f"--lmms-model {model!r} is not an agci model; choose one of {', '.join(MODEL_NAMES)}")
    tasks = expand_tasks(list(c.tasks))
    if c.data is not None:
        check_local_files(c.data, tasks)
    parsed = parse_model_args(c.model_args)
    if vllm:
        engines.check_vllm(c.pretrained, max(lambdas), parsed)
    else:
        check_model_args(model, c.pretrained, {**parsed, "batch_size": c.batch_size})
    fingerprint = {**model_fingerprint(c.pretrained), "lmms_model": model, "tasks": tasks,
                   "data": _data_fingerprint(c.data, tasks), "limit": c.limit, "model_args": parsed,
                   "lmms_eval_arguments": list(c.extra), "versions": versions("lmms-eval")}  # fmt: skip
    if vllm:  # only then: folders of earlier transformers runs keep their record
        from ..vllm.checks import vllm_version

        fingerprint["engine"] = c.engine
        fingerprint["versions"]["vllm"] = vllm_version()
    out = Path(c.out)
    with RunFolder(out, "eval", fingerprint, outputs=OUTPUTS, force=c.force) as folder:
        summary = _run_lambdas(c, lambdas, out, tasks, model)
        folder.finished()
    return summary


def _run_lambdas(config: EvalConfig, lambdas: list[float], out: Path, tasks: list[str], model: str) -> dict:
    pretrained, data, model_args, limit = config.pretrained, config.data, config.model_args, config.limit
    include, names = str(TASKS_DIR), tasks
    env = dict(os.environ)
    if data is not None:
        include = str(out / "local_tasks")
        names = write_local_tasks(Path(data), out / "local_tasks", tasks)
        crpe = Path(data).resolve() / "crpe"
        env.setdefault("AGCI_CRPE_IMAGES", str(crpe))
    by_lambda = {}
    for lam in lambdas:
        run_dir = out / lambda_label(lam)
        table = read_results(run_dir)
        if table is None:
            args = engines.model_args(config.engine, pretrained, lam, model_args)
            command = [
                sys.executable, "-m", "lmms_eval", "--model", model, "--model_args", args,
                "--tasks", ",".join(names), "--include_path", include, "--batch_size", str(config.batch_size),
                "--output_path", str(run_dir), "--log_samples",
            ]  # fmt: skip
            if limit is not None:
                command += ["--limit", str(limit)]
            if config.device:
                command += ["--device", config.device]
            command += list(config.extra)
            print(f"agci eval: lambda {format_lambda(lam)}: {' '.join(command)}", flush=True)
            subprocess.run(command, check=True, env=env)
            table = read_results(run_dir)
            if table is None:
                raise RuntimeError(
                    f"lmms-eval exited without writing results under {run_dir} (lambda {format_lambda(lam)}); "
                    "its log above says why"
                )
        else:
            print(f"agci eval: lambda {format_lambda(lam)}: results found in {run_dir}, skipped", flush=True)
        by_lambda[lam] = table
    rows = compare(by_lambda)
    summary = {"pretrained": str(pretrained), "model": model, "tasks": tasks, "lambdas": lambdas, "rows": rows}
    write_json(out / "comparison.json", summary)
    write_text(out / "comparison.md", markdown(rows, lambdas))
    plot_deltas(rows, lambdas, out / "comparison.png")
    return summary
