"""The harness's console: upstream notices a user cannot act on are dropped by their exact text
(everything else shows), --verbose shows them, and a run ends with the summary table."""
import os
import re
import subprocess
import sys

import pytest

import console
from conftest import TREE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each message as it reaches the console, copied from harness runs on the 0.4.1 wheel and the branch.
NOTICES = [
    "DeepseekForCausalLM has generative capabilities, as `prepare_inputs_for_generation` is explicitly "
    "overwritten. However, it doesn't directly inherit from `GenerationMixin`.`PreTrainedModel` will NOT "
    "inherit from `GenerationMixin`, and this model will lose the ability to call `generate` and other related "
    "functions.",
    "  - If you are the owner of the model architecture code, please modify your model class such that it "
    "inherits from `GenerationMixin` (after `PreTrainedModel`, otherwise you'll get an exception).",
    "  - If you are not the owner of the model architecture class, please contact the model code owner to update it.",
    "/work/x/mindnlp/transformers/generation/configuration_utils.py:557: UserWarning: `do_sample` is set to "
    "`False`. However, `temperature` is set to `0.7` -- this flag is only used in sample-based generation "
    "modes. You should set `do_sample=True` or unset `temperature`.",
    "/work/x/mindnlp/transformers/generation/configuration_utils.py:579: UserWarning: `do_sample` is set to "
    "`False`. However, `top_k` is set to `20` -- this flag is only used in sample-based generation modes.",
    "Unrecognized keys in `rope_scaling` for 'rope_type'='default': {'mrope_section'}",
    "When a model cache is to be returned, `generate` will return a `Cache` instance instead by default (as "
    "opposed to the legacy tuple of tuples format).",
    "Setting `pad_token_id` to `eos_token_id`:100001 for open-end generation.",
    "The `seen_tokens` attribute is deprecated.41. Use the `cache_position` model input instead.",
    "[ERROR] ME(11374:139741215886208,MainProcess):2026-12-02-03:29:42.210.00 [mindspore/runtime/device.py:25] "
    "CPU device is not supported. Please use correct device",
    "[WARNING] ME(11374:139741215886208,MainProcess):2026-12-02-03:29:42.210.00 "
    "[mindspore/profiler/schedule.py:200] Profiler won't be using warmup, this can skew profiler results",
    "[MS_ALLOC_CONF]Runtime config:  enable_vmm:True  vmm_align_size:2MB",
    "`Qwen2VLRotaryEmbedding` can now be fully parameterized by passing the model config through the `config` "
    "argument. All other arguments will be removed",
    "[WARNING] UTILS(5243,7f77aefbfb80,python):2026-12-07-23:58:47.045.317 [mindspore/ccsrc/utils/signal_util.cc:51] "
    "RegisterGlobalSignalHandler] MSCONTEXT_REGISTER_INIT_FUNC register int handler",
    "[WARNING] UTILS(5243,7f77aefbfb80,python):2026-12-07-23:58:47.045.364 [mindspore/ccsrc/utils/signal_util.cc:57] "
    "RegisterGlobalSignalHandler] The signal has been registered",
]


def shown(text, piece=None):
    """What QuietFilter shows of `text`, fed whole or in pieces of `piece` characters."""
    quiet = console.QuietFilter()
    pieces = [text] if piece is None else [text[i:i + piece] for i in range(0, len(text), piece)]
    return "".join(quiet.feed(p) for p in pieces) + quiet.flush()


@pytest.mark.parametrize("piece", [None, 7])
def test_each_notice_is_dropped_and_every_other_line_kept(piece):
    kept = ["qwen2_moe/stock: starting, generated tiny fixture", "RuntimeError: something a user must see",
            "UserWarning: `do_sample` is set to `False` elsewhere in a user's code"]
    text = "".join(f"{line}\n" for pair in zip(kept + [""] * len(NOTICES), NOTICES) for line in pair if line)
    assert shown(text, piece) == "".join(f"{line}\n" for line in kept)


def test_a_warnings_source_line_goes_with_its_warning_only():
    dropped = NOTICES[3] + "\n  warnings.warn(\n"
    kept = "x.py:3: RuntimeWarning: mindnlp.accel: fused kernel refused\n  warnings.warn(\n"
    assert shown(dropped + kept) == kept


def test_a_progress_bar_shows_at_once_and_keeps_its_line_when_a_notice_joins_it():
    quiet = console.QuietFilter()
    bar = "\rdeepseek:  33%|###       | 1/3 [00:20<00:41, 20.96s/prompt]"
    assert quiet.feed(bar) == bar  # not held back until the line ends
    assert quiet.feed(NOTICES[7] + "\n") == "\n"  # the bar's line still ends
    assert quiet.feed("Traceback (most recent call last):\n") == "Traceback (most recent call last):\n"


def test_windows_line_ends_are_one_line_end_even_split_between_pieces():
    text = NOTICES[3] + "\r\n  warnings.warn(\r\nkept\r\n"
    assert shown(text) == shown(text, piece=len(NOTICES[3]) + 1) == "kept\r\n"


def harness(*options):
    env = dict(os.environ, PYTHONPATH=TREE)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "eval", "run.py"), "--families", "qwen2_moe",
                           "--size", "tiny", "--max-new-tokens", "3", "--count-tokens", "2", *options],
                          capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def notices_in(output):
    return [line for line in re.split(r"[\r\n]", output) if console._QUIET.search(line)]


def test_the_harness_is_quiet_unless_verbose_and_ends_with_its_summary(tmp_path):
    quiet = harness("--out", str(tmp_path / "quiet"))
    assert notices_in(quiet) == []
    summary = quiet[quiet.index("Summary, stock / ours"):]
    assert re.search(r"^qwen2_moe\s+\d+\.\d+×.*3/3 prompts pass$", summary, re.M), summary
    assert "qwen2_moe/stock: starting" in quiet and "qwen2_moe/ours: done in" in quiet
    assert re.search(r"qwen2_moe: 100%\|", quiet)  # the judge's progress bars still show
    loud = harness("--out", str(tmp_path / "verbose"), "--verbose")
    assert any("UserWarning: `do_sample` is set to `False`" in line for line in notices_in(loud))


def test_the_memory_pools_account_is_read_and_not_shown(capfd):
    line = ("[MS_RUNTIME_PROF]The dynamic memory pool total allocated mem:1024M, min addr :0, max addr: 0, peak used "
            "mem:738M, actual peak used mem:791M, in used mem:132M, total used by event mem:0M")
    pool = {}
    code = console.run([sys.executable, "-c", f"print('shown'); print({line!r})"], pool=pool)
    assert code == 0 and pool == {"reserved_bytes": 1024 << 20, "peak_bytes": 738 << 20}
    out = capfd.readouterr().out
    assert "shown" in out and "MS_RUNTIME_PROF" not in out
