"""`brain3d` command: reports for FLAIR scans with a trained model.

    brain3d report SCAN... | DICOM_DIR... | DIR... [--model DIR] [--out results.jsonl|.csv] [--explain OUT] [--json]

The model loads once; scans are preprocessed in parallel worker processes. Decoding and LIME settings are
params.yaml's `generate` and `lime` sections (`--params`), as in the stages. Every result names the model
that wrote it (directory, profile, training data, revision) and says "research use only". `--model` also takes
a folder of the authors' released BrainGemma3D as published (brain3d/models/release.py): its reports decode
with the release's own generate_report defaults, and name its hub revision and the sha256 of its files.

A scan that cannot be read (missing, not a NIfTI, 4D, NaN, not a brain, not FLAIR-like) gets one line on
stderr at the end, naming it and the reason, while the other scans go on; the exit status is then 2.
Never a traceback.

One module for one command (about 480 lines): its parser, input expansion, worker preprocessing, model
description and result writing are steps of `report` that nothing else uses; the work itself is library code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

EXIT_BAD_INPUT = 2


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
        "to FILE: .jsonl or .csv",
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
        "folder of <scan>.png for several",
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


def _fail(message: str) -> int:
    """One line on stderr (reasons can carry a library's multi-line message), exit status 2."""
    print(" ".join(f"brain3d: {message}".split()), file=sys.stderr)
    return EXIT_BAD_INPUT


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
    import logging
    import warnings

    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    logging.getLogger().setLevel(logging.ERROR)  # every logger that keeps the default level inherits it
    for name, logger in list(logging.Logger.manager.loggerDict.items()):  # those already set a level
        if isinstance(logger, logging.Logger) and name.split(".")[0] != "brain3d":
            logger.setLevel(max(logger.level, logging.ERROR))
    own = logging.getLogger("brain3d")
    if own.level == logging.NOTSET:
        own.setLevel(logging.WARNING)  # Python's default, not the root's ERROR
    warnings.simplefilter("ignore")
    # ours, unless it is a library's deprecation notice that names our call
    warnings.filterwarnings("default", module=r"brain3d(\.|$)")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"brain3d(\.|$)")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"brain3d(\.|$)")

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # transformers' own handler does not go through the root logger
    hf_logging.disable_progress_bar()


