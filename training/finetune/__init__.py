"""Finetuning through transformers.Trainer: the shared driver (`common`), classification (`classify`),
instruction tuning (`instruct`), LoRA (`lora`) and the `finetune` commands (`commands`)."""
