"""Fine-tune a teacher with the transformers 5 `Trainer` so that its output folder is what
`logitstore build --teacher` takes: ``OUT/checkpoint-<step>/`` folders, each with
config.json (its id2label = your label names), model.safetensors and the tokenizer.

    pip install accelerate          # the Trainer needs it (the project's `test` extra has it)
    python examples/trainer_teacher.py --model PRETRAINED --data DATA --out runs/teacher --epochs 3
    logitstore build --teacher runs/teacher --data DATA --out logits.zarr

DATA is a folder with train.csv and validation.csv (columns: text, label; labels are names
such as "positive"); PRETRAINED is a transformers model folder (or a hub name where a hub is
reachable). Give the store the same DATA, so the teacher is scored on the validation split
it was evaluated on (the store's validation loss equals the Trainer's ``eval_loss``).

What matters for the store, and what changed in transformers 5:
- ``save_strategy`` = ``eval_strategy``: one checkpoint per evaluation, the checkpoints the
  store caches (ths / tll pick among them by validation score / loss);
- ``processing_class=tokenizer``: the Trainer then saves the tokenizer into each checkpoint;
- ``save_only_model=True``: no optimizer.pt / scheduler.pt / rng_state.pth (pickles, which
  logitstore never loads) and folders a third the size;
- ``warmup_steps=0.1``: transformers 5 removed ``warmup_ratio``; a float below 1 is the ratio;
- ``report_to="none"``: no experiment tracker is needed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Fine-tune a sequence-classification teacher with the transformers Trainer.")
    p.add_argument("--model", required=True, help="pretrained transformers model folder (or hub name)")
    p.add_argument("--data", required=True, help="folder with train.csv and validation.csv (text, label)")
    p.add_argument("--out", required=True, help="output folder: OUT/checkpoint-<step>/ per evaluation")
    p.add_argument("--epochs", type=float, default=3.0, help="training epochs (default: 3)")
    p.add_argument("--max-steps", type=int, default=-1, help="stop after N steps (replaces --epochs)")
    p.add_argument("--eval-steps", type=int, default=None,
                   help="evaluate and save every N steps (default: at the end of each epoch)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default: 1e-4)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per example (default: 128)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    from datasets import load_dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments)

    args = _parser().parse_args(argv)
    data = load_dataset("csv", data_files={s: str(Path(args.data) / f"{s}.csv") for s in ("train", "validation")})
    names = sorted(set(data["train"]["label"]))  # or your own order; it becomes the model's id2label
    tokenizer = AutoTokenizer.from_pretrained(args.model)

    def encode(batch: dict) -> dict:
        enc = tokenizer(batch["text"], truncation=True, max_length=args.max_length)
        enc["labels"] = [names.index(x) for x in batch["label"]]
        return enc

    data = data.map(encode, batched=True, remove_columns=data["train"].column_names)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
        ignore_mismatched_sizes=True)  # a pretrained encoder gets a new head of len(names) labels
    every = "steps" if args.eval_steps else "epoch"
    training = TrainingArguments(
        output_dir=args.out, num_train_epochs=args.epochs, max_steps=args.max_steps, learning_rate=args.lr,
        warmup_steps=0.1, weight_decay=0.01, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size, eval_strategy=every, save_strategy=every,
        eval_steps=args.eval_steps, save_steps=args.eval_steps, save_only_model=True, logging_strategy=every,
        logging_steps=args.eval_steps, report_to="none", seed=args.seed)
    trainer = Trainer(model=model, args=training, train_dataset=data["train"], eval_dataset=data["validation"],
                      processing_class=tokenizer)
    trainer.train()
    print(f"checkpoints in {args.out}: " + ", ".join(sorted(p.name for p in Path(args.out).glob("checkpoint-*"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
