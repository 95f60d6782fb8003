#!/usr/bin/env bash
# Regenerate the figures of docs/results.md on the dev files of the three multi-hop QA datasets:
#
#   scripts/results.sh [routing|e2e|docs|all]     (default: all)
#
#   routing  routing-only evaluation of every dev question, at the nodes' own budgets and in a
#            budget sweep; writes target/results/routing-<dataset>.{json,md} and the plots
#            docs/recall-vs-tokens-<dataset>.svg
#   e2e      end-to-end evaluation (the whole multihop_qa workflow) under rcr and full on the
#            local LLM (scripts/local-llm.sh start); writes target/results/e2e-<dataset>.{json,md}
#   docs     assembles docs/results.md from the files in target/results/
#
# Environment:
#   AGENTD_DATA         folder of hotpotqa.jsonl, musique.jsonl, 2wiki.jsonl
#                       (default: ../shared/data/mhqa next to the repository)
#   AGENTD_LLM_URL      the LLM of the e2e step (default http://127.0.0.1:8088/v1)
#   AGENTD_LLM_MODEL    its model (default smollm2)
#   E2E_LIMIT           questions per dataset, end to end (default 30)
#   E2E_ROUNDS          rounds per run (default 1)
#   E2E_MAX_TOKENS      completion tokens per call (default 64)
#   E2E_CONCURRENCY     runs at once (default 2: the local server's slots)
#   SWEEP_BUDGETS       budgets of the routing sweep (default 128,256,512,1024,2048,role)
#   AGENTD_BIN          an agentd binary to use (default: build target/release/agentd)
#   DATASETS            which datasets the routing and e2e steps run (default: all three)
#
# Everything is deterministic except LLM sampling (seeded, but item ids differ between runs)
# and wall times. The dataset files are read in place; nothing of them is copied here.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
data="${AGENTD_DATA:-$repo/../shared/data/mhqa}"
out="$repo/target/results"
url="${AGENTD_LLM_URL:-http://127.0.0.1:8088/v1}"
model="${AGENTD_LLM_MODEL:-smollm2}"
e2e_limit="${E2E_LIMIT:-30}"
e2e_rounds="${E2E_ROUNDS:-1}"
e2e_max_tokens="${E2E_MAX_TOKENS:-64}"
e2e_concurrency="${E2E_CONCURRENCY:-2}"
sweep="${SWEEP_BUDGETS:-128,256,512,1024,2048,role}"
read -r -a datasets <<< "${DATASETS:-hotpotqa musique 2wiki}"
step="${1:-all}"

case "$step" in
    routing | e2e | docs | all) ;;
    -h | --help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "results.sh: unknown step '$step' (routing, e2e, docs or all)" >&2; exit 2 ;;
esac
for ds in "${datasets[@]}"; do
    [ -f "$data/$ds.jsonl" ] || { echo "results.sh: $data/$ds.jsonl is missing (set AGENTD_DATA)" >&2; exit 1; }
done
mkdir -p "$out"

if [ -n "${AGENTD_BIN:-}" ]; then
    agentd="$AGENTD_BIN"
else
    cargo build --release --bin agentd >&2
    agentd="$repo/target/release/agentd"
fi

routing() {
    for ds in "${datasets[@]}"; do
        echo "results.sh: routing-only, $ds" >&2
        "$agentd" eval --routing-only --data "$data/$ds.jsonl" \
            --policy rcr,full,static:4,static:matched,recency --budgets "$sweep" \
            --out "$out/routing-$ds.json" --svg "docs/recall-vs-tokens-$ds.svg" \
            > "$out/routing-$ds.md"
    done
}

e2e() {
    for ds in "${datasets[@]}"; do
        echo "results.sh: end to end, $ds ($e2e_limit questions)" >&2
        "$agentd" eval --data "$data/$ds.jsonl" --llm-url "$url" --model "$model" \
            --policy rcr,full --limit "$e2e_limit" --max-rounds "$e2e_rounds" \
            --max-tokens "$e2e_max_tokens" --concurrency "$e2e_concurrency" \
            --out "$out/e2e-$ds.json" > "$out/e2e-$ds.md"
    done
}

