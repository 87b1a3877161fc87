"""DVC stage `phase2a`: projector warm-up (projector + vis_scale) on cached phase-1 visual tokens, LM frozen."""

from stages import _phase2


def main() -> None:
    _phase2.run("phase2a", init="phase1", lora=False)


if __name__ == "__main__":
    main()
