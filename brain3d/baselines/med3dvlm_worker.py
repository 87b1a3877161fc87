"""Runs inside the isolated Med3DVLM environment (transformers 4.48.3): no brain3d imports.

    python med3dvlm_worker.py --model DIR --inputs inputs.npy --out predictions.json --question Q --max-new-tokens N

(--question and --max-new-tokens: the `baselines.med3dvlm` params, passed by `brain3d.baselines.med3dvlm.predict`.)

inputs.npy holds (N, 1, 128, 256, 256) float32 volumes in [0, 1]; greedy decoding; writes a JSON list.
"""

import argparse
import json
import os

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--question", required=True)
    ap.add_argument("--max-new-tokens", type=int, required=True)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(args.model, use_fast=False, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=dtype, trust_remote_code=True).to(
        device
    )
    tower = torch.load(os.path.join(args.model, "vision_tower.bin"), map_location="cpu", weights_only=True)
    model.get_model().vision_tower.load_state_dict(tower)  # not in the main checkpoint
    model.eval()
    n_image_tokens = getattr(model.get_model().config, "proj_out_num", 256)
    prompt = "<im_patch>" * n_image_tokens + args.question
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
    outputs = []
    for volume in np.load(args.inputs, mmap_mode="r"):
        image = torch.from_numpy(np.array(volume))[None].to(device=device, dtype=dtype)
        with torch.no_grad():
            gen = model.generate(
                images=image, inputs=ids, max_new_tokens=args.max_new_tokens, do_sample=False
            )
        outputs.append(tokenizer.batch_decode(gen, skip_special_tokens=True)[0].strip())
    with open(args.out, "w") as fh:
        json.dump(outputs, fh)


if __name__ == "__main__":
    main()
