"""The judge's score formula (CONTEST.md) over predicted Ascend figures, against stock and the best
published results: for each metric, 100 x the mean over the track's two models of baseline / figure;
the total is the plain mean of the prefill, decode and memory scores."""
from costmodel import JUDGE_BASELINE, real_model

METRICS = ("prefill", "decode", "memory")
TRACKS = {"MoE": ("Qwen/Qwen1.5-MoE-A2.7B-Chat", "deepseek-ai/deepseek-moe-16b-chat"),
          "multimodal": ("Qwen/Qwen2-VL-2B-Instruct", "deepseek-ai/Janus-Pro-7B")}
# Stock's reserved memory on the judge's machine, GB (CONTEST.md).
BASELINE_MEMORY_GB = {"Qwen/Qwen1.5-MoE-A2.7B-Chat": 31.14, "deepseek-ai/deepseek-moe-16b-chat": 34.36,
                      "Qwen/Qwen2-VL-2B-Instruct": 8.59, "deepseek-ai/Janus-Pro-7B": 17.18}
# The best published results of each track (CONTEST.md): memory GB, prefill s, decode s/token.
BEST_PUBLISHED = {
    "MoE": ("hack_ai", {"Qwen/Qwen1.5-MoE-A2.7B-Chat": (54.8, 0.076, 0.067),
                        "deepseek-ai/deepseek-moe-16b-chat": (47.2, 0.111, 0.101)}),
    "multimodal": ("the best multimodal team", {"Qwen/Qwen2-VL-2B-Instruct": (5 * 1.073741824, 0.181, 0.0488),
                                                "deepseek-ai/Janus-Pro-7B": (15 * 1.073741824, 0.118, 0.0296)}),
}


def baseline(model: str) -> dict:
    return {"memory": BASELINE_MEMORY_GB[model], **JUDGE_BASELINE[model]}


def track_score(figures: dict) -> dict:
    """{metric: score, "total": score} for {model: {"prefill": s, "decode": s, "memory": GB}} of one track."""
    scores = {metric: 100 * sum(baseline(model)[metric] / values[metric] for model, values in figures.items())
              / len(figures) for metric in METRICS}
    scores["total"] = sum(scores[metric] for metric in METRICS) / len(METRICS)
    return scores


def describe(predicted: dict) -> list:
    """Markdown lines: per track with both its models predicted ({model or family: {"prefill", "decode",
    "memory"}}), the judge's formula for stock, the best published results and ours."""
    by_model = {real_model(name).name: values for name, values in predicted.items()}
    lines = ["Score by the judge's formula (prediction: ours' Ascend times from the cost model, memory from "
             "eval/device_memory.py; stock and the best published results as judged):", "",
             "| track | who | prefill | decode | memory | total |", "|---|---|---|---|---|---|"]
    for track, models in TRACKS.items():
        if not all(model in by_model for model in models):
            lines.append(f"| {track} | ours | — | — | — | not both models run |")
            continue
        team, best = BEST_PUBLISHED[track]
        rows = [("stock", {model: baseline(model) for model in models}),
                (team, {model: dict(zip(("memory", "prefill", "decode"), best[model])) for model in models}),
                ("ours", {model: by_model[model] for model in models})]
        for who, figures in rows:
            s = track_score(figures)
            lines.append(f"| {track} | {who} | " + " | ".join(f"{s[key]:.0f}" for key in (*METRICS, "total")) + " |")
    return lines
