"""The judge's pass check, plus the diagnostics it does not give: where and by how much two runs differ.

A prompt passes when the generated texts are equal after strip().lower(); only if they differ,
softmax(logits) in fp32 must be allclose(rtol=1e-3, atol=1e-3) to the target's at every step,
which needs equal shapes. Any failing prompt fails the model.

Runs are dicts as judge.run_family returns them: {"prompts": [{"name", "text", "ids", "logits"}]}.
Targets are saved as target.json (names, texts, ids) plus one <index>-<name>.npy of logits each.
"""
import json
import os
from dataclasses import dataclass

import numpy as np

RTOL = 1e-3
ATOL = 1e-3
TARGET_FILE = "target.json"


@dataclass
class PromptCheck:
    """The verdict on one prompt and what differs.

    first_argmax_step: first step whose argmax differs, -1 when none does, None when the
    vocabularies differ so steps cannot be compared; max_softmax_diff is inf in that case too.
    """
    name: str
    passed: bool
    reason: str
    text_equal: bool
    ids_identical: bool
    first_argmax_step: object
    max_softmax_diff: float


def softmax(logits):
    """Row-wise softmax in fp32, as the judge computes it."""
    logits = np.asarray(logits, dtype=np.float32)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def _normalise(text):
    return text.strip().lower()


def _first_argmax_step(target_logits, candidate_logits):
    """First step whose argmax differs, over the steps both have; the shorter length where one
    run has more steps and the shared ones agree; -1 when none differ."""
    steps = min(len(target_logits), len(candidate_logits))
    differs = np.flatnonzero(target_logits[:steps].argmax(-1) != candidate_logits[:steps].argmax(-1))
    if differs.size:
        return int(differs[0])
    return steps if len(target_logits) != len(candidate_logits) else -1


def check_prompt(target, candidate):
    """Compare one prompt's candidate run against its target."""
    name = target["name"]
    if candidate["name"] != name:
        raise ValueError(f"prompt order differs: target {name!r}, candidate {candidate['name']!r}")
    target_logits = np.asarray(target["logits"], dtype=np.float32)
    candidate_logits = np.asarray(candidate["logits"], dtype=np.float32)
    if target_logits.ndim != 2 or candidate_logits.ndim != 2:
        raise ValueError(f"{name}: logits must be [steps, vocab], got {target_logits.shape} and {candidate_logits.shape}")
    text_equal = _normalise(target["text"]) == _normalise(candidate["text"])
    ids_identical = list(target["ids"]) == list(candidate["ids"])
    same_vocab = target_logits.shape[1] == candidate_logits.shape[1]
    first_step = _first_argmax_step(target_logits, candidate_logits) if same_vocab else None
    max_diff = float("inf")
    if same_vocab:
        steps = min(len(target_logits), len(candidate_logits))
        diff = np.abs(softmax(target_logits[:steps]) - softmax(candidate_logits[:steps]))
        max_diff = float(diff.max()) if diff.size else 0.0
    if text_equal:
        passed, reason = True, "text equal"
    elif target_logits.shape != candidate_logits.shape:
        passed, reason = False, f"text differs and logits shapes differ: {target_logits.shape} vs {candidate_logits.shape}"
    elif np.allclose(softmax(candidate_logits), softmax(target_logits), rtol=RTOL, atol=ATOL):
        passed, reason = True, "text differs, softmax allclose at every step"
    else:
        passed, reason = False, f"text differs and softmax differs by up to {max_diff:.3g}"
    return PromptCheck(name, passed, reason, text_equal, ids_identical, first_step, max_diff)


def check_run(target, candidate):
    """Per-prompt checks for a whole run; the model passes when every entry passed."""
    target_prompts, candidate_prompts = target["prompts"], candidate["prompts"]
    if len(target_prompts) != len(candidate_prompts):
        raise ValueError(f"target has {len(target_prompts)} prompts, candidate {len(candidate_prompts)}")
    return [check_prompt(t, c) for t, c in zip(target_prompts, candidate_prompts)]


def all_passed(checks):
    return all(check.passed for check in checks)


def _logits_file(index, name):
    return f"{index:02d}-{name}.npy"


def save_target(run, out_dir):
    """Write a run's texts, ids and logits as a target directory."""
    os.makedirs(out_dir, exist_ok=True)
    entries = []
    for index, prompt in enumerate(run["prompts"]):
        logits_file = _logits_file(index, prompt["name"])
        np.save(os.path.join(out_dir, logits_file), np.asarray(prompt["logits"], dtype=np.float32))
        entries.append({"name": prompt["name"], "text": prompt["text"], "ids": [int(i) for i in prompt["ids"]],
                        "logits_file": logits_file})
    with open(os.path.join(out_dir, TARGET_FILE), "w", encoding="utf-8") as handle:
        json.dump({"family": run.get("family"), "prompts": entries}, handle, indent=2)
    return out_dir


def load_target(target_dir):
    """Read a target directory back into the run layout check_run takes."""
    path = os.path.join(target_dir, TARGET_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {TARGET_FILE} in {target_dir!r}")
    with open(path, encoding="utf-8") as handle:
        saved = json.load(handle)
    prompts = []
    for entry in saved["prompts"]:
        logits_path = os.path.join(target_dir, entry["logits_file"])
        if not os.path.isfile(logits_path):
            raise FileNotFoundError(f"target {target_dir!r}: logits file {entry['logits_file']} is missing")
        prompts.append({"name": entry["name"], "text": entry["text"], "ids": entry["ids"],
                        "logits": np.load(logits_path)})
    return {"family": saved.get("family"), "prompts": prompts}
