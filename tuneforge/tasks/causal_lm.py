"""Causal language modelling: instruction pairs, chat conversations or plain text -> next-token loss on the
answer (assistant) tokens; perplexity, and BLEU / ROUGE-L of generated answers."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from tuneforge import assets, fast
from tuneforge.config import ConfigError, RunConfig
from tuneforge.data import chat, layouts, templates
from tuneforge.data.batching import collate, collate_packed, without_positions
from tuneforge.data.readers import place, read_records
from tuneforge.data.dataset import normalise
from tuneforge.evaluate import by_prompt, generation_metrics, sample
from tuneforge.models import load_pretrained, pretrained_config
from tuneforge.tasks import Example, Prepared, Record, Runtime, lm_head, token_loss

# config attributes of models whose logits are not just lm_head(hidden): those take the full forward
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")
EAGER_MAX_LENGTH = 512  # CPU: eager attention up to this row length (see Task.load_model)
DEFAULT_REFERENCE = {"smollm2": "chitchat"}  # embedded chat model -> reference data of its forgetting probe


def _backbone(model: nn.Module) -> nn.Module | None:
    """The model without its LM head (``model.base_model``), or None where the head-only path is unsafe."""
    base = getattr(model, "base_model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    config = getattr(model, "config", None)
    if base is None or base is model or head is None or any(getattr(config, a, None) for a in _LOGIT_TRANSFORMS):
        return None
    return base


LM_HEAD_ROWS = lm_head.HEAD_ROWS  # the LM head's rows (answer positions) are rounded up to a multiple of this


def token_nll(model: nn.Module, batch: dict[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy (float32) of next-token predictions where labels are kept. Logits are computed only for
    those positions: backbone hidden states -> select -> LM head on the selected rows, their number rounded up
    to a multiple of ``LM_HEAD_ROWS`` with rows that count for nothing (few matmul shapes: see
    ``batching.Shapes``). A packed batch (``position_ids``, see ``collate_packed``) goes in without its
    attention mask: the model then builds the block-diagonal causal mask from the position ids.
    ``reduction="sum"`` with a plain head: the head and its cross-entropy a chunk of the vocabulary at a time
    (``lm_head.head_nll``). ``reduction="none"``: one loss per kept position, in row-major order."""
    ids = batch["input_ids"]  # (batch, seq)
    inputs = ({"position_ids": batch["position_ids"]} if "position_ids" in batch
              else {"attention_mask": batch["attention_mask"]})  # (batch, seq)
    target = batch["labels"][:, 1:]  # (batch, seq-1): token t+1 is predicted at position t
    keep = target != chat.IGNORE  # (batch, seq-1)
    chosen = target[keep]  # (kept,)
    kept = chosen.numel()
    base = _backbone(model)
    if base is None:
        logits = model(input_ids=ids, use_cache=False, **inputs).logits  # (batch, seq, vocab)
        selected = logits[:, :-1][keep]  # (kept, vocab)
    else:
        hidden = base(input_ids=ids, use_cache=False, **inputs).last_hidden_state  # (batch, seq', hidden)
        hidden = hidden[:, -ids.shape[1]:]  # methods that prepend virtual tokens add positions on the left
        last = nn.functional.pad(target, (0, 1), value=chat.IGNORE)  # (batch, seq): the last position predicts none
        rows, chosen, _ = lm_head.kept_rows(hidden.reshape(-1, hidden.shape[-1]), last.flatten(),
                                            LM_HEAD_ROWS)  # (kept + spare, hidden), (kept + spare,)
        head = model.get_output_embeddings()
        if reduction == "sum" and lm_head.applies(head):  # never the whole (rows, vocab) logits at once
            return lm_head.head_nll(head, rows, chosen)
        selected = head(rows)  # (kept + spare, vocab)
    nll = nn.functional.cross_entropy(selected.float(), chosen, reduction=reduction, ignore_index=chat.IGNORE)
    return nll[:kept] if reduction == "none" else nll


def _refuse_encoder_decoder(path: str | Path, cfg: RunConfig) -> None:
    """One line for an encoder-decoder model: AutoModelForCausalLM would load BART as its decoder alone."""
    config = pretrained_config(path, cfg.model.trust_remote_code)
    if getattr(config, "is_encoder_decoder", False):
        raise ConfigError(f"model: {path} is an encoder-decoder model ({config.model_type}); the causal_lm task "
                          "trains decoder-only models (Llama, Qwen, GPT-2, SmolLM2 ...) and would drop its "
                          "encoder; train this one with model.task=seq2seq (the same input -> output pairs), or use a "
                          "decoder-only model")


