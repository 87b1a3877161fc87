"""`brain3d` command: reports for FLAIR scans with a trained model.

    brain3d report SCAN... | DICOM_DIR... | DIR... [--model DIR] [--out results.jsonl|.csv] [--explain OUT] [--json]

The model loads once; scans are preprocessed in parallel worker processes. Decoding and LIME settings are
params.yaml's `generate` and `lime` sections (`--params`), as in the stages. Every result names the model
that wrote it (directory, profile, training data, revision) and says "research use only". `--model` also takes
a folder of the authors' released BrainGemma3D as published (brain3d/models/release.py): its reports decode
with the release's own generate_report defaults, and name its hub revision and the sha256 of its files.

A scan that cannot be read (missing, unreadable, not a NIfTI, a header that lies, 4D, NaN, not a brain, not
FLAIR-like, or one that kills its worker process) gets one line on stderr at the end, naming it and the
reason, while the other scans go on; the exit status is then 2. --out rows are written as each scan finishes
(brain3d/results.py), so an interrupted run keeps them and a re-run skips them. A problem with the command's
own inputs (params, model, --out) is one line and exit status 2; anything unexpected is one line naming a log
file that holds the traceback, exit status 1. Never a traceback on the terminal.

One module for one command (about 630 lines): its parser, options and params, model description, the
per-scan flow and what is printed are steps of `report` that nothing else uses; the work is library code
(brain3d.data.scans: the scans named and their preprocessing; brain3d.workers: the processes that survive a
killed worker; brain3d.results: the --out rows).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from brain3d.data.scans import expand, prepare
from brain3d.results import printable

EXIT_BAD_INPUT = 2
EXIT_UNEXPECTED = 1


REPO = Path(__file__).resolve().parents[1]  # the Brain3D checkout, when the package is installed from one


def _default_model() -> Path:
    """BRAIN3D_MODEL, else the `models/phase2b` of the repository this package lives in (not the working
    directory's)."""
    return Path(os.environ.get("BRAIN3D_MODEL") or REPO / "models" / "phase2b")


def _default_params() -> Path:
    return REPO / "params.yaml" if (REPO / "params.yaml").exists() else Path("params.yaml")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="brain3d", description="Brain3D: radiology reports for 3D brain FLAIR MRI."
    )
    sub = ap.add_subparsers(dest="command", required=True)
    rp = sub.add_parser(
        "report",
        help="write the radiology reports of FLAIR NIfTI scans",
        description="Preprocess FLAIR scans exactly as in training (skull strip, RAS, "
        "percentile scaling, resampling) and generate their reports, loading the "
        "model once. Research use only.",
        epilog="Exit status: 0 all reported, 2 a scan or the command's input was refused (one line each on "
        "stderr), 1 an unexpected error: its traceback goes to a log file under the cache directory's logs/ "
        "folder ($BRAIN3D_CACHE, else the user cache directory, ~/.cache/brain3d on Linux), named on stderr.",
    )
    rp.add_argument(
        "scans",
        type=Path,
        nargs="+",
        metavar="SCAN",
        help="FLAIR volumes (.nii or .nii.gz, any orientation), folders holding one DICOM series, or "
        "folders of either",
    )
    rp.add_argument(
        "--model",
        type=Path,
        default=None,
        help="a trained model directory holding brain3d.json, or a folder of the authors' released "
        "BrainGemma3D (praiselab-picuslab/BrainGemma3D, as downloaded), whose reports decode with the "
        "release's own defaults (temperature 0.1, top-p 0.9, repetition penalty 1.2, no-repeat trigram, "
        "10 to 128 new tokens) instead of params.yaml's `generate` (default: BRAIN3D_MODEL, else "
        "models/phase2b of the Brain3D repository)",
    )
    rp.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="also write one row per scan (report, findings, model, timings, or why it failed) "
        "to FILE: .jsonl or .csv. Rows are appended as each scan finishes; a re-run with the same FILE "
        "skips the scans it already reports ok with the same model and retries the others",
    )
    rp.add_argument(
        "--workers",
        type=int,
        default=None,
        help="preprocessing processes (default: up to 4, at most the number of scans and cores)",
    )
    rp.add_argument(
        "--skull-stripped",
        action="store_true",
        help="the scans are already brain-extracted (e.g. BraTS); skip skull stripping",
    )
    rp.add_argument(
        "--skull-strip",
        choices=("registration", "threshold"),
        help="skull-stripping method for unstripped scans (default: preprocess.skull_strip)",
    )
    rp.add_argument(
        "--allow-any-sequence",
        action="store_true",
        help="report on scans whose tissue contrast does not look like FLAIR (refused by default)",
    )
    rp.add_argument(
        "--explain",
        type=Path,
        metavar="OUT",
        help="also write a 3D LIME figure (red supports the report): OUT.png for one scan, a "
        "folder of <scan>.png for several (sub-folders as below the scans' common folder)",
    )
    rp.add_argument(
        "--lime-samples",
        type=int,
        metavar="N",
        help="perturbed volumes scored for --explain (default: lime.n_samples, as the lime stage)",
    )
    rp.add_argument("--json", action="store_true", help="print JSON (an object; a list for several scans)")
    rp.add_argument(
        "--max-new-tokens",
        type=int,
        help="report length limit (default: generate.max_new_tokens; a release's own, 128)",
    )
    rp.add_argument("--seed", type=int, help="sampling seed (default: generate.seed)")
    rp.add_argument(
        "--params",
        type=Path,
        default=None,
        help="params file of the preprocessing, decoding and LIME settings (default: the Brain3D "
        "repository's params.yaml, else ./params.yaml)",
    )
    rp.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    return ap


