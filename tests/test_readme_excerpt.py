"""README.md's "What you will see" section is what scripts/readme_excerpt.py makes of docs/example/."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import readme_excerpt  # noqa: E402


def test_readme_section_is_the_scripts_output():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "readme_excerpt.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_section_follows_the_report_and_refuses_one_without_the_family():
    with open(os.path.join(readme_excerpt.EXAMPLE, "report.md"), encoding="utf-8") as handle:
        report = handle.read()
    family = readme_excerpt.example_family()
    block = "\n".join(readme_excerpt.section(report, family))
    assert "| prefill (s) |" in block and "- machine:" in block
    changed = report.replace("| prefill (s) |", "| prefill (s, edited) |", 1)
    assert "\n".join(readme_excerpt.section(changed, family)) != block
    with pytest.raises(ValueError, match="no table for 'nonesuch'"):
        readme_excerpt.section(report, "nonesuch")
