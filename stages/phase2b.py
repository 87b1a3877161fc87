"""DVC stage `phase2b`: linguistic LoRA (r, alpha from params) on the LM's q/k/v/o + projector, from 2A."""

from stages import _phase2


def main() -> None:
    _phase2.run("phase2b", init="phase2a", lora=True)


if __name__ == "__main__":
    main()