def findings(report: str) -> dict:
    """Side, lobes/structures and pathology asserted by a report (negation-aware, as phase 1's targets)."""
    from brain3d.data.findings import asserted_side, extract_negation_aware

    found = extract_negation_aware(report)
    pathology = sorted(found["pathology"])
    return {
        "side": asserted_side(report) if pathology else "none",
        "anatomy": sorted(found["anatomy"]),
        "pathology": pathology,
    }


def side_probabilities(model, z, report: str) -> dict[str, float] | None:
    """The model's own probability of the side its one-sided report names: the teacher-forced log-likelihood
    (summed over tokens) of the report as written and of the same report with left and right swapped,
    normalised over the two. None for a report that names no single side.

    Not against "no lesion": a normal-study report is a different, shorter text, so its likelihood is not
    comparable (the demo model gives the normal templates 99.96 % of the mass against a right-sided report it
    wrote itself); tumour presence is read from the report text (`findings`)."""
    import torch

    from brain3d.data.reports import swap_laterality

    side = findings(report)["side"]
    if side not in ("left", "right"):
        return None
    candidates = [report, swap_laterality(report)]
    ll = model.log_likelihood(z.expand(2, *z.shape[1:]), candidates, reduction="sum").double().cpu()
    p = torch.softmax(ll, 0).tolist()
    return {side: p[0], "right" if side == "left" else "left": p[1]}


class Refused(Exception):
    """The command's own input (params, model, options) cannot be used: one line, exit status 2."""


def one_line(text: str) -> str:
    """A message on one line (reasons can carry a library's multi-line message), safe to print."""
    return " ".join(printable(text).split())


def _fail(message: str) -> int:
    """One line on stderr, exit status 2."""
    print(one_line(f"brain3d: {message}"), file=sys.stderr)
    return EXIT_BAD_INPUT


_log_path: Path | None = None


def log_details(text: str) -> Path:
    """Append `text` (a traceback) to this run's log file, <cache>/logs/brain3d-<time>-<pid>.log (the
    temporary folder where the cache cannot be written); returns its path."""
    import tempfile

    from brain3d.cache import base_dir

    global _log_path
    name = f"brain3d-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    places = [_log_path] if _log_path else [base_dir() / "logs" / name, Path(tempfile.gettempdir()) / name]
    for path in places:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8", errors="backslashreplace") as fh:
                fh.write(text.rstrip("\n") + "\n\n")
            _log_path = path
            break
        except OSError:  # nowhere to write: the one line on stderr is all there is
            continue
    return path


