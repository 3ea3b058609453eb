"""Evaluate stock against ours as the judge does, one family at a time, and write the report.

    python eval/run.py [--families qwen2_moe,deepseek,qwen2_vl,llama,janus] [--size topology] [--llm-dir llm]
                       [--model-path FAMILY=DIR ...] [--image cat=PATH --image man=PATH]
                       [--max-new-tokens 50] [--count-tokens 8] [--out eval_output] [--as-ascend] [--verbose]

Each (family, variant) runs in its own child process so that peak memory is its own; stock runs
first and its texts and logits become the target ours must match. A family uses real weights
when --model-path names them or download.sh laid them under --llm-dir, else its generated
fixture of --size. A family whose stock class this mindnlp lacks (deepseek on the 0.4.1 wheel) runs
ours alone, without a pass check; stock deepseek runs on the CPU with eval/deepseek_cpu_shims.py.
The janus family (Janus-Pro end to end) needs the branch's janus package and is skipped, with a
note, on a base without it; its stock child runs with MINDNLP_ACCEL=0, and both are built on the
CPU with eval/janus_cpu_shims.py (janus's unused VQ model calls mint.norm when built).
Outputs: eval_output/<family>/<variant>.json, target/ and candidate/ logits,
report.md and charts.

On the CPU, ours is also counted on its Ascend path: a fresh fp16 copy (the CPU's stand-in for bf16)
generates in the as-on-Ascend mode (ascend_mode.py) under the default kernel policy, each fused kernel,
each F.linear and each matmul of accel's pyboost branches one launch; the cost model predicts ours from those counts, since on the device the
Ascend path is what runs. That count runs the decode step in PyNative (MINDNLP_ACCEL_JIT=0): with
jit_level O0 a compiled step launches on the device the same kernels, from one host dispatch. A
compiled graph call counts as one launch (counters.py), its kernels apart. On a device nothing is counted (counting needs blocking dispatch, which the
judge's timings do not use). --as-ascend runs every child wholly in that mode (for testing the device
check's flow here).
"""
import argparse
import collections
import contextlib
import importlib
import json
import logging
import os
import sys
import time

import console

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_FAMILIES = ("qwen2_moe", "deepseek", "qwen2_vl", "llama", "janus")
# download.sh's directory names under llm/, per family.
LLM_DIRS = {"qwen2_moe": "Qwen1.5-MoE-A2.7B-Chat", "deepseek": "deepseek-moe-16b-chat",
            "qwen2_vl": "Qwen2-VL-2B-Instruct", "llama": "Janus-Pro-7B", "janus": "Janus-Pro-7B"}


def resolve_model(family, args):
    """(path, description) of the weights to evaluate for family; a clear exit on a bad directory."""
    import fixtures
    import judge

    if family in args.model_paths:
        path = args.model_paths[family]
        try:
            judge.check_model_dir(family, path)
        except judge.FixtureError as err:
            raise SystemExit(f"--model-path {family}={path}: {err}") from None
        return path, f"weights at {path}"
    downloaded = os.path.join(args.llm_dir, LLM_DIRS[family])
    if os.path.isfile(os.path.join(downloaded, "config.json")):
        if family == "llama":
            language_model = os.path.join(downloaded, "language_model")
            if not os.path.isfile(os.path.join(language_model, "config.json")):
                raise SystemExit(f"{downloaded}: Janus-Pro's language model is evaluated from a "
                                 "language_model/ directory in Hugging Face Llama layout; none found")
            downloaded = language_model
        return downloaded, f"weights at {downloaded}"
    if family == "janus":
        import janus_fixture

        depth = janus_fixture.DEPTHS[args.size]
        path = janus_fixture.ensure(args.size, depth, os.path.join(ROOT, "eval_cache", "fixtures"))
        return path, (f"generated {args.size} fixture (seeded random weights; the llama {args.size} LM, a SigLIP "
                      f"tower of the real width with {depth} of its 24 blocks)")
    path = fixtures.ensure(family, args.size, os.path.join(ROOT, "eval_cache", "fixtures"))
    return path, f"generated {args.size} fixture (seeded random weights)"