def settings(cfg: dict, args: argparse.Namespace, card: dict | None = None):
    """(Decoding, LimeSettings): params.yaml's `generate` and `lime` sections with the command's overrides; a
    model card's own `decoding` (a release's generate_report defaults) replaces the `generate` keys it sets."""
    from brain3d.generation import decoding_from_params
    from brain3d.interpretability.cases import LimeSettings

    g = {
        **cfg["generate"],
        **((card or {}).get("decoding") or {}),
        **({"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}),
    }
    lime = {**cfg["lime"], **({"n_samples": args.lime_samples} if args.lime_samples is not None else {})}
    return decoding_from_params(g), LimeSettings.from_params(lime)


def expand(paths: list[Path]) -> list[Path]:
    """The scans named: files and DICOM series folders as given (a missing file fails later, with its reason),
    other folders searched for .nii / .nii.gz files and DICOM series folders (recursively, sorted); each once."""
    from brain3d.data.dicom import is_dicom_folder

    def is_scan(p: Path) -> bool:
        return p.name.endswith((".nii", ".nii.gz")) or is_dicom_folder(p)

    out: list[Path] = []
    for path in paths:
        found = (
            sorted(filter(is_scan, path.rglob("*")))
            if path.is_dir() and not is_dicom_folder(path)
            else [path]
        )
        out += [p for p in found if p not in out]
    return out


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


def _prepare(job: tuple) -> tuple:
    """Worker: (scan, Preprocessed or None, reason, seconds); a DICOM folder is converted to NIfTI first."""
    scan, shape, kwargs = job
    from brain3d.data.manifest import InputError
    from brain3d.data.preprocess import preprocess_subject
    from brain3d.data.sequence import SequenceError

    t0 = time.perf_counter()
    try:
        if scan.is_dir():
            import tempfile

            import nibabel as nib

            from brain3d.data.dicom import read_series

            with tempfile.TemporaryDirectory() as tmp:
                nib.save(read_series(scan), Path(tmp) / "series.nii.gz")
                pre = preprocess_subject(scan.name, Path(tmp) / "series.nii.gz", shape, **kwargs)
        else:
            pre = preprocess_subject(scan.name, scan, shape, **kwargs)
    except SequenceError as exc:
        return scan, None, f"{exc.reason} (--allow-any-sequence to override)", time.perf_counter() - t0
    except InputError as exc:
        return scan, None, exc.reason, time.perf_counter() - t0
    return scan, pre, "", time.perf_counter() - t0


def _preprocessed(scans: list[Path], shape, kwargs: dict, workers: int):
    """(scan, Preprocessed | None, reason, seconds) in the order of `scans`, preprocessed `workers` at a time
    in worker processes (as the `preprocess` stage does)."""
    from joblib import Parallel, delayed

    jobs = (delayed(_prepare)((scan, shape, kwargs)) for scan in scans)
    yield from Parallel(n_jobs=workers, return_as="generator")(jobs)


def write_rows(path: Path, rows: list[dict]) -> None:
    """--out: JSON lines, or a CSV with findings, side probabilities, model and timings flattened into columns."""
    from brain3d import fileio

    if path.suffix == ".jsonl":
        fileio.write_jsonl(path, rows)
    elif path.suffix == ".csv":
        import pandas as pd

        nested = ("findings", "side_probability", "model", "seconds")
        flat = [
            {
                **{k: v for k, v in r.items() if k not in nested},
                **{
                    f"findings_{k}": ";".join(v) if isinstance(v, list) else v
                    for k, v in r.get("findings", {}).items()
                },
                **{f"p_{k}": v for k, v in (r.get("side_probability") or {}).items()},
                **{f"model_{k}": json.dumps(v) if isinstance(v, dict) else v for k, v in r["model"].items()},
                **{f"seconds_{k}": v for k, v in r["seconds"].items()},
            }
            for r in rows
        ]
        fileio.write_csv(path, pd.DataFrame(flat))
    else:
        raise ValueError(f"--out {path}: use a .jsonl or .csv file name")


def report(args: argparse.Namespace) -> int:  # noqa: C901 (the command's flow; its steps are the helpers above)
    from brain3d import config, runtime

    params = args.params or _default_params()
    try:
        cfg = config.load(params)  # before the heavy imports: a bad value fails at once, in one line
    except (OSError, config.ParamsError) as exc:
        return _fail(f"{params}: {exc}")
    runtime.set_offline_env()  # before any hub library reads its environment
    _quiet_libraries()  # before the libraries below are imported: they may speak on import
    runtime.setup()
    import torch
    from tqdm.auto import tqdm

    from brain3d.models import checkpoint
    from brain3d.models.model import Brain3D

    device = runtime.device() if args.device == "auto" else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        return _fail(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    model_dir = args.model or _default_model()
    card = checkpoint.read_card(model_dir)  # FileNotFoundError: main() prints it as one line
    decoding, lime = settings(cfg, args, card)
    if args.explain and lime.n_samples < 2:
        return _fail(f"--lime-samples must be at least 2, got {lime.n_samples}")
    if args.out and args.out.suffix not in (".jsonl", ".csv"):
        return _fail(f"--out {args.out}: use a .jsonl or .csv file name")
    info = model_info(model_dir, card)
    scans = expand(args.scans)
    if not scans:
        return _fail(f"no .nii or .nii.gz scans in {', '.join(map(str, args.scans))}")
    p = cfg["preprocess"]
    kwargs = dict(
        skull_stripped=args.skull_stripped,
        skull_strip=args.skull_strip or p["skull_strip"],
        fov_mm=p["fov_mm"],
        min_similarity=p["min_brain_similarity"],
        sequence="any" if args.allow_any_sequence else p["sequence"],
    )
    workers = args.workers or min(4, len(scans), os.cpu_count() or 1)
    model = None
    seed = cfg["generate"]["seed"] if args.seed is None else args.seed
    rows, failed = [], []
    # progress only on a terminal: piped stderr carries nothing but warnings and failures
    bar = tqdm(
        total=len(scans),
        desc="brain3d",
        unit="scan",
        file=sys.stderr,
        leave=False,
        disable=not sys.stderr.isatty(),
    )
    for scan, pre, reason, prep_s in _preprocessed(scans, card["model"]["volume_shape"], kwargs, workers):
        bar.update()
        if pre is None:
            failed.append((scan, reason))
            rows.append(
                {
                    "scan": str(scan),
                    "status": "failed",
                    "reason": reason,
                    "model": info,
                    "seconds": {"preprocess": round(prep_s, 2)},
                }
            )
            continue
        load_s = 0.0
        if model is None:
            t0 = time.perf_counter()
            model = Brain3D.from_card(card, device)
            load_s = time.perf_counter() - t0
            if info["profile"] == "demo":
                print(DEMO_WARNING.format(dir=model_dir), file=sys.stderr)
        t0 = time.perf_counter()
        with torch.no_grad():
            z = model.visual(torch.from_numpy(pre.volume)[None, None].to(device))
        text = model.generate(z, decoding, seed=seed)[0]
        row = {
            "scan": str(scan),
            "status": "ok",
            "reason": "",
            "report": text,
            "findings": findings(text),
            "side_probability": side_probabilities(model, z, text),
            "sequence": pre.qc["sequence"],
            "model": info,
            "seconds": {
                "preprocess": round(prep_s, 2),
                "model_load": round(load_s, 2),  # once, first scan
                "generate": round(time.perf_counter() - t0, 2),
            },
        }
        if args.explain:
            from brain3d.interpretability.cases import explain_case
            from brain3d.interpretability.figures import save_case_figure

            png = args.explain if len(scans) == 1 else args.explain / f"{scan.name.split('.nii')[0]}.png"
            case = explain_case(
                model, pre.volume, text, lime, with_side=row["findings"]["side"] in ("left", "right")
            )
            save_case_figure(
                png, pre.volume, case.explanations["report"].voxel_map(case.labels), None, scan.name
            )
            row["explanation"] = str(png)
        rows.append(row)
        if not args.json:
            f = row["findings"]
            head = f"== {scan}\n" if len(scans) > 1 else ""
            p = row["side_probability"]
            side = f"{f['side']} (p={p[f['side']]:.2f})" if p else f["side"]
            print(
                f"{head}{text}\n\nfindings: side={side}; anatomy={', '.join(f['anatomy']) or '-'}; "
                f"pathology={', '.join(f['pathology']) or '-'}"
            )
            if args.explain:
                print(f"explanation: {row['explanation']}")
            print(describe(info) + ("\n" if len(scans) > 1 else ""))
    bar.close()
    if args.json:
        ok = [r for r in rows if r["status"] == "ok"]
        if ok:
            print(json.dumps(ok[0] if len(scans) == 1 else ok, indent=2))
    if args.out:
        write_rows(args.out, rows)
    for scan, reason in failed:
        _fail(f"{scan}: {reason}")
    return EXIT_BAD_INPUT if failed else 0


def _said_in_one_line(exc: Exception) -> bool:
    """--model without brain3d.json, a model file that changed since its card pinned it, a release file
    refused, a precision this machine cannot give: errors whose message is the whole story (imported here: the
    libraries must not load before `report` quiets them)."""
    from brain3d.config import ParamsError
    from brain3d.fileio import IntegrityError
    from brain3d.models.release import ReleaseError

    return isinstance(exc, (FileNotFoundError, IntegrityError, ReleaseError, ParamsError))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "report":
            return report(args)
    except Exception as exc:
        if _said_in_one_line(exc):
            return _fail(str(exc))
        raise
    return 1


if __name__ == "__main__":
    sys.exit(main())