# read by the Hugging Face libraries when they are first imported (a value the user set is kept)
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "DATASETS_VERBOSITY": "error",
    "HF_HUB_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def _quiet_libraries() -> None:
    """On a user's terminal only this command speaks: other libraries' log records below ERROR, their
    warnings and their progress bars are dropped; brain3d's own logging and warnings are left as they are.
    Called before the libraries are imported, so that what they say on import is dropped too."""
    from brain3d.runtime import quiet_logs_and_warnings

    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    quiet_logs_and_warnings()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # transformers' own handler does not go through the root logger
    hf_logging.disable_progress_bar()


def settings(cfg: dict, args: argparse.Namespace, card: dict | None = None):
    """(Decoding, LimeSettings): params.yaml's `generate` and `lime` sections with the command's overrides; a
    model card's own `decoding` (a release's generate_report defaults) replaces the `generate` keys it sets. A
    model without the guide that `generate.guide` names (phase 1's findings head or side detector: the card
    names none) decodes plainly, as the paper does, whatever `generate.select` says (the result's
    `model.decoder` says which decoder wrote the report)."""
    from brain3d.generation import decoding_from_params
    from brain3d.interpretability.cases import LimeSettings

    g = {
        **cfg["generate"],
        **((card or {}).get("decoding") or {}),
        **({"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}),
    }
    if card is not None and not card.get("findings" if g["guide"] == "head" else "detector"):
        g["select"] = "plain"
    lime = {**cfg["lime"], **({"n_samples": args.lime_samples} if args.lime_samples is not None else {})}
    return decoding_from_params(g), LimeSettings.from_params(lime)


def model_info(model_dir: Path, card: dict) -> dict:
    """What a report must say about the model that wrote it: where it is, what it was trained on (demo:
    stand-in backbones trained by the pipeline on the synthetic phantom cohort; paper: MedSigLIP + MedGemma on
    BraTS 2020 + TextBraTS + ds000221), the git revision and `dvc.lock` hash of the run that made it when the
    directory is a DVC output of a Brain3D checkout, and its intended use."""
    import yaml

    from brain3d.models import release
    from brain3d.paths import repo_root
    from brain3d.tracking import git_sha

    model_dir = model_dir.resolve()
    if card.get("format") == release.FORMAT:  # not a DVC output: the hub revision and every file's hash
        return {
            "dir": str(model_dir),
            "phase": card["phase"],
            "profile": "release",
            "trained_on": release.TRAINED_ON,
            "revision": card["revision"],
            "dvc_lock_md5": None,
            "sha256": card["sha256"],
            "use": "research use only, not for clinical decisions",
        }
    profile, trained_on = {  # the foundation stage records where the backbones came from
        "standins": ("demo", "synthetic phantom cohort (stand-in backbones trained by the pipeline)"),
        "local": ("paper", "BraTS 2020 + TextBraTS + ds000221 (MedSigLIP-448, MedGemma-1.5-4B-IT)"),
    }.get(card["backbones"].get("source"), ("unknown", "unknown (the model card does not say)"))
    info = {
        "dir": str(model_dir),
        "phase": card.get("phase"),
        "profile": profile,
        "trained_on": trained_on,
        "revision": None,
        "dvc_lock_md5": None,
        "sha256": card.get("sha256"),  # every file it loads, verified when it loads (Brain3D.from_pretrained)
        "use": "research use only, not for clinical decisions",
    }
    sha = git_sha(model_dir)
    if sha != "unknown":
        info["revision"] = sha
        root = repo_root(model_dir).resolve()
        lock = root / "dvc.lock"
        if lock.exists() and model_dir.is_relative_to(root):
            rel = model_dir.relative_to(root).as_posix()
            for stage in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values():
                for out in stage.get("outs", []):
                    if out.get("path") == rel:
                        info["dvc_lock_md5"] = out.get("md5")
    return info


def describe(info: dict) -> str:
    """One line naming the model, for text output."""
    if info["profile"] == "release":
        rev = f"hub revision {info['revision'][:8]}" if info["revision"] else "hub revision not recorded"
        return (
            f"model: {info['dir']} ({info['trained_on']}; {rev}; sha256 of its {len(info['sha256'])} files in "
            f"--out/--json); {info['use']}"
        )
    rev = f", revision {info['revision'][:8]}" if info["revision"] else ""
    md5 = f", dvc.lock md5 {info['dvc_lock_md5']}" if info["dvc_lock_md5"] else ""
    return f"model: {info['dir']} ({info['profile']} profile, {info['phase']}{rev}{md5}); {info['use']}"


DEMO_WARNING = (
    "brain3d: warning: {dir} is a demo model: stand-in backbones trained on a synthetic phantom "
    "cohort. Its reports of real scans are not meaningful; research use only."
)


def figure_paths(out: Path, scans: list[Path]) -> dict[Path, Path]:
    """--explain: OUT itself for one scan; for several, OUT/<path below the scans' common folder>.png with
    .nii/.nii.gz dropped (kept where two scans would then share a name): no figure overwrites another."""
    if len(scans) == 1:
        return {scans[0]: out}
    absolute = [Path(os.path.abspath(s)) for s in scans]
    common = Path(os.path.commonpath([a.parent for a in absolute]))
    full = [a.relative_to(common).as_posix() for a in absolute]
    short = [f.removesuffix(".gz").removesuffix(".nii") for f in full]
    names = [s if short.count(s) == 1 else f for s, f in zip(short, full)]
    return {scan: out / f"{name}.png" for scan, name in zip(scans, names)}


@dataclass
class Plan:
    """What one `brain3d report` call does, settled before any scan is read."""

    scans: list[Path]
    model_dir: Path
    card: dict
    info: dict
    kwargs: dict  # preprocess_subject's settings
    decoding: object
    lime: object
    seed: int
    device: str
    workers: int


def load_params(args: argparse.Namespace) -> dict:
    """The params file's configuration (before the heavy imports: a bad value fails at once); Refused if
    it cannot be read or is not valid YAML or params."""
    import yaml

    from brain3d import config

    params = args.params or _default_params()
    try:
        return config.load(params)
    except (OSError, yaml.YAMLError, config.ParamsError) as exc:
        raise Refused(f"{params}: {exc}") from exc


def plan(args: argparse.Namespace, cfg: dict) -> Plan:
    """The call's settings from its options, params and model card; Refused (one line) if unusable."""
    from brain3d import runtime
    from brain3d.data.preprocess import preprocess_settings

    device = runtime.device() if args.device == "auto" else args.device
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise Refused(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    model_dir = args.model or _default_model()
    card, info = _model(model_dir)
    try:
        decoding, lime = settings(cfg, args, card)
        info["decoder"] = decoding.select
        if decoding.select == "findings":
            info["guide"] = decoding.guide
        p = cfg["preprocess"]
        kwargs = {**preprocess_settings(p), "skull_stripped": args.skull_stripped}
        if args.skull_strip:
            kwargs["skull_strip"] = args.skull_strip
        if args.allow_any_sequence:
            kwargs["sequence"] = "any"
        seed = cfg["generate"]["seed"] if args.seed is None else args.seed
    except (ValueError, KeyError, TypeError) as exc:  # a params file without a section the command reads
        missing = "missing key " if isinstance(exc, KeyError) else ""
        raise Refused(f"{args.params or _default_params()}: {missing}{exc}") from exc
    if args.explain and lime.n_samples < 2:
        raise Refused(f"--lime-samples must be at least 2, got {lime.n_samples}")
    if args.out and args.out.suffix not in (".jsonl", ".csv"):
        raise Refused(f"--out {args.out}: use a .jsonl or .csv file name")
    scans = expand(args.scans)  # brain3d.data.scans
    if not scans:
        raise Refused(f"no .nii or .nii.gz scans in {', '.join(map(str, args.scans))}")
    workers = args.workers or min(4, len(scans), os.cpu_count() or 1)
    return Plan(scans, model_dir, card, info, kwargs, decoding, lime, seed, device, workers)


def _model(model_dir: Path) -> tuple[dict, dict]:
    """(card, model_info) of a model directory or release folder; Refused for a missing or corrupt card."""
    import yaml

    from brain3d.models import checkpoint

    try:
        card = checkpoint.read_card(model_dir)
        return card, model_info(model_dir, card)
    except Exception as exc:
        if said_in_one_line(exc):
            raise Refused(str(exc)) from exc
        if isinstance(exc, (OSError, yaml.YAMLError, ValueError, KeyError, TypeError, AttributeError)):
            why = f"{type(exc).__name__}: {exc}"
            raise Refused(f"{model_dir}: not a usable Brain3D model ({checkpoint.CARD}: {why})") from exc
        raise


def said_in_one_line(exc: Exception) -> bool:
    """--model without brain3d.json, a model file that changed since its card pinned it, a release file
    refused, a precision this machine cannot give: errors whose message is the whole story (imported here: the
    libraries must not load before `report` quiets them)."""
    from brain3d.config import ParamsError
    from brain3d.fileio import IntegrityError
    from brain3d.models.release import ReleaseError

    return isinstance(exc, (FileNotFoundError, IntegrityError, ReleaseError, ParamsError))


class LazyModel:
    """The model, loaded for the first scan that gets as far as generation (never, if none does)."""

    def __init__(self, plan: Plan):
        self.plan, self.model = plan, None

    def get(self):
        """(model, seconds spent loading it now: 0 after the first call); Refused if it cannot be loaded."""
        if self.model is not None:
            return self.model, 0.0
        from brain3d.models.model import Brain3D

        t0 = time.perf_counter()
        try:
            self.model = Brain3D.from_card(self.plan.card, self.plan.device)
        except Exception as exc:
            if said_in_one_line(exc):  # e.g. a weight file changed since its card pinned it
                raise Refused(str(exc)) from exc
            reason = f"the model cannot be loaded ({type(exc).__name__}: {exc})"
            raise Refused(f"{self.plan.model_dir}: {with_details(reason, self.plan.model_dir)}") from exc
        if self.plan.info["profile"] == "demo":
            print(DEMO_WARNING.format(dir=self.plan.model_dir), file=sys.stderr)
        return self.model, time.perf_counter() - t0


def scan_row(plan: Plan, model: LazyModel, scan: Path, pre, prep_s: float, figure: Path | None) -> dict:
    """The ok row of a preprocessed scan: its report, findings, side probability and (with `figure`) LIME
    figure. Refused if the model cannot be loaded; any other failure is this scan's (a failed row)."""
    import torch

    m, load_s = model.get()  # Refused: the whole call stops (rows written so far stay)
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            z = m.visual(torch.from_numpy(pre.volume)[None, None].to(plan.device))
        text = m.generate(z, plan.decoding, seed=plan.seed, volumes=[pre.volume])[0]
        row = {
            "scan": printable(str(scan)),
            "status": "ok",
            "reason": "",
            "report": text,
            "findings": findings(text),
            "side_probability": side_probabilities(m, z, text),
            "sequence": pre.qc["sequence"],
            "model": plan.info,
            "seconds": {
                "preprocess": round(prep_s, 2),
                "model_load": round(load_s, 2),  # once, first scan
                "generate": round(time.perf_counter() - t0, 2),
            },
        }
    except Exception as exc:  # e.g. out of memory: this scan fails, the others go on
        reason = with_details(f"report generation failed ({type(exc).__name__}: {exc})", scan)
        return failed_row(plan, scan, reason, prep_s)
    if figure is not None:
        try:
            _explain(m, pre.volume, text, row, plan.lime, figure, scan)
        except Exception as exc:  # the report stands; the row says why its figure is missing
            row["reason"] = one_line(with_details(f"no explanation ({type(exc).__name__}: {exc})", scan))
    return row


def with_details(reason: str, scan: Path, trace: str | None = None) -> str:
    """`reason` naming the log file that now holds the traceback (`trace`, else the one being handled)."""
    import traceback

    log = log_details(f"{printable(str(scan))}:\n{trace or traceback.format_exc()}")
    return f"{reason} (details in {log})"


def _explain(model, volume, text: str, row: dict, lime, png: Path, scan: Path) -> None:
    from brain3d.interpretability.cases import explain_case
    from brain3d.interpretability.figures import save_case_figure

    case = explain_case(model, volume, text, lime, with_side=row["findings"]["side"] in ("left", "right"))
    voxels = case.explanations["report"].voxel_map(case.labels)
    save_case_figure(png, volume, voxels, None, printable(scan.name))
    row["explanation"] = printable(str(png))


def failed_row(plan: Plan, scan: Path, reason: str, prep_s: float) -> dict:
    return {
        "scan": printable(str(scan)),
        "status": "failed",
        "reason": one_line(reason),
        "model": plan.info,
        "seconds": {"preprocess": round(prep_s, 2)},
    }


def print_row(row: dict, several: bool) -> None:
    """A report on stdout, as text: the report, its findings and the model."""
    f, p = row["findings"], row["side_probability"]
    head = f"== {row['scan']}\n" if several else ""
    side = f"{f['side']} (p={p[f['side']]:.2f})" if p else f["side"]
    print(
        f"{head}{row['report']}\n\nfindings: side={side}; anatomy={', '.join(f['anatomy']) or '-'}; "
        f"pathology={', '.join(f['pathology']) or '-'}"
    )
    if "explanation" in row:
        print(f"explanation: {row['explanation']}")
    print(describe(row["model"]) + ("\n" if several else ""), flush=True)


def report(args: argparse.Namespace) -> int:
    from brain3d import runtime, workers
    from brain3d.results import Results

    cfg = load_params(args)  # before the heavy imports: a bad value fails at once, in one line
    runtime.set_offline_env()  # before any hub library reads its environment
    _quiet_libraries()  # before the libraries below are imported: they may speak on import
    runtime.setup()
    from tqdm.auto import tqdm

    p = plan(args, cfg)
    results = Results(args.out) if args.out else None
    todo = [s for s in p.scans if not (results and results.finished(printable(str(s)), p.info["dir"]))]
    if len(todo) < len(p.scans):
        print(
            f"brain3d: {len(p.scans) - len(todo)} scan(s) already reported ok in {printable(str(args.out))}: "
            "skipped",
            file=sys.stderr,
        )
    figures = figure_paths(args.explain, p.scans) if args.explain else {}
    model, ok, failed = LazyModel(p), [], []
    # progress only on a terminal: piped stderr carries nothing but warnings and failures
    bar = tqdm(
        total=len(todo),
        desc="brain3d",
        unit="scan",
        file=sys.stderr,
        leave=False,
        disable=not sys.stderr.isatty(),
    )
    hint = " (--allow-any-sequence to override)"
    jobs = [(scan, p.card["model"]["volume_shape"], p.kwargs, hint) for scan in todo]
    try:
        for (scan, *_), prepared, died in workers.imap(prepare, jobs, p.workers):
            bar.update()
            pre, reason, prep_s, trace = prepared or (None, died, 0.0, "")
            reason = with_details(reason, scan, trace) if trace else reason
            row = (
                failed_row(p, scan, reason, prep_s)
                if pre is None
                else scan_row(p, model, scan, pre, prep_s, figures.get(scan))
            )
            if results:
                results.add(row)
            if row["status"] == "ok":
                ok.append(row)
                if not args.json:
                    print_row(row, len(p.scans) > 1)
            else:
                failed.append(row)
    finally:
        bar.close()
        if results:
            results.close()
    if args.json and ok:
        print(json.dumps(ok[0] if len(p.scans) == 1 else ok, indent=2))
    for row in [r for r in ok if r["reason"]] + failed:  # a report without its figure, then the failures
        _fail(f"{row['scan']}: {row['reason']}")
    return EXIT_BAD_INPUT if failed else 0


def main(argv: list[str] | None = None) -> int:
    """The command: its exit status (0 ok, 2 refused input, 1 unexpected), never a traceback on stderr."""
    import traceback

    from brain3d.results import ResultsError

    args = _parser().parse_args(argv)
    try:
        return report(args)
    except (Refused, ResultsError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print("brain3d: interrupted; the rows of the finished scans are in --out", file=sys.stderr)
        return 130
    except Exception as exc:
        if said_in_one_line(exc):  # e.g. a precision this machine cannot give
            return _fail(str(exc))
        log = log_details(traceback.format_exc())
        print(
            one_line(f"brain3d: unexpected error ({type(exc).__name__}: {exc}); details in {log}"),
            file=sys.stderr,
        )
        return EXIT_UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())
