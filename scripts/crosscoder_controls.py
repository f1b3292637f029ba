"""The crosscoder on the toy world and its two controls: the controls table, the emergence figure.

Reads finished studies with a ``crosscoder:`` section (a study with ``controls: [codeswitch,
disjoint]`` holds all three: pass its folder alone) and prints the markdown table of
docs/toy-world.md ("Crosscoders through time"); ``--figure`` copies the positive control's
emergence figure (or the first world's) there.

    .venv/bin/python scripts/crosscoder_controls.py runs/toy-cc --figure docs/figures/crosscoder_emergence.png
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from sae_bilingual.report.crosscoder_section import crosscoder_controls_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("studies", nargs="+", type=Path)
    ap.add_argument("--figure", type=Path, default=None)
    a = ap.parse_args()
    worlds: dict[str, Path] = {}
    for s in a.studies:
        worlds[s.name] = s
        for name in ("codeswitch", "disjoint"):
            if (s / "controls" / name).is_dir():
                worlds[f"{s.name} {name}"] = s / "controls" / name
    df = crosscoder_controls_table(worlds)
    print(df.to_markdown(index=False))
    if a.figure is not None:
        pick = next((p for k, p in worlds.items() if "codeswitch" in k), next(iter(worlds.values())))
        png = sorted((pick / "figures").glob("crosscoder_*.png"))
        if png:
            a.figure.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png[0], a.figure)
            print(f"figure: {png[0]} -> {a.figure}")


if __name__ == "__main__":
    main()