def _template(tokenizer: PreTrainedTokenizerBase, meta: dict[str, Any]) -> str:
    return meta.get("chat_template") or templates.resolve_template(tokenizer, None)


class Task:
    name = "causal_lm"
    metric = "loss"  # validation metric that picks the best checkpoint
    greater_is_better = False
    table_metrics = ("loss", "perplexity", "bleu", "rouge_l")
    generates = True  # answers prompts with text (generation, own-answer probes, self-replay)
    perplexity = True  # of the answer tokens (forgetting.reference measures it on reference data)
    predict_generates = False  # predict refuses: `generate` writes its text
    peft_task_type = "CAUSAL_LM"  # what PeftModel.from_pretrained builds around the base model
    loss_unit = "token"
    packs = True
    # train.group_by_length default: off. SmolLM2 LoRA on the ChatterBot pairs (1 epoch, 3 seeds) reached test
    # perplexity 7.57 (7.54-7.58) with random batches but 7.81 (7.72-7.87) with length-grouped ones, and
    # 7.69 (7.59-7.81) with windows of 4 batches; grouping is 1.3x faster (padding 1.57x -> 1.01x).
    group_by_length = False
    # train.early_stopping default under the automatic length: 3 evaluations (epochs) without a lower validation
    # loss. SmolLM2 LoRA on 500 ChatterBot pairs (16 epochs planned) reached its lowest validation loss at epoch 4
    # (lr 5e-4) and 2 (1.5e-3), then rose every epoch (perplexity 9.7 -> 15.5 / 9.7 -> 37.5 by epoch 8): the
    # loss is smooth, so there is no plateau to wait through, and the best epoch is kept either way.
    auto_patience = 3

    # -- data ---------------------------------------------------------------------------------------------
    def read_source(self, path: str, cfg: RunConfig) -> list[Record]:
        records = read_records(path)
        layouts.note_unread(records, cfg.data, path)
        return records

    def _messages(self, record: Record, cfg: RunConfig, where: str) -> list[dict[str, str]] | str:
        return layouts.to_messages(record, layouts.detect_format(set(record), cfg.data, where), cfg.data, where)

    def required_columns(self, cfg: RunConfig) -> list[str]:
        return [cfg.data.text_column] if cfg.data.format == "text" else []  # other layouts: checked per row

    def row_problem(self, record: Record, cfg: RunConfig) -> str | None:
        try:
            self._messages(record, cfg, "")
        except ConfigError as exc:
            return str(exc).removeprefix(": ")
        return None

    def input_text(self, record: Record, cfg: RunConfig) -> str:
        """A conversation's prompt: the messages before its last reply that trains (the same question with
        another answer is the same input, kept in one split as seq2seq's); a plain text whole."""
        item = self._messages(record, cfg, "")
        return item if isinstance(item, str) else chat.prompt_text(chat.split_reference(item)[0])

    def prompt_texts(self, record: Record, cfg: RunConfig) -> list[str]:
        """The user turns, and every text field of the row as it is (Alpaca's ``input`` holds a sentence that its
        rendered turn wraps in an instruction)."""
        item = self._messages(record, cfg, "")
        turns = [item] if isinstance(item, str) else [m["content"] for m in item if m["role"] == "user"]
        return turns + [v for v in record.values() if isinstance(v, str)]

    def stratum(self, record: Record, cfg: RunConfig) -> str | None:
        return None

    def augment_columns(self, cfg: RunConfig) -> list[str]:
        return []  # word-level edits of prompts/answers would teach the model broken text

    def setup_tokenizer(self, tokenizer: PreTrainedTokenizerBase, cfg: RunConfig, meta: dict[str, Any]) -> None:
        """A named template becomes the tokenizer's chat template, so saved and merged tokenizers carry it."""
        if meta.get("chat_template"):
            tokenizer.chat_template = meta["chat_template"]

    def prepare(self, cfg: RunConfig, tokenizer: PreTrainedTokenizerBase, records: dict[str, list[Record]],
                where: dict[str, list[str]]) -> Prepared:
        """Detect the layout (one for all splits), render and tokenise (labels -100 outside answers)."""
        _refuse_encoder_decoder(assets.resolve_model(cfg.model.name), cfg)  # before the data's chat template
        d = cfg.data
        fmt = layouts.one_layout([(records[k], where[k]) for k in records], d)
        template = templates.resolve_template(tokenizer, d.template, d.system_prompt) if fmt != "text" else None
        meta = {"format": fmt, "chat_template": template if d.template else None}
        self.setup_tokenizer(tokenizer, cfg, meta)
        enc = {k: self.encode(records[k], cfg, tokenizer, meta, where[k]) for k in ("train", "validation", "test")}
        if template is not None:
            chat.warn_endless(enc["train"], tokenizer, template)
        return Prepared(train=enc["train"], validation=enc["validation"], test=enc["test"], meta=meta,
                        raw_test=records["test"] if fmt != "text" else [])

    def encode(self, records: list[Record], cfg: RunConfig, tokenizer: PreTrainedTokenizerBase,
               meta: dict[str, Any], where: list[str]) -> list[Example]:
        """Token ids + labels of records in the layout ``meta['format']``."""
        if not records:
            return []
        fmt = meta["format"]
        items = [layouts.to_messages(r, fmt, cfg.data, w) for r, w in zip(records, where)]
        chat.note_control_strings(items, tokenizer, where)
        if fmt == "text":
            return chat.encode_texts(items, tokenizer, cfg.model.max_length)
        return chat.encode_conversations(items, tokenizer, _template(tokenizer, meta), cfg.model.max_length, where)

    def encode_any(self, records: list[Record], cfg: RunConfig, tokenizer: PreTrainedTokenizerBase,
                   meta: dict[str, Any], where: list[str]) -> list[Example]:
        """Tokenise records whose layout may differ from the run's (reference and replay data): detected anew
        unless ``data.format`` names one (then every source of the run has that layout)."""
        if not records:
            return []
        return self.encode(records, cfg, tokenizer, self.source_meta(records, cfg, meta, where), where)

    def source_meta(self, records: list[Record], cfg: RunConfig, meta: dict[str, Any], where: list[str]
                    ) -> dict[str, Any]:
        """``meta`` with the records' layout, detected anew unless ``data.format`` names one."""
        return {**meta, "format": layouts.one_layout([(records, where)], cfg.data)} if records else meta

    def pack(self, examples: list[Example], cfg: RunConfig, keep_apart: bool) -> list[Example]:
        """``data.packing``: short examples concatenated into rows of ``max_length``; their position ids keep
        them apart where the model allows it (``keep_apart``), else rows are plain concatenations."""
        if not cfg.data.packing:
            return examples
        rows = chat.pack(examples, cfg.model.max_length)
        return rows if keep_apart else without_positions(rows)

    def load_model(self, path: str | Path, cfg: RunConfig, meta: dict[str, Any], pad_id: int,
                   device: torch.device) -> tuple[nn.Module, list[str]]:
        """Pre-trained causal LM -> (model, freshly initialised module names, normally none). On CPU with rows
        of up to ``EAGER_MAX_LENGTH`` tokens attention runs eager: torch's CPU SDPA backward with a padding mask
        made a SmolLM2 LoRA step ~1.4x slower (16 x 48 tokens, bf16); at 256 tokens both were even. Packed
        float32 training rows go through sdpa after all (``fast.packed_attention``)."""
        _refuse_encoder_decoder(path, cfg)
        extra = {}
        if device.type == "cpu" and cfg.model.max_length <= EAGER_MAX_LENGTH:
            extra["attn_implementation"] = "eager"
        model, fresh = load_pretrained(AutoModelForCausalLM, path, cfg.model.trust_remote_code, **extra)
        if fresh:  # e.g. a *ForSequenceClassification checkpoint: its LM head starts random and trains in full
            print(f"warning: {path} holds no pre-trained {', '.join(fresh)}; it starts random and trains in full "
                  f"(the checkpoint is a {', '.join(model.config.architectures or ['model of another kind'])})",
                  file=sys.stderr)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = pad_id
        return model, fresh

    @torch.no_grad()
    def packing_ok(self, model: nn.Module, examples: list[dict[str, Any]], rt: Runtime) -> bool:
        """Whether padding-free batches (``collate_packed``) give this model, its method applied, the per-token
        losses of padded ones: two training examples in one packed row (with the attention training would use
        for it, ``fast.packed_attention``) vs two padded rows, float32, no dropout, equal to rounding. Models
        whose attention masks ignore ``position_ids`` (BLOOM) and methods that prepend virtual tokens to each
        row (prompt, P-tuning, prefix tuning) fail: they train on padded rows, and ``data.packing`` rows become
        plain concatenations."""
        sample = [e for e in examples if len(e["input_ids"]) > 1][:2]
        if len(sample) < 2:
            return False
        packed = collate_packed(sample, rt.pad_id, rows=[[0, 1]])
        training = model.training
        model.eval()
        try:
            with fast.packed_attention(model, rt.device, True, rt.bf16):
                a = token_nll(model, {k: v.to(rt.device) for k, v in packed.items()}, reduction="none")
            b = token_nll(model, {k: v.to(rt.device) for k, v in collate(sample, rt.pad_id).items()}, reduction="none")
        finally:
            model.train(training)
        # a leak between packed examples moved a tiny random BLOOM's losses (~10.8) by 3e-3; rounding moves 1e-6
        return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-5, atol=1e-4))

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed cross-entropy over the answer tokens of the batch."""
        return token_nll(model, batch, reduction="sum")

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"][:, 1:] != chat.IGNORE).sum())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, examples: list[dict[str, Any]], rt: Runtime, cfg: RunConfig,
                 meta: dict[str, Any], progress: bool = False, tokenizer: PreTrainedTokenizerBase | None = None,
                 raw: list[dict[str, Any]] | None = None, run_dir: Path | None = None, tag: str | None = None
                 ) -> dict[str, Any]:
        """Token-weighted loss and perplexity; with ``raw`` and ``tokenizer`` also BLEU and ROUGE-L of greedy
        answers to up to ``eval.generate_samples`` test prompts (written to ``samples_{tag}.jsonl``)."""
        if not examples:
            return {}
        metrics = token_loss(self, model, examples, rt, cfg.eval.batch_size, progress)
        if raw and tokenizer is not None and cfg.eval.generate_samples > 0 and meta.get("format") != "text":
            metrics.update(self._generation_metrics(model, raw, rt, cfg, meta, tokenizer, run_dir, tag))
        return metrics

    def _generation_metrics(self, model: nn.Module, raw: list[dict[str, Any]], rt: Runtime, cfg: RunConfig,
                            meta: dict[str, Any], tokenizer: PreTrainedTokenizerBase, run_dir: Path | None,
                            tag: str | None) -> dict[str, Any]:
        from tuneforge.generate import Sampling, answer_text, generate_ids, without_reasoning

        template = _template(tokenizer, meta)
        split = [chat.split_reference(layouts.to_messages(r, meta["format"], cfg.data, place("test split", i)))
                 for i, r in enumerate(raw)]
        chosen = by_prompt([normalise(chat.prompt_text(p)) for p, _ in split], [ref for _, ref in split],
                           cfg.eval.generate_samples)
        prompts, references = [split[i][0] for i, _ in chosen], [refs for _, refs in chosen]
        ids = [chat.prompt_ids(tokenizer, template, p, cfg.model.max_length) for p in prompts]
        outputs = generate_ids(model, tokenizer, ids, rt, Sampling(max_new_tokens=cfg.eval.max_new_tokens),
                               cfg.eval.batch_size)
        generated = [answer_text(tokenizer, o) for o in outputs]
        samples = [sample(next(m["content"] for m in reversed(p) if m["role"] == "user"), refs, gen)
                   for p, refs, gen in zip(prompts, references, generated)]
        references = [[without_reasoning(r) for r in refs] for refs in references]
        return generation_metrics(samples, [without_reasoning(g) for g in generated], references, run_dir, tag)

    def predict(self, model: nn.Module, inputs: list[Any], rt: Runtime, cfg: RunConfig, meta: dict[str, Any],
                tokenizer: Any) -> list[dict[str, Any]]:
        raise ConfigError("this is a causal_lm run, which generates text rather than labels: use "
                          "`tuneforge generate RUN_DIR PROMPT...` (or Run.generate)")

    def describe(self, prediction: dict[str, Any]) -> str:
        return str(prediction)

    def default_probes(self, cfg: RunConfig) -> list[str]:
        """Its own answers first (the headline: a capability probe, which shows forgetting where perplexity of
        reference text often falls with the new style), zero-shot sentiment, reference perplexity (where the
        model has reference data)."""
        return ["own_answers", "sentiment"] + \
            (["reference"] if self.default_reference(cfg) or cfg.forgetting.reference else [])

    def default_reference(self, cfg: RunConfig) -> str | None:
        """Held-out ``chitchat`` conversations for the embedded chat model; none for other models."""
        return DEFAULT_REFERENCE.get(cfg.model.name)
