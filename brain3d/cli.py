"""`brain3d` command: a report for one scan with a trained model.

    brain3d report SCAN.nii.gz [--model models/phase2b] [--explain OUT.png] [--json]

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
    rp.add_argument("--skull-strip", choices=("registration", "threshold"), default="registration",
                    help="skull-stripping method for unstripped scans (default: registration)")
    rp.add_argument("--explain", type=Path, metavar="OUT.png",
                    help="also write a 3D LIME figure (axial/coronal/sagittal; red supports the report)")
    rp.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    rp.add_argument("--max-new-tokens", type=int, default=256, help="report length limit (default: 256)")
    rp.add_argument("--seed", type=int, default=42, help="sampling seed (default: 42)")
    rp.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    return ap


def findings(report: str) -> dict:
    """Side, lobes/structures and pathology asserted by a report (negation-aware)."""
    from brain3d.data.reports import laterality_from_report
    from brain3d.metrics.clinical import extract_negation_aware

    found = extract_negation_aware(report)
    pathology = sorted(found["pathology"])
    return {"side": laterality_from_report(report) if pathology else "none", "anatomy": sorted(found["anatomy"]),
            "pathology": pathology}


def report(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from brain3d import runtime
    from brain3d.data.manifest import InputError
    from brain3d.data.preprocess import preprocess_subject
    from brain3d.models import checkpoint
    from brain3d.models.model import Decoding

    runtime.setup()
    import torch

    t0 = time.perf_counter()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    steps = tqdm(total=4 if args.explain else 3, desc="brain3d", unit="step", file=sys.stderr, leave=False)
    try:
        card = checkpoint.read_card(args.model)
        steps.set_postfix_str("preprocess")
        pre = preprocess_subject(args.scan.name, args.scan, card["model_config"].volume_shape,
                                 skull_stripped=args.skull_stripped, skull_strip=args.skull_strip)
    except InputError as exc:
        steps.close()
        print(f"brain3d: {args.scan}: {exc.reason}", file=sys.stderr)
        return EXIT_BAD_INPUT
    steps.update()
    steps.set_postfix_str("load model")
    model = checkpoint.load(args.model, device)
    steps.update()
    steps.set_postfix_str("generate")
    with torch.no_grad():
        z = model.visual(torch.from_numpy(pre.volume)[None, None].to(device))
    text = model.generate(z, Decoding(max_new_tokens=args.max_new_tokens), seed=args.seed)[0]
    steps.update()
    result = {"scan": str(args.scan), "model": str(args.model), "report": text, "findings": findings(text)}
    if args.explain:
        from brain3d.interpretability.cases import LimeSettings, explain_case
        from brain3d.interpretability.figures import save_case_figure

        steps.set_postfix_str("explain")
        case = explain_case(model, pre.volume, text, LimeSettings(),
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
        print(f"brain3d: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 1


if __name__ == "__main__":
    sys.exit(main())