def run_child(args):
    """One (family, variant): the judge's protocol, then counted generate; writes <variant>.json."""
    if args.family == "janus":  # stock janus is the same code without accel, read at mindnlp's import
        os.environ["MINDNLP_ACCEL"] = "0" if args.variant == "stock" else "1"
    import mindspore

    if mindspore.get_context("device_target") == "CPU":
        mindspore.runtime.launch_blocking()
    import counters
    import judge
    import passcheck

    import mindnlp

    if args.variant == "ours" and not os.path.isdir(os.path.join(os.path.dirname(mindnlp.__file__), "accel")):
        raise SystemExit(f"mindnlp at {os.path.dirname(mindnlp.__file__)} is not patched (no mindnlp/accel): "
                         "put the patched tree first on PYTHONPATH, as test.sh does")
    mode, stand_ins = None, False
    with contextlib.ExitStack() as stack:
        if args.variant == "stock" and mindspore.get_context("device_target") == "CPU":
            stand_ins = stack.enter_context(stock_on_cpu(args.family))
        if args.as_ascend:
            from ascend_mode import AscendMode

            mode = stack.enter_context(AscendMode())
        _measure(args, counters, judge, passcheck, stand_ins)
    if mode is not None:
        mode.assert_no_refusals()


class AccelLog(logging.Handler):
    """What the patched mindnlp logs on the "mindnlp.accel" logger: its messages, and the kind and
    seconds of the records that carry `compile_seconds` (each compile of a graph)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages, self.compile_s, self.compile_kinds = [], [], []

    def emit(self, record):
        self.messages.append(record.getMessage())
        if hasattr(record, "compile_seconds"):
            self.compile_s.append(record.compile_seconds)
            self.compile_kinds.append(getattr(record, "graph_kind", "graph"))


def _measure(args, counters, judge, passcheck, stand_ins):
    import mindspore

    accel_log = AccelLog()
    logger = logging.getLogger("mindnlp.accel")
    logger.addHandler(accel_log)
    logger.setLevel(logging.INFO)
    loaded = judge.load(args.family, args.path, args.variant)
    images = dict(args.images) or None
    run = judge.run_family(args.family, loaded.model, loaded.processor, args.max_new_tokens, images,
                           compiles=lambda: len(accel_log.compile_s))
    protocol_compiles = len(accel_log.compile_s)
    case = judge.prompt_cases(args.family, images)[0][1]
    # Counting attributes launches by wall clock, which needs blocking dispatch: on the CPU the child
    # runs blocking throughout; on a device the timings above ran as the judge runs, and nothing is counted.
    on_cpu = mindspore.get_context("device_target") == "CPU"
    counts = count_generate(loaded, case, args, counters, judge) if on_cpu else None
    kernel_decisions, ascend_counts = {}, None
    logged = {"messages": list(accel_log.messages), "compile_s": list(accel_log.compile_s),
              "compile_kinds": list(accel_log.compile_kinds),
              "protocol_compiles": protocol_compiles}  # the judge's protocol, then the count
    if args.variant == "ours" and not loaded.ours_is_stock:
        from mindnlp.accel import device

        kernel_decisions = device.decisions()  # every fused kernel's self-check in this process
        if on_cpu and not args.as_ascend:
            ascend_counts = count_on_ascend_path(args, counters, judge, case)
    logging.getLogger("mindnlp.accel").removeHandler(accel_log)
    out_dir = os.path.join(args.out, args.family)
    passcheck.save_target(run, os.path.join(out_dir, "target" if args.variant == "stock" else "candidate"))
    summary = {key: run[key] for key in ("family", "model_class", "max_new_tokens", "decode_rule", "warmup_s",
                                         "warmup_compiles", "prefill_s", "processor_s", "decode_per_token_s",
                                         "memory")}
    summary.update(model_class=loaded.model_class, variant=args.variant, path=args.path, load_s=loaded.load_s,
                   device_target=mindspore.get_context("device_target"),
                   ours_is_stock=loaded.ours_is_stock, counts=counts and counts.to_dict(), ascend_counts=ascend_counts,
                   stock_stand_ins=bool(stand_ins),
                   kernel_decisions=kernel_decisions, accel_log=logged,
                   prompts=[{k: v for k, v in p.items() if k != "logits"} for p in run["prompts"]])
    with open(os.path.join(out_dir, f"{args.variant}.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)


# Families whose stock needs stand-ins to run on the CPU backend: the eval/ module:function giving the
# context the stock child runs in, and the report's note on it.
STOCK_ON_CPU = {
    "deepseek": ("deepseek_cpu_shims:stock_deepseek_on_cpu",
                 "stock deepseek ran on the CPU with the three stand-ins of eval/deepseek_cpu_shims.py (its mask "
                 "fill value, bincount and scatter_add have no CPU kernel here); its arithmetic is unchanged"),
    "qwen2_vl": ("qwen2_vl_cpu_shims:stock_qwen2_vl_on_cpu",
                 "on the 0.4 branch, stock Qwen2-VL ran on the CPU with eval/qwen2_vl_cpu_shims.py: the branch casts "
                 "the merged embeddings through fp16 to bf16, which this CPU cannot run, and the shim gives that last "
                 "cast the embeddings' own dtype (fp32 here; in bf16 it is the branch's code exactly)"),
    "janus": ("janus_cpu_shims:janus_on_cpu",
              "stock and ours were built on the CPU with eval/janus_cpu_shims.py: janus's VQ model, which "
              "understanding never runs, calls mint.norm when built, and it has no CPU kernel"),
}


def stand_in_notes(family, stock):
    """The report's note on the stand-ins stock ran with, where they changed something on this base."""
    return [f"{family}: {STOCK_ON_CPU[family][1]}"] if family in STOCK_ON_CPU and stock.get("stock_stand_ins") else []