docs() {
    local commit
    commit="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    if ! git -C "$repo" diff --quiet HEAD -- crates src workflows agents 2>/dev/null; then
        commit="$commit + uncommitted changes"
    fi
    python3 - "$out" "$commit" docs/results.md > docs/results.md.new <<'PY'
import datetime, json, os, sys

out, commit, previous_path = sys.argv[1], sys.argv[2], sys.argv[3]
datasets = ["hotpotqa", "musique", "2wiki"]
names = {"hotpotqa": "HotpotQA (distractor)", "musique": "MuSiQue (answerable)", "2wiki": "2WikiMultihopQA"}

# Sections of the previous docs/results.md, by (part, dataset name): a section whose inputs are
# not in target/results/ (a partial rerun, a fresh clone) is carried over rather than dropped.
previous = {}
if os.path.exists(previous_path):
    part, key, lines = None, None, []
    def keep():
        if key is not None:
            previous[key] = "\n".join(lines).strip("\n")
    for line in open(previous_path).read().splitlines():
        if line.startswith("## "):
            keep()
            part, key, lines = line[3:].strip(), None, []
        elif line.startswith("### "):
            keep()
            key, lines = (part, line[4:].split(":")[0].strip()), [line]
        elif key is not None:
            if line.startswith("Answer quality of a 135M") or line.startswith("(carried over"):
                keep()
                key, lines = None, []
            else:
                lines.append(line)
    keep()

def carried(part, ds, step):
    old = previous.get((part, names[ds]))
    if old and "(measured" in old.splitlines()[0]:
        print("\n" + old)
        print(f"\n(carried over from the previous docs/results.md: `scripts/results.sh {step}` has not"
              " been run for this dataset here since)")
        return True
    print(f"\n### {names[ds]}\n\n(not run: `scripts/results.sh {step}`)")
    return False

def load(kind, ds):
    path = os.path.join(out, f"{kind}-{ds}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f), datetime.date.fromtimestamp(os.path.getmtime(path)).isoformat()

def f3(x):
    return "–" if x is None else f"{x:.3f}"

print("# Results on the dev split")
print()
print("Generated by `scripts/results.sh` (do not edit by hand: edit the script and rerun it) at")
print(f"commit `{commit}`. The dataset files are the dev questions in `../shared/data/mhqa/`")
print("(HotpotQA CC BY-SA 4.0, MuSiQue CC BY 4.0, 2WikiMultihopQA Apache-2.0); nothing of them is")
print("copied here, only aggregates. Definitions of every figure: [eval.md](eval.md).")
print()
print("```")
print("scripts/local-llm.sh start        # the end-to-end step needs the local LLM")
print("scripts/results.sh                # routing, e2e, docs (or one of them)")
print("```")
print()
print("## Routing-only")
print()
print("Every dev question; the answerer node of `workflows/multihop_qa.toml`, hashing embedder.")
print("`bm25` is BM25 at rcr's document tokens; `rcr:by_score` is rcr's ranking without its packing.")
for ds in datasets:
    got = load("routing", ds)
    if got is None:
        carried("Routing-only", ds, "routing")
        continue
    r, date = got
    c = r["config"]
    full = r["full_reference"][0]
    print(f"\n### {names[ds]}: {c['count']} questions (measured {date})\n")
    print(f"Full context: {full['mean_tokens']:.0f} tokens per question on average.\n")
    print("At the node's own budget:\n")
    print("| policy | budget | recall | all gold | sent. recall | precision | tokens | token share |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in r["results"]:
        if row["budget_spec"] != "role":
            continue
        print(f"| {row['policy']} | {row['budget']} | {f3(row['evidence_recall'])} | {f3(row['all_gold'])} | "
              f"{f3(row['sentence_recall'])} | {f3(row['evidence_precision'])} | {row['mean_tokens']:.0f} | "
              f"{f3(row['token_share'])} |")
    budgets = []
    for row in r["results"]:
        if row["budget_spec"] not in budgets:
            budgets.append(row["budget_spec"])
    policies = []
    for row in r["results"]:
        if row["policy"] not in policies:
            policies.append(row["policy"])
    print("\nBudget sweep: evidence recall (mean tokens of the pack):\n")
    print("| budget | " + " | ".join(policies) + " |")
    print("|---:|" + "---:|" * len(policies))
    for b in budgets:
        cells = []
        for p in policies:
            row = next((x for x in r["results"] if x["budget_spec"] == b and x["policy"] == p), None)
            cells.append("–" if row is None else f"{row['evidence_recall']:.3f} ({row['mean_tokens']:.0f})")
        label = b if b != "role" else "role"
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"\n![evidence recall against tokens, {ds}](recall-vs-tokens-{ds}.svg)")

print("\n## End to end")
print()
print("The whole `multihop_qa` workflow (planner, researcher, reasoner, answerer, critic) answers")
print("each question under `rcr` and under `full` (every call reads the whole context, up to")
print("`--full-budget` tokens), with the same model playing every role under both policies.")
print("The script runs E2E_LIMIT questions per dataset (default 30); each section says how many")
print("were run for the figures shown, with the exact command. Wall s/q is per run, with")
print("`--concurrency` runs sharing the server.")
any_e2e = False
for ds in datasets:
    got = load("e2e", ds)
    if got is None:
        any_e2e |= carried("End to end", ds, "e2e")
        continue
    any_e2e = True
    r, date = got
    c = r["config"]
    print(f"\n### {names[ds]}: {r['count']} questions (measured {date})\n")
    print(f"Model `{c['llm']['model']}`, {r['max_rounds']} round(s), at most {c['max_tokens'] or 'the workflow'}"
          f" completion tokens per call, full-context budget {c['full_budget']}, concurrency {c['concurrency']},"
          f" seed {c['seed']}, the first {r['count']} questions of the file. Command:\n")
    cmd = [f"agentd eval --data {ds}.jsonl --llm-url {c['llm']['url']} --model {c['llm']['model']}",
           f"--policy {','.join(c['policies'])}"]
    if c.get("limit") is not None:
        cmd.append(f"--limit {c['limit']}")
    if c.get("max_rounds") is not None:
        cmd.append(f"--max-rounds {c['max_rounds']}")
    if c.get("max_tokens") is not None:
        cmd.append(f"--max-tokens {c['max_tokens']}")
    cmd.append(f"--concurrency {c['concurrency']}")
    print("```")
    print(" ".join(cmd))
    print("```\n")
    print("| policy | finished | answered | EM | F1 | AQS | grounding | completeness | prompt tok/q | share of full | completion tok/q | calls/q | wall s/q |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in r["results"]:
        u = row["usage"]
        print(f"| {row['policy']} | {row['finished']}/{row['questions']} | {row['answered']} | {f3(row['exact_match'])} | "
              f"{f3(row['f1'])} | {f3(row['aqs'])} | {f3(row['grounding'])} | {f3(row['completeness'])} | "
              f"{u['prompt_tokens']:.0f} | {f3(row['prompt_share'])} | {u['completion_tokens']:.0f} | "
              f"{u['calls']:.2f} | {row['wall_secs']:.1f} |")
    print("\nPrompt tokens per question, per role:\n")
    roles = sorted({k for row in r["results"] for k in row["by_role"]})
    print("| policy | " + " | ".join(roles) + " |")
    print("|---|" + "---:|" * len(roles))
    for row in r["results"]:
        cells = [f"{row['by_role'][k]['prompt_tokens']:.0f}" if k in row["by_role"] else "–" for k in roles]
        print(f"| {row['policy']} | " + " | ".join(cells) + " |")
    silent = sum(x["questions"] - x["answered"] for x in r["results"])
    if silent:
        runs = sum(x["questions"] for x in r["results"])
        print(f"\n{silent} of {runs} runs wrote no answer: their reply was cut at the completion-token"
              " limit before the answer was complete, or held none. They score 0.")
    rcr = next((x for x in r["results"] if x["policy"] == "rcr"), None)
    if rcr and rcr.get("prompt_share") is not None:
        verdict = "meets" if rcr["prompt_share"] <= 0.5 else "misses"
        print(f"\nrcr reads {100 * rcr['prompt_share']:.1f}% of full context's prompt tokens per question"
              f" ({verdict} the goal of at most 50%).")
if any_e2e:
    print()
    print("Answer quality of a 135M-parameter model is low under every policy: these runs measure")
    print("what routing costs and saves on the real path, not how well a capable model answers.")
    print("Wall times were measured on a shared 2-core machine and vary with its load.")
PY
    mv docs/results.md.new docs/results.md
    echo "results.sh: wrote docs/results.md" >&2
}

case "$step" in
    routing) routing ;;
    e2e) e2e ;;
    docs) docs ;;
    all) routing; e2e; docs ;;
esac
