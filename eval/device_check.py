"""The device check: on a machine with an Ascend 910B, one command says which switch settings keep
the judge's outputs and how fast each is.

    bash test.sh --device-check [--families qwen2_moe,llama] [--max-new-tokens 50] [--out eval_output/device_check]

It reports the environment (MindSpore, CANN, SoC), then, for every setting of the switches that change
numerics, runs eval/run.py (stock against ours, the judge's protocol and pass rule) on the models
download.sh laid under llm/, and records the result of every kernel self-check ours made. It writes
device_check.md and device_check.json under --out and names the setting to submit with: the one with
the best score against stock (the judge's: mean over prefill, decode and memory of stock / ours, each
averaged over the models) among the settings where every prompt passes.

Without an Ascend device it prints one line and exits 0. `--as-ascend` runs the flow here in the
as-on-Ascend mode (stand-in kernels, generated fixtures with --size): for testing the flow, not the device.
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import run  # noqa: E402  (eval/run.py: LLM_DIRS, the families)

# (name, environment) of every setting that changes numerics: the fused kernels' switches, each with the
# compiled graphs on and off (a graph agrees with PyNative within a bound, not bit for bit).
NUMERICS = (
    ("fused kernels, bit-exact only (default)", {"MINDNLP_ACCEL_FUSED": "1", "MINDNLP_ACCEL_INEXACT": "0"}),
    ("fused kernels, within tolerance too", {"MINDNLP_ACCEL_FUSED": "1", "MINDNLP_ACCEL_INEXACT": "1"}),
    ("portable twins only", {"MINDNLP_ACCEL_FUSED": "0", "MINDNLP_ACCEL_INEXACT": "0"}),
)
GRAPHS = (("compiled graphs (default)", {"MINDNLP_ACCEL_JIT": "1"}), ("PyNative only", {"MINDNLP_ACCEL_JIT": "0"}))
SETTINGS = tuple((f"{numerics}; {graphs}", {**numerics_env, **graphs_env})
                 for numerics, numerics_env in NUMERICS for graphs, graphs_env in GRAPHS)


def device_target():
    import mindspore

    return mindspore.get_context("device_target")


def environment(as_ascend):
    """What this machine runs: MindSpore, CANN and SoC (as far as they can be read)."""
    import mindspore

    info = {"mindspore": mindspore.__version__, "device_target": device_target(),
            "mode": "as-on-Ascend stand-ins on the CPU (not a device)" if as_ascend else "device"}
    try:
        from mindspore._c_expression import MSContext  # pylint: disable=no-name-in-module

        info["soc"] = MSContext.get_instance().get_ascend_soc_version() or "unknown"
    except (ImportError, AttributeError):
        info["soc"] = "unknown"
    home = os.environ.get("ASCEND_HOME_PATH") or os.environ.get("ASCEND_TOOLKIT_HOME") or "/usr/local/Ascend/ascend-toolkit/latest"
    versions = sorted(glob.glob(os.path.join(home, "*", "version.cfg")) + glob.glob(os.path.join(home, "version.cfg")))
    info["cann"] = _cann_version(versions[0]) if versions else "not found"
    return info


def _cann_version(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if "version" in line.lower() and "=" in line:
                return line.split("=", 1)[1].strip()
    return f"unreadable ({path})"


def families_to_check(args):
    if args.families:
        return [f.strip() for f in args.families.split(",") if f.strip()]
    return [family for family, name in run.LLM_DIRS.items()
            if os.path.isfile(os.path.join(args.llm_dir, name, "config.json"))]


def run_setting(index, name, env, families, args):
    out = os.path.join(args.out, f"setting{index}")
    shutil.rmtree(out, ignore_errors=True)  # no figures of an earlier check
    command = [sys.executable, os.path.join(HERE, "run.py"), "--families", ",".join(families), "--out", out,
               "--max-new-tokens", str(args.max_new_tokens), "--llm-dir", args.llm_dir, "--size", args.size]
    command += ["--as-ascend"] if args.as_ascend else []
    print(f"device check: {name} ({env_text(env)})", flush=True)
    proc = subprocess.run(command, env=dict(os.environ, **env))
    result = {"name": name, "env": env, "exit": proc.returncode, "families": {}}
    for family in families:
        variants = {}
        for variant in ("stock", "ours"):
            path = os.path.join(out, family, f"{variant}.json")
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    variants[variant] = json.load(f)
        result["families"][family] = summarize(variants)
    result["passed"] = proc.returncode == 0 and all(f.get("complete") for f in result["families"].values())
    result["score"] = score(result["families"]) if result["passed"] else None
    return result


def env_text(env):
    """A setting's environment as shell assignments: "MINDNLP_ACCEL_FUSED=1 ..."."""
    return " ".join(f"{key}={value}" for key, value in env.items())


