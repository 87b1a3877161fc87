"""`brain3d` command: a report for one scan with a trained model.

    brain3d report SCAN.nii.gz [--model models/phase2b] [--explain OUT.png [--lime-samples N]] [--json]

Decoding and LIME settings are params.yaml's `generate` and `lime` sections (`--params`), as in the stages.

Bad input (missing file, not a NIfTI, 4D, NaN, not a brain) prints one line on stderr and exits 2;
never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="brain3d", description="Brain3D: radiology reports for 3D brain FLAIR MRI.")
    sub = ap.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("report", help="write the radiology report of one FLAIR NIfTI scan",
                        description="Preprocess one FLAIR scan exactly as in training (skull strip, RAS, "
                                    "percentile scaling, resampling) and generate its report.")
    rp.add_argument("scan", type=Path, help="FLAIR volume (.nii or .nii.gz), any orientation")
    rp.add_argument("--model", type=Path, default=Path("models/phase2b"),
                    help="a trained model directory holding brain3d.json (default: models/phase2b)")
    rp.add_argument("--skull-stripped", action="store_true",
                    help="the scan is already brain-extracted (e.g. BraTS); skip skull stripping")
    rp.add_argument("--skull-strip", choices=("registration", "threshold"),
                    help="skull-stripping method for unstripped scans (default: preprocess.skull_strip)")
    rp.add_argument("--explain", type=Path, metavar="OUT.png",
                    help="also write a 3D LIME figure (axial/coronal/sagittal; red supports the report)")
    rp.add_argument("--lime-samples", type=int, metavar="N",
                    help="perturbed volumes scored for --explain (default: lime.n_samples, as the lime stage)")
    rp.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    rp.add_argument("--max-new-tokens", type=int, help="report length limit (default: generate.max_new_tokens)")
    rp.add_argument("--seed", type=int, help="sampling seed (default: generate.seed)")
    rp.add_argument("--params", type=Path, default=Path("params.yaml"),
                    help="params file of the decoding (`generate`) and LIME (`lime`) settings (default: params.yaml)")
    rp.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    return ap


def findings(report: str) -> dict:
    """Side, lobes/structures and pathology asserted by a report (negation-aware, as phase 1's targets)."""
    from brain3d.data.findings import asserted_side, extract_negation_aware

    found = extract_negation_aware(report)
    pathology = sorted(found["pathology"])
    return {"side": asserted_side(report) if pathology else "none", "anatomy": sorted(found["anatomy"]),
            "pathology": pathology}


def _fail(message: str) -> int:
    """One line on stderr (reasons can carry a library's multi-line message), exit status 2."""
    print(" ".join(f"brain3d: {message}".split()), file=sys.stderr)
    return EXIT_BAD_INPUT


# read by the Hugging Face libraries when they are first imported (a value the user set is kept)
QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "DATASETS_VERBOSITY": "error", "HF_HUB_VERBOSITY": "error",
             "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}


def _quiet_libraries() -> None:
    """On a user's terminal only this command speaks: other libraries' log records below ERROR, their
    warnings and their progress bars are dropped; brain3d's own logging and warnings are left as they are.
    Called before the libraries are imported, so that what they say on import is dropped too."""
    import logging
    import os
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


def settings(cfg: dict, args: argparse.Namespace):
    """(Decoding, LimeSettings): params.yaml's `generate` and `lime` sections with the command's overrides."""
    from brain3d.generation import decoding_from_params
    from brain3d.interpretability.cases import LimeSettings

    g = {**cfg["generate"], **({"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {})}
    lime = {**cfg["lime"], **({"n_samples": args.lime_samples} if args.lime_samples is not None else {})}
    return decoding_from_params(g), LimeSettings.from_params(lime)


def report(args: argparse.Namespace) -> int:
    from brain3d import config, runtime

    runtime.set_offline_env()  # before any hub library reads its environment
    _quiet_libraries()  # before the libraries below are imported: they may speak on import
    runtime.setup()
    import torch
    from tqdm.auto import tqdm

    from brain3d.data.manifest import InputError
    from brain3d.data.preprocess import preprocess_subject
    from brain3d.models import checkpoint

    t0 = time.perf_counter()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        return _fail(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    try:
        cfg = config.load(args.params)
    except (OSError, config.ParamsError) as exc:
        return _fail(f"{args.params}: {exc}")
    decoding, lime = settings(cfg, args)
    if args.explain and lime.n_samples < 2:
        return _fail(f"--lime-samples must be at least 2, got {lime.n_samples}")
    # progress only on a terminal: piped stderr carries nothing but the one-line error of bad input
    steps = tqdm(total=4 if args.explain else 3, desc="brain3d", unit="step", file=sys.stderr, leave=False,
                 disable=not sys.stderr.isatty())
    try:
        card = checkpoint.read_card(args.model)
        steps.set_postfix_str("preprocess")
        p = cfg["preprocess"]
        pre = preprocess_subject(args.scan.name, args.scan, card["model_config"].volume_shape,
                                 skull_stripped=args.skull_stripped, skull_strip=args.skull_strip or p["skull_strip"],
                                 fov_mm=p["fov_mm"], min_similarity=p["min_brain_similarity"])
    except InputError as exc:
        steps.close()
        return _fail(f"{args.scan}: {exc.reason}")
    steps.update()
    steps.set_postfix_str("load model")
    model = checkpoint.load(args.model, device)
    steps.update()
    steps.set_postfix_str("generate")
    with torch.no_grad():
        z = model.visual(torch.from_numpy(pre.volume)[None, None].to(device))
    seed = cfg["generate"]["seed"] if args.seed is None else args.seed
    text = model.generate(z, decoding, seed=seed)[0]
    steps.update()
    result = {"scan": str(args.scan), "model": str(args.model), "report": text, "findings": findings(text)}
    if args.explain:
        from brain3d.interpretability.cases import explain_case
        from brain3d.interpretability.figures import save_case_figure

        steps.set_postfix_str("explain")
        case = explain_case(model, pre.volume, text, lime,
                            with_side=result["findings"]["side"] in ("left", "right"))
        exp = case.explanations["report"]
        save_case_figure(args.explain, pre.volume, exp.voxel_map(case.labels), None, args.scan.name)
        result["explanation"] = str(args.explain)
        steps.update()
    steps.close()
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        f = result["findings"]
        print(text)
        print(f"\nfindings: side={f['side']}; anatomy={', '.join(f['anatomy']) or '-'}; "
              f"pathology={', '.join(f['pathology']) or '-'}")
        if args.explain:
            print(f"explanation: {args.explain}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "report":
            return report(args)
    except FileNotFoundError as exc:  # e.g. --model without brain3d.json
        return _fail(str(exc))
    return 1


if __name__ == "__main__":
    sys.exit(main())
