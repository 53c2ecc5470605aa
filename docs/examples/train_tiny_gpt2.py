"""Train a 1-layer GPT-2 for 12 steps on CPU with transformers' Trainer, saving every 3 steps.

Usage: python train_tiny_gpt2.py OUTPUT_DIR [SECONDS_PER_STEP]

OUTPUT_DIR is the Trainer's output folder: it gets checkpoint-3, checkpoint-6, checkpoint-9 and
checkpoint-12, each written as Trainer writes it (model.safetensors, config.json,
trainer_state.json, optimizer and scheduler state). SECONDS_PER_STEP (default 0) makes each
step sleep, so that a run lasts long enough to be followed while it trains.
"""

import sys
import time

import torch
import transformers

output_dir = sys.argv[1]
seconds_per_step = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0

config = transformers.GPT2Config(
    vocab_size=256, n_embd=32, n_layer=1, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0
)
torch.manual_seed(0)
model = transformers.GPT2LMHeadModel(config)
tokens = torch.randint(0, 256, (96, 32), generator=torch.Generator().manual_seed(0))
data = [{"input_ids": t, "labels": t} for t in tokens]
args = transformers.TrainingArguments(
    output_dir,
    max_steps=12,
    save_steps=3,
    per_device_train_batch_size=8,
    learning_rate=1e-2,
    report_to=[],
    use_cpu=True,
    disable_tqdm=True,
    logging_steps=1000,
)


class Slow(transformers.TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(seconds_per_step)


transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[Slow()]).train()