def summarize(variants):
    """Figures of one family under one setting (what the report shows)."""
    if set(variants) != {"stock", "ours"}:
        return {"complete": False}
    stock, ours = variants["stock"], variants["ours"]
    return {"complete": True, "kernels": ours.get("kernel_decisions", {}),
            "prefill_s": (stock["prefill_s"], ours["prefill_s"]),
            "decode_s": (stock["decode_per_token_s"], ours["decode_per_token_s"]),
            "memory_bytes": (stock["memory"]["peak_bytes"], ours["memory"]["peak_bytes"])}


def score(families):
    """100 x the judge's score of ours against stock: the mean over prefill, decode and memory of the
    mean over families of stock / ours (whole-GiB memory steps are not applied: figures are exact)."""
    metrics = ("prefill_s", "decode_s", "memory_bytes")
    per_metric = [sum(f[m][0] / f[m][1] for f in families.values()) / len(families) for m in metrics]
    return 100 * sum(per_metric) / len(per_metric)


def write_report(info, results, args):
    passing = [r for r in results if r["passed"]]
    best = max(passing, key=lambda r: r["score"]) if passing else None
    lines = ["# Device check", "", "## Environment", ""]
    lines += [f"- {key}: {value}" for key, value in info.items()]
    for result in results:
        lines += ["", f"## {result['name']}", "",
                  f"- environment: {env_text(result['env'])}",
                  f"- pass: {'yes' if result['passed'] else 'NO'} (eval/run.py exit {result['exit']})"]
        if result["score"] is not None:
            lines.append(f"- score against stock: {result['score']:.0f} (100 = stock)")
        for family, figures in result["families"].items():
            if not figures.get("complete"):
                lines.append(f"- {family}: no result (see the output above)")
                continue
            lines.append(f"- {family}: prefill {figures['prefill_s'][0]:.4g} -> {figures['prefill_s'][1]:.4g} s, "
                         f"decode {figures['decode_s'][0]:.4g} -> {figures['decode_s'][1]:.4g} s/token, "
                         f"memory {figures['memory_bytes'][0] / 2**30:.2f} -> {figures['memory_bytes'][1] / 2**30:.2f} GiB")
            for kernel, choice in sorted(figures["kernels"].items()):
                lines.append(f"  - kernel {kernel}: {choice}")
    lines += ["", "## Submit with", ""]
    if best is None:
        lines.append("No setting passes on every prompt: do not submit; see README (device check) for what to do.")
    else:
        lines.append(f"{best['name']}: {env_text(best['env'])}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "device_check.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "device_check.json"), "w", encoding="utf-8") as f:
        json.dump({"environment": info, "settings": results, "submit_with": best and best["env"]}, f, indent=2)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="", help="default: every family download.sh laid under --llm-dir")
    parser.add_argument("--llm-dir", default=os.path.join(ROOT, "llm"))
    parser.add_argument("--max-new-tokens", type=int, default=50)
    parser.add_argument("--size", default="topology", choices=("tiny", "mixed", "topology"),
                        help="fixture size for families without weights (with --as-ascend)")
    parser.add_argument("--out", default=os.path.join(ROOT, "eval_output", "device_check"))
    parser.add_argument("--as-ascend", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.as_ascend and device_target() != "Ascend":
        print(f"device check: no Ascend device here (MindSpore's device target is {device_target()}); "
              "run it on the 910B")
        return 0
    families = families_to_check(args)
    if not families:
        print(f"device check: no model weights under {args.llm_dir}; run bash download.sh first")
        return 0
    info = environment(args.as_ascend)
    for key, value in info.items():
        print(f"device check: {key}: {value}", flush=True)
    results = [run_setting(i, name, env, families, args) for i, (name, env) in enumerate(SETTINGS)]
    best = write_report(info, results, args)
    print(f"device check: report in {os.path.join(args.out, 'device_check.md')}; "
          + (f"submit with {env_text(best['env'])}" if best
             else "no setting passes on every prompt"))
    return 0 if best else 1


if __name__ == "__main__":
    sys.exit(main())