def stock_on_cpu(family):
    """The context stock `family` runs in on the CPU backend (STOCK_ON_CPU), or one that does nothing;
    it gives whether its stand-ins changed anything on this base."""
    if family not in STOCK_ON_CPU:
        return contextlib.nullcontext(False)
    module_name, function = STOCK_ON_CPU[family][0].split(":")
    return getattr(importlib.import_module(module_name), function)()


def count_generate(loaded, case, args, counters, judge):
    """Counts of one judge-style generate of --count-tokens tokens on `case` by the loaded model,
    its input preparation counted as prefill (for janus: the processor, vision tower and merge)."""
    return counters.count_generate(
        judge.generator(args.family, loaded.model), dict(judge.GENERATE_KWARGS, max_new_tokens=args.count_tokens),
        prepare=lambda: judge.prepare_inputs(args.family, loaded.model, loaded.processor, case))


def count_on_ascend_path(args, counters, judge, case):
    """Counts (to_dict) of ours generating in the as-on-Ascend mode, in fp16 (CPU only)."""
    import mindspore
    from ascend_mode import AscendMode

    with AscendMode() as mode, _environment(MINDNLP_ACCEL_JIT="0"):
        loaded = judge.load(args.family, args.path, "ours", dtype=mindspore.float16)
        counts = count_generate(loaded, case, args, counters, judge)
        del loaded
    mode.assert_no_refusals()
    return counts.to_dict()


@contextlib.contextmanager
def _environment(**values):
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value


