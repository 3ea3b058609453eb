"""Download the contest's models into llm/<name>/, resumable, from the Hugging Face hub or ModelScope.

    python eval/download.py [REPO_ID ...]    (default: all four)
"""
import os
import sys

from run import LLM_DIRS, ROOT

MODELS = {"Qwen/Qwen1.5-MoE-A2.7B-Chat": LLM_DIRS["qwen2_moe"],
          "deepseek-ai/deepseek-moe-16b-chat": LLM_DIRS["deepseek"],
          "Qwen/Qwen2-VL-2B-Instruct": LLM_DIRS["qwen2_vl"],
          "deepseek-ai/Janus-Pro-7B": LLM_DIRS["llama"]}


def fetch(repo_id, dest):
    """Try the Hugging Face hub, then ModelScope where it is installed; return the errors seen."""
    errors = []
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id, local_dir=dest)
        return []
    except Exception as err:  # noqa: BLE001 - any failure moves on to the next source
        errors.append(f"Hugging Face hub: {type(err).__name__}: {err}")
    try:
        from modelscope import snapshot_download as modelscope_download

        modelscope_download(repo_id, local_dir=dest)
        return []
    except ImportError:
        errors.append("ModelScope: not installed (pip install modelscope)")
    except Exception as err:  # noqa: BLE001
        errors.append(f"ModelScope: {type(err).__name__}: {err}")
    return errors


def main(argv):
    wanted = argv or list(MODELS)
    unknown = [name for name in wanted if name not in MODELS]
    if unknown:
        print(f"download.py: unknown models {unknown}; known: {list(MODELS)}", file=sys.stderr)
        return 2
    failed = 0
    for repo_id in wanted:
        dest = os.path.join(ROOT, "llm", MODELS[repo_id])
        print(f"{repo_id} -> {dest}", flush=True)
        errors = fetch(repo_id, dest)
        if errors:
            failed += 1
            print(f"  could not download {repo_id}; is this machine offline?\n    " + "\n    ".join(errors),
                  file=sys.stderr)
    if failed:
        print(f"download.py: {failed} of {len(wanted)} models missing; test.sh runs those families on "
              "generated fixtures.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
