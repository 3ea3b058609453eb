"""README.md's "What you will see" section, written from a report the harness wrote, never by hand.

    python3 scripts/readme_excerpt.py --report eval_output/bench_deepseek --family deepseek
        copies that run's report.md and its decode chart into docs/example/ and rewrites the section
    python3 scripts/readme_excerpt.py --check
        exits 1 when the section is not what docs/example/ gives (tests/test_readme_excerpt.py runs it)

The section holds the report's header lines, one family's table and the chart, between the markers.
"""
import argparse
import os
import re
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
EXAMPLE = os.path.join(ROOT, "docs", "example")
CHART = "decode.png"
START = "<!-- what-you-will-see: written by scripts/readme_excerpt.py from docs/example/; do not edit -->"
END = "<!-- end of what-you-will-see -->"


def example_family():
    """The family the example shows: the one docs/example/family.txt names."""
    with open(os.path.join(EXAMPLE, "family.txt"), encoding="utf-8") as handle:
        return handle.read().strip()


def section(report, family):
    """The README lines for `family` from the text of a report.md."""
    header = [line for line in report.splitlines() if line.startswith(("- machine:", "- dispatch:"))]
    match = re.search(rf"^## {re.escape(family)}\b.*?\n\n(\|.*?)\n\n", report, re.S | re.M)
    if not match or not header:
        raise ValueError(f"the report has no header lines or no table for {family!r}")
    return [START, "", *header, "", match.group(1), "", f"![Decode, measured on this machine](docs/example/{CHART})",
            "", END]


def render():
    with open(os.path.join(EXAMPLE, "report.md"), encoding="utf-8") as handle:
        return "\n".join(section(handle.read(), example_family()))


def readme_with(block):
    with open(README, encoding="utf-8") as handle:
        text = handle.read()
    if START not in text or END not in text:
        raise ValueError(f"{README} has no what-you-will-see markers")
    before, rest = text.split(START, 1)
    return before + block + rest.split(END, 1)[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", help="a harness output directory (report.md and charts)")
    parser.add_argument("--family", help="the family to show (with --report)")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    if args.check:
        with open(README, encoding="utf-8") as handle:
            if readme_with(render()) != handle.read():
                print("README.md's what-you-will-see section is not docs/example/'s: run scripts/readme_excerpt.py",
                      file=sys.stderr)
                return 1
        return 0
    if not (args.report and args.family):
        parser.error("give --report and --family, or --check")
    with open(os.path.join(args.report, "report.md"), encoding="utf-8") as handle:
        section(handle.read(), args.family)  # fails before anything is written when the family is missing
    os.makedirs(EXAMPLE, exist_ok=True)
    shutil.copyfile(os.path.join(args.report, "report.md"), os.path.join(EXAMPLE, "report.md"))
    shutil.copyfile(os.path.join(args.report, CHART), os.path.join(EXAMPLE, CHART))
    with open(os.path.join(EXAMPLE, "family.txt"), "w", encoding="utf-8") as handle:
        handle.write(args.family + "\n")
    text = readme_with(render())
    with open(README, "w", encoding="utf-8") as handle:
        handle.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