def cpu_ticks(stat_path="/proc/stat"):
    """(stolen, total) CPU ticks of the whole machine so far, or None where the kernel does not say.

    Stolen ticks are time the hypervisor gave this virtual machine's CPUs to others: on a shared
    host they slow whichever variant runs at the time, so the report shows them per variant."""
    try:
        with open(stat_path, encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    ticks = [int(value) for value in fields[1:]]
    return ticks[7], sum(ticks)


def steal_share(before, after):
    """Share of the CPU time between two cpu_ticks() readings that was stolen (None if unknown)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


class Progress:
    """Start lines with an estimate of the time left, from the variants run so far."""

    def __init__(self, total):
        self.total, self.done, self.started = total, 0, time.perf_counter()

    def start(self, name, what):
        left = ""
        if self.done:
            per_variant = (time.perf_counter() - self.started) / self.done
            left = f"; about {per_variant * (self.total - self.done) / 60:.0f} min left in all"
        print(f"{name}: starting, {what} ({self.done + 1} of {self.total}{left})", flush=True)

    def end(self):
        self.done += 1


def spawn(family, variant, path, args, progress, what):
    command = [sys.executable, os.path.abspath(__file__), "--child", family, variant, path,
               "--out", args.out, "--max-new-tokens", str(args.max_new_tokens),
               "--count-tokens", str(args.count_tokens)] + (["--as-ascend"] if args.as_ascend else [])
    for name, image in args.images:
        command += ["--image", f"{name}={image}"]
    progress.start(f"{family}/{variant}", what)
    started, ticks, pool = time.perf_counter(), cpu_ticks(), {}
    # MindSpore then accounts for its memory pool as the child ends (console.POOL_LINE)
    env = dict(os.environ, MS_DEV_RUNTIME_CONF=",".join(
        part for part in (os.environ.get("MS_DEV_RUNTIME_CONF"), "memory_statistics:True") if part))
    returncode = console.run(command, verbose=args.verbose, env=env, pool=pool)
    progress.end()
    if returncode != 0:
        raise SystemExit(f"{family}/{variant} failed (exit {returncode}); see the output above")
    with open(os.path.join(args.out, family, f"{variant}.json"), encoding="utf-8") as f:
        result = json.load(f)
    result["memory"]["pool"] = pool or None
    result["cpu_steal_share"] = steal_share(ticks, cpu_ticks())
    steal = result["cpu_steal_share"]
    print(f"{family}/{variant}: done in {time.perf_counter() - started:.0f} s: prefill {result['prefill_s']:.3f} s, "
          f"decode {result['decode_per_token_s']:.4f} s/token"
          + ("" if steal is None else f", {100 * steal:.1f}% of CPU time stolen by the host"), flush=True)
    return result


def compile_notes(family, ours):
    """The report's lines on what ours compiled (how many graphs of each kind, and their compile time,
    in the judge's warm-up, in its timed calls, and in the counted generate after them) and on what
    accel decided about its graphs."""
    logged = ours.get("accel_log") or {}
    notes = []
    if logged.get("compile_s"):
        seconds, kinds, protocol = logged["compile_s"], logged.get("compile_kinds") or [], logged["protocol_compiles"]
        timed = sum(sum(p["compiles"].values()) for p in ours["prompts"] if p.get("compiles"))
        by_kind = collections.Counter(kinds[:protocol])
        notes.append(f"{family}: ours compiled {ours.get('warmup_compiles', protocol - timed)} graph(s) in the judge's "
                     f"warm-up and {timed} in its timed calls (" + ", ".join(f"{n} {kind}" for kind, n in by_kind.items())
                     + f"; {sum(seconds[:protocol]):.1f} s of compiling in all), {len(seconds) - protocol} in the "
                     "counted generate" + ("" if not timed else "; a compile in a timed call is in its figure"))
    notes += [f"{family}: {message}" for message in logged.get("messages", []) if "adopted" in message
              or "not used" in message or "disabled" in message or "longer than" in message]
    return notes


def prompt_length(prompt):
    """A prompt's length as the report gives it, e.g. "cat 1023 (999 image)"."""
    image = prompt.get("image_tokens")
    return f"{prompt['name']} {prompt['prompt_tokens']}" + (f" ({image} image)" if image else "")


def report_row(result, checks=None):
    counts = result["counts"] or {}  # None where the run was not counted (on a device)
    pool = result["memory"].get("pool") or {}
    row = {"family": result["family"], "variant": result["variant"], "prefill_s": result["prefill_s"],
           "decode_s_per_token": result["decode_per_token_s"],
           "memory_bytes": result["memory"]["peak_bytes"], "memory_source": result["memory"]["source"],
           "pool_peak_bytes": pool.get("peak_bytes"), "pool_reserved_bytes": pool.get("reserved_bytes"),
           "prefill_ops": counts.get("prefill_ops"), "prefill_syncs": counts.get("prefill_syncs"),
           "decode_ops": counts.get("decode_ops"), "decode_syncs": counts.get("decode_syncs"),
           "cpu_steal_pct": None if result.get("cpu_steal_share") is None else 100 * result["cpu_steal_share"],
           "top": counts.get("top_decode") or counts.get("top_prefill"),
           "prompt_lengths": ", ".join(prompt_length(p) for p in result.get("prompts", []))}
    row.update(prefill_graph_calls=counts.get("prefill_graph_calls"), decode_graph_calls=counts.get("decode_graph_calls"))
    if result.get("ascend_counts"):
        ascend = result["ascend_counts"]
        row.update(ascend_prefill_ops=ascend["prefill_ops"], ascend_decode_ops=ascend["decode_ops"],
                   ascend_prefill_syncs=ascend["prefill_syncs"], ascend_decode_syncs=ascend["decode_syncs"])
    if checks is not None:
        passed = sum(check.passed for check in checks)
        row["pass_check"] = f"{passed}/{len(checks)} prompts pass" + "".join(
            f"; {c.name}: {c.reason} (ids {'identical' if c.ids_identical else 'differ'}, first argmax "
            f"step {c.first_argmax_step}, max softmax diff {c.max_softmax_diff:.2e})" for c in checks)
    return row


def device_counts(row):
    """What a row's variant runs on the device per phase, for the cost model: its host dispatches (a
    graph call one each), its syncs on the Ascend path where counted there (the CPU's read of a replayed
    graph's output is CPU-only), and the kernels its graphs launch: the Ascend path's launches (counted
    in PyNative, where O0 graphs launch the same kernels) less the dispatches outside its graphs."""
    counts = {}
    for phase in ("prefill", "decode"):
        host, calls, ascend = row[f"{phase}_ops"], row.get(f"{phase}_graph_calls") or 0, row.get(f"ascend_{phase}_ops")
        syncs = row.get(f"ascend_{phase}_syncs", row[f"{phase}_syncs"])
        if ascend is None:
            counts.update({f"{phase}_ops": host, f"{phase}_syncs": row[f"{phase}_syncs"]})
        elif calls:
            counts.update({f"{phase}_ops": host, f"{phase}_syncs": syncs,
                           f"{phase}_graph_kernels": max(0.0, ascend - (host - calls))})
        else:
            counts.update({f"{phase}_ops": ascend, f"{phase}_syncs": syncs})
    return counts


def add_predictions(rows, stock_counts):
    """Cost-model predictions of the Ascend times, calibrated on the stock rows, the device-memory
    prediction and the judge's score over them; returns notes."""
    import costmodel
    import device_memory
    import score

    try:
        fit = costmodel.calibrate(costmodel.baseline_samples(stock_counts), by_phase=True)
    except ValueError as err:
        return [f"No Ascend prediction: {err}"]
    notes, predicted = fit.describe(), {}
    kernel_costs = costmodel.GRAPH_KERNEL_SECONDS
    notes += ["", f"Compiled graphs: each kernel they launch costs c_kernel on the device, "
              f"{kernel_costs['middle'] * 1e6:g} us in the predictions above, the range "
              f"{kernel_costs['low'] * 1e6:g}-{kernel_costs['high'] * 1e6:g} us below (costmodel.GRAPH_KERNEL_SECONDS "
              "says where the values come from):", ""]
    for row in rows:
        counts = device_counts(row)
        for phase in ("prefill", "decode"):
            row[f"predicted_{phase}_s"] = costmodel.predict(fit, counts, row["family"], phase)
            ends = [costmodel.predict(fit, counts, row["family"], phase, kernel_costs[end]) for end in ("low", "high")]
            kernels = counts.get(f"{phase}_graph_kernels")
            if kernels:
                notes.append(f"- {row['family']}/{row['variant']} {phase}: {kernels:.0f} graph kernels; "
                             f"{ends[0]:.4g}-{ends[1]:.4g} s")
        if row["variant"] == "ours" and row["family"] != "llama":
            gib = device_memory.predict(row["family"], "ours")["gib"]
            predicted[row["family"]] = {"prefill": row["predicted_prefill_s"], "decode": row["predicted_decode_s"],
                                        "memory": gib * device_memory.GIB / 1e9}
    families = [family for family in ("qwen2_moe", "deepseek", "qwen2_vl", "janus") if family in predicted]
    notes += ["", *device_memory.describe(families or ["qwen2_moe"]), "", *score.describe(predicted)]
    return notes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(DEFAULT_FAMILIES))
    parser.add_argument("--size", default="topology", choices=("tiny", "mixed", "topology"))
    parser.add_argument("--llm-dir", default=os.path.join(ROOT, "llm"))
    parser.add_argument("--model-path", action="append", default=[], metavar="FAMILY=DIR")
    parser.add_argument("--image", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--max-new-tokens", type=int, default=50)
    parser.add_argument("--count-tokens", type=int, default=8)
    parser.add_argument("--out", default=os.path.join(ROOT, "eval_output"))
    parser.add_argument("--as-ascend", action="store_true",
                        help="run every child in the as-on-Ascend mode (tests the device check's flow)")
    parser.add_argument("--verbose", action="store_true",
                        help="show every message of the runs, also the upstream notices console.QUIET drops")
    parser.add_argument("--child", nargs=3, metavar=("FAMILY", "VARIANT", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.images = [pair_of(item, "--image") for item in args.image]
    for name, path in args.images:
        if not os.path.isfile(path):
            raise SystemExit(f"--image {name}={path}: no such file")
    if args.child:
        args.family, args.variant, args.path = args.child
        return run_child(args)
    args.model_paths = dict(pair_of(item, "--model-path") for item in args.model_path)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = sorted(set(families) - set(LLM_DIRS))
    if unknown:
        raise SystemExit(f"unknown families {unknown}; known: {sorted(LLM_DIRS)}")
    import passcheck
    import report

    import judge

    rows, stock_counts, notes, all_pass, device_targets = [], {}, [], True, set()
    progress = Progress(sum(2 if judge.stock_available(family) else int(family != "janus") for family in families))
    for family in families:
        if family == "janus" and not judge.stock_available(family):
            print("janus: skipped: this base has no llm/inference/janus_pro (the 0.4 branch has it); the llama "
                  "family stands in with Janus-Pro's language model", flush=True)
            notes.append("janus: not run: this base has no janus package (run on a branch base); the llama "
                         "family is Janus-Pro's language model alone")
            continue
        path, what = resolve_model(family, args)
        if not judge.stock_available(family):
            print(f"{family}/stock: this mindnlp has no stock {family} (the 0.4 branch has it); ours alone",
                  flush=True)
            ours = spawn(family, "ours", path, args, progress, what)
            device_targets.add(ours["device_target"])
            rows.append(report_row(ours))
            notes += compile_notes(family, ours)
            notes.append(f"{family}: {what}; ours is {ours['model_class']}; stock is unavailable on this base "
                         f"(no {judge.STOCK_CLASSES[family][0]}: run on a branch base for stock and the pass check)")
            continue
        stock = spawn(family, "stock", path, args, progress, what)
        ours = spawn(family, "ours", path, args, progress, what)
        device_targets.update((stock["device_target"], ours["device_target"]))
        out_dir = os.path.join(args.out, family)
        checks = passcheck.check_run(passcheck.load_target(os.path.join(out_dir, "target")),
                                     passcheck.load_target(os.path.join(out_dir, "candidate")))
        all_pass &= passcheck.all_passed(checks)
        if stock["counts"] is not None:
            stock_counts[family] = stock["counts"]
        rows += [report_row(stock), report_row(ours, checks)]
        notes.append(f"{family}: {what}; ours is {ours['model_class']}"
                     + (" (stock served: no accelerated class, or it fell back for this config)"
                        if ours["ours_is_stock"] else ""))
        notes += stand_in_notes(family, stock)
        notes += compile_notes(family, ours)
        if stock.get("processor_s") is not None:
            notes.append(f"{family}: the processor's share of prefill (its call; for janus with the image file's "
                         f"load, as the judge times it): stock "
                         f"{stock['processor_s']:.3f} of {stock['prefill_s']:.3f} s, ours {ours['processor_s']:.3f} "
                         f"of {ours['prefill_s']:.3f} s")
    notes += add_predictions(rows, stock_counts) if stock_counts else [
        "No Ascend prediction: no stock run was counted (nothing is counted on a device, and a base without "
        "the family's stock has no stock run)"]
    # read from the children (this process imports no MindSpore, which would print its own notices)
    dispatch = ("synchronous (launch_blocking)" if device_targets == {"CPU"} else "default asynchronous")
    path = report.write_report(rows, args.out, dispatch=dispatch, notes=notes)
    print("\n".join(["", "Summary, stock / ours (above 1 is better):", *report.summary_table(rows), ""]))
    print(f"report: {path} (charts beside it)")
    if not all_pass:
        print("FAILED: ours does not match stock on every prompt (see the report)", file=sys.stderr)
        return 1
    return 0


def pair_of(item, flag):
    name, sep, value = item.partition("=")
    if not sep or not name or not value:
        raise SystemExit(f"{flag} wants NAME=VALUE, got {item!r}")
    return name, value


if __name__ == "__main__":
    sys.exit(main())
