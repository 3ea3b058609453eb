"""What the harness prints: child processes' output without the upstream notices a user cannot act on.

Each (family, variant) child runs with its output piped through `forward_quietly`, which drops the
messages in QUIET by their exact text (mindnlp's, MindSpore's and our stock loop's notices, repeated
for every family and variant) and passes everything else through as it comes, progress bars included.
`--verbose` (run.py) shows all. Nothing here touches the shipped series.
"""
import codecs
import os
import re
import subprocess
import sys

# The messages dropped, each as a regular expression over one line (or the part of a line a progress
# bar shares), with what emits it.
QUIET = (
    # mindnlp's PreTrainedModel, for stock classes that define prepare_inputs_for_generation (3 lines)
    r"\w+ has generative capabilities, as `prepare_inputs_for_generation` is explicitly overwritten\. "
    r"However, it doesn't directly inherit from `GenerationMixin`\..*",
    r"  - If you are the owner of the model architecture code, please modify your model class such that it "
    r"inherits from `GenerationMixin`.*",
    r"  - If you are not the owner of the model architecture class, please contact the model code owner to "
    r"update it\.",
    # mindnlp's GenerationConfig, for the checkpoints' sampling settings under greedy decoding (2 lines)
    r"\S*configuration_utils\.py:\d+: UserWarning: `do_sample` is set to `False`\. However, `(temperature|top_p|top_k)` "
    r"is set to .*",
    # mindnlp's rope validation, for Qwen2-VL's mrope_section; its unused rotary module in each layer
    r"Unrecognized keys in `rope_scaling` for 'rope_type'=.*",
    r"`Qwen2VLRotaryEmbedding` can now be fully parameterized by passing the model config through the `config` "
    r"argument\. All other arguments will be removed",
    # mindnlp's generate: the legacy-cache notice, the pad id it sets itself, deepseek's deprecated property
    r"When a model cache is to be returned, `generate` will return a `Cache` instance instead by default.*",
    r"Setting `pad_token_id` to `eos_token_id`:\S+ for open-end generation\.",
    r"The `seen_tokens` attribute is deprecated.*",
    # MindSpore: synchronize() and the allocator on the CPU backend, the profiler the counters use
    r"\[ERROR\] ME\([^)]*\):[\d\-:. ]+\[mindspore/runtime/device\.py:\d+\] CPU device is not supported\. "
    r"Please use correct device",
    r"\[WARNING\] ME\([^)]*\):[\d\-:. ]+\[mindspore/profiler/schedule\.py:\d+\] Profiler won't be using warmup, "
    r"this can skew profiler results",
    r"\[MS_ALLOC_CONF\]Runtime config:.*",
    # MindSpore's account of its memory pool at exit (read by `run`) and of its runtime configuration
    r"\[MS_RUNTIME_PROF\].*",
    r"\[MS_DEV_RUNTIME_CONF\]Runtime config:.*",
    # MindSpore's trace capture, at each compile (2 lines)
    r"\[WARNING\] UTILS\([^)]*\):[\d\-:. ]+\[mindspore/ccsrc/utils/signal_util\.cc:\d+\] RegisterGlobalSignalHandler\] "
    r"(MSCONTEXT_REGISTER_INIT_FUNC register int handler|The signal has been registered)",
)
_QUIET = re.compile("|".join(f"(?:{pattern})" for pattern in QUIET))
# A tqdm progress bar as it stands between two updates ("name:  33%|###   | 1/3 [00:20<00:41, ...]").
_PROGRESS_BAR = re.compile(r".*\d+%\|.*\]$")
# The source line Python's warnings module prints under a warning: dropped with the warning it follows.
_WARNING_SOURCE = re.compile(r"\s+warnings\.warn\($")


class QuietFilter:
    """Feed text in pieces (`feed`), get back what to show. A line is shown unless it is one of the
    QUIET messages; text sharing a line with a dropped message (a progress bar) is kept."""

    def __init__(self):
        self._partial = ""
        self._dropped_last = False
        self._bar_shown = False  # the current line began with a progress bar already shown

    def feed(self, text):
        shown = []
        text = self._partial + text
        held = "\r" if text.endswith("\r") else ""  # maybe the first half of a \r\n: wait for the next piece
        pieces = re.split(r"(\r\n|\r|\n)", text[:len(text) - len(held)])
        self._partial = pieces.pop() + held  # text after the last line end: wait for the rest of it
        for body, end in zip(pieces[0::2], pieces[1::2]):
            shown.append(self._line(body, end))
        if _PROGRESS_BAR.match(self._partial):  # a bar is complete before its line ends: show it now
            shown.append(self._partial)
            self._partial = ""
            self._bar_shown = True
        return "".join(shown)

    def flush(self):
        rest, self._partial = self._partial, ""
        if not rest:
            return ""
        return self._line(rest[:-1], "\r") if rest.endswith("\r") else self._line(rest, "")

    def _line(self, body, end):
        after_bar, self._bar_shown = self._bar_shown, False
        if self._dropped_last and _WARNING_SOURCE.match(body):
            return ""
        kept = _QUIET.sub("", body)
        self._dropped_last = kept != body
        if self._dropped_last and not kept.strip():
            # the bar shown before this notice keeps its line end, so what follows starts a line of its own
            return end if after_bar and end != "\r" else ""
        return kept + end


# MindSpore's account of its memory pool as a process ends (with MS_DEV_RUNTIME_CONF=memory_statistics:True):
# the pool reserved ("total allocated") and the peak in use, in MB. The pool is what max_memory_reserved
# reads on a device; it grows in whole blocks of 1 GiB.
POOL_LINE = re.compile(r"\[MS_RUNTIME_PROF\]The dynamic memory pool total allocated mem:(\d+)M.*?, peak used mem:(\d+)M")


def run(command, verbose=False, env=None, pool=None):
    """Run `command`, its output shown on this process's stdout (filtered unless `verbose`); its exit code.
    `pool`, a dict, gets the child's memory-pool account where it prints one (POOL_LINE): reserved_bytes
    and peak_bytes (the line itself is not shown)."""
    if verbose:
        return subprocess.run(command, env=env).returncode
    # unbuffered: a pipe would make the child's stdout block-buffered, out of order with its stderr
    env = dict(env if env is not None else os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    quiet = QuietFilter()
    tail = ""  # the end of the output, where the pool's account comes
    while True:
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        text = decoder.decode(chunk)
        tail = (tail + text)[-8192:]
        sys.stdout.write(quiet.feed(text))
        sys.stdout.flush()
    found = POOL_LINE.search(tail)
    if pool is not None and found:
        pool.update(reserved_bytes=int(found.group(1)) << 20, peak_bytes=int(found.group(2)) << 20)
    sys.stdout.write(quiet.feed(decoder.decode(b"", final=True)) + quiet.flush())
    sys.stdout.flush()
    proc.stdout.close()
    return proc.wait()
