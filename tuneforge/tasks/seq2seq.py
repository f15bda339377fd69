"""Sequence to sequence: input -> output pairs (summaries, translations, rewrites, answers) for encoder-decoder
models (T5, BART, mBART, Pegasus, Marian ...). The encoder reads the input; the decoder learns the output
(cross-entropy on its tokens, teacher-forced); perplexity, and BLEU / ROUGE-L of greedy outputs. The data side
(layouts, tokenising, teacher forcing) is ``tuneforge/data/pairs.py``."""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from transformers import AutoModelForSeq2SeqLM, PreTrainedTokenizerBase

from tuneforge import assets
from tuneforge.config import ConfigError, RunConfig
from tuneforge.data import layouts
from tuneforge.data.batching import batch_order
from tuneforge.data.pairs import decoding, encode_pairs, encoder_ids, source_target, with_prefix
from tuneforge.data.readers import place, read_records
from tuneforge.data.dataset import normalise
from tuneforge.evaluate import by_prompt, generation_metrics, sample
from tuneforge.models import autocast, load_pretrained, position_limit, pretrained_config
from tuneforge.progress import bar as progress_bar
from tuneforge.tasks import Example, Prepared, Record, Runtime, lm_head, one_line, token_loss
from tuneforge.tasks import seq2seq_head as head_only
from tuneforge.tasks.seq2seq_head import IGNORE, forward


def output_nll(model: nn.Module, batch: dict[str, torch.Tensor], reduction: str = "sum") -> torch.Tensor:
    """Cross-entropy (float32) of the output tokens given the input, teacher-forced. Summed, with a plain LM head
    whose logits the model only offsets by a bias (:mod:`tuneforge.tasks.seq2seq_head`): the head runs at the
    output tokens alone, a chunk of the vocabulary at a time (``lm_head.head_nll``), not at every decoder position
    (padding included) over the whole vocabulary."""
    labels = batch["labels"]  # (batch, target)
    head = model.get_output_embeddings()
    if reduction == "sum" and lm_head.applies(head) and head_only.applies(model, head, batch):
        hidden = head_only.head_input(model, head, batch)  # (batch, target, hidden)
        rows, chosen, _ = lm_head.kept_rows(hidden.reshape(-1, hidden.shape[-1]), labels.flatten())
        return lm_head.head_nll(head, rows, chosen, extra_bias=head_only.logits_bias(model))
    logits = forward(model, batch).logits  # (batch, target, vocab)
    keep = labels != IGNORE  # (batch, target)
    return nn.functional.cross_entropy(logits[keep].float(), labels[keep], reduction=reduction)


@torch.no_grad()
def generate_outputs(model: nn.Module, tokenizer: PreTrainedTokenizerBase, inputs: list[list[int]], rt: Runtime,
                     meta: dict[str, Any], max_new_tokens: int, batch_size: int, progress: bool = False) -> list[str]:
    """Greedy outputs for encoder inputs (token ids), inputs of similar length batched together, the decoder
    started where training started it (``meta``: :func:`tuneforge.data.pairs.decoding`); the model's own
    generation settings otherwise (e.g. mBART-50's forced language token)."""
    model.eval()
    config = copy.deepcopy(model.generation_config)
    limit = position_limit(model)  # a learned decoder position table (BART: 1,024): the start token and new ones
    config.update(do_sample=False, num_beams=1, max_length=None, min_length=0,
                  max_new_tokens=min(max_new_tokens, limit) if limit is not None else max_new_tokens,
                  decoder_start_token_id=meta["decoder_start"])
    out: list[str] = [""] * len(inputs)
    lengths = [len(x) for x in inputs]
    order = batch_order(lengths, batch_size, 0, 0, shuffle=False, group_by_length=True)
    for idx in progress_bar(order, desc="generate", leave=False, disable=not progress):
        longest = max(lengths[i] for i in idx)
        ids = torch.tensor([inputs[i] + [rt.pad_id] * (longest - lengths[i]) for i in idx],
                           dtype=torch.long)  # (batch, seq)
        mask = torch.tensor([[1] * lengths[i] + [0] * (longest - lengths[i]) for i in idx],
                            dtype=torch.long)  # (batch, seq)
        with autocast(rt.device, rt.bf16):
            result = model.generate(input_ids=ids.to(rt.device), attention_mask=mask.to(rt.device),
                                    generation_config=config)  # (batch, 1 + new): the start token first
        for row, i in enumerate(idx):
            out[i] = tokenizer.decode(result[row].tolist(), skip_special_tokens=True).strip()
    return out


class Task:
    name = "seq2seq"
    metric = "loss"  # validation metric that picks the best checkpoint
    greater_is_better = False
    table_metrics = ("loss", "perplexity", "bleu", "rouge_l")
    generates = False  # outputs come from `tuneforge predict`; chat and the own-answer probes are a causal LM's
    perplexity = True  # of the output tokens (forgetting.reference measures it on reference data)
    predict_generates = True  # predict writes text (its length: eval.max_new_tokens, predict --max-new-tokens)
    peft_task_type = "SEQ_2_SEQ_LM"  # what PeftModel.from_pretrained builds around the base model
    loss_unit = "token"
    packs = False  # an encoder-decoder row holds one input
    # train.group_by_length default: off, as the causal LM's. A random-weight T5 of t5-small's shapes on 256 ChatterBot
    # pairs (1 epoch, 3 seeds, benchmarks/bench_seq2seq.py's data) reached test perplexity 2,789 (2,471-2,937) full /
    # 4,548 (4,033-4,952) LoRA with random batches, 3,385 (3,215-3,938) / 5,637 (5,348-5,704) with length-grouped
    # ones; Trainer's random batches: 2,725 / 4,469.
    group_by_length = False
    auto_patience = 3  # as the causal LM's: a smooth validation loss, the best epoch kept either way

    # -- data ---------------------------------------------------------------------------------------------
    def read_source(self, path: str, cfg: RunConfig) -> list[Record]:
        records = read_records(path)
        layouts.note_unread(records, cfg.data, path)
        return records

    def required_columns(self, cfg: RunConfig) -> list[str]:
        return []  # the layout is detected per row

    def row_problem(self, record: Record, cfg: RunConfig) -> str | None:
        try:
            source_target(record, cfg, "")
        except ConfigError as exc:
            return str(exc).removeprefix(": ")
        return None

    def input_text(self, record: Record, cfg: RunConfig) -> str:
        return source_target(record, cfg, "")[0]

    def prompt_texts(self, record: Record, cfg: RunConfig) -> list[str]:
        return [self.input_text(record, cfg)]

    def stratum(self, record: Record, cfg: RunConfig) -> str | None:
        return None

    def augment_columns(self, cfg: RunConfig) -> list[str]:
        return []  # word-level edits of an input would teach an output for a text no one wrote

    def setup_tokenizer(self, tokenizer: PreTrainedTokenizerBase, cfg: RunConfig, meta: dict[str, Any]) -> None:
        pass

    def prepare(self, cfg: RunConfig, tokenizer: PreTrainedTokenizerBase, records: dict[str, list[Record]],
                where: dict[str, list[str]]) -> Prepared:
        """The layout (one for all splits) and the tokenised splits."""
        path = assets.resolve_model(cfg.model.name)
        _refuse_decoder_only(path, cfg)  # before any row is tokenised
        meta = {"layout": layouts.one_layout([(records[k], where[k]) for k in records], cfg.data),
                **decoding(path, cfg, tokenizer)}
        enc = {k: self.encode(records[k], cfg, tokenizer, meta, where[k]) for k in ("train", "validation", "test")}
        return Prepared(train=enc["train"], validation=enc["validation"], test=enc["test"], meta=meta,
                        raw_test=records["test"])

    def encode(self, records: list[Record], cfg: RunConfig, tokenizer: PreTrainedTokenizerBase,
               meta: dict[str, Any], where: list[str]) -> list[Example]:
        return encode_pairs([source_target(r, cfg, w, meta["layout"]) for r, w in zip(records, where)], tokenizer,
                            cfg.model.max_length, meta)

    def encode_any(self, records: list[Record], cfg: RunConfig, tokenizer: PreTrainedTokenizerBase,
                   meta: dict[str, Any], where: list[str]) -> list[Example]:
        """Records of another source (reference and replay data): their own layout, detected anew."""
        return self.encode(records, cfg, tokenizer, self.source_meta(records, cfg, meta, where), where)

    def source_meta(self, records: list[Record], cfg: RunConfig, meta: dict[str, Any], where: list[str]
                    ) -> dict[str, Any]:
        return {**meta, "layout": layouts.one_layout([(records, where)], cfg.data)} if records else meta

    def pack(self, examples: list[Example], cfg: RunConfig, keep_apart: bool) -> list[Example]:
        return examples

    # -- model and loss -----------------------------------------------------------------------------------
    def load_model(self, path: str | Path, cfg: RunConfig, meta: dict[str, Any], pad_id: int,
                   device: torch.device) -> tuple[nn.Module, list[str]]:
        """The pre-trained encoder-decoder with its LM head -> (model, freshly initialised module names)."""
        _refuse_decoder_only(path, cfg)
        model, fresh = load_pretrained(AutoModelForSeq2SeqLM, path, cfg.model.trust_remote_code)
        if fresh:
            print(f"warning: {path} holds no pre-trained {', '.join(fresh)}; it starts random and trains in full",
                  file=sys.stderr)
        c = model.config
        if c.pad_token_id is None:
            c.pad_token_id = pad_id
        if c.decoder_start_token_id is None or meta["last_first"]:  # mBART-cc25: the output's language code, as
            c.decoder_start_token_id = meta["decoder_start"]  # trained (config.json may name EOS or nothing); a
            model.generation_config.decoder_start_token_id = c.decoder_start_token_id  # merged folder keeps it
        return model, fresh

    def packing_ok(self, model: nn.Module, examples: list[Example], rt: Runtime) -> bool:
        return False  # each input has its own encoder row

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed cross-entropy over the output tokens of the batch."""
        return output_nll(model, batch, reduction="sum")

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"] != IGNORE).sum())

    # -- evaluation and use ---------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, examples: list[Example], rt: Runtime, cfg: RunConfig,
                 meta: dict[str, Any], progress: bool = False, tokenizer: PreTrainedTokenizerBase | None = None,
                 raw: list[Record] | None = None, run_dir: Path | None = None, tag: str | None = None
                 ) -> dict[str, Any]:
        """Token-weighted loss and perplexity of the outputs; with ``raw`` and ``tokenizer`` also BLEU and ROUGE-L
        of greedy outputs for up to ``eval.generate_samples`` test inputs (written to ``samples_{tag}.jsonl``)."""
        if not examples:
            return {}
        metrics = token_loss(self, model, examples, rt, cfg.eval.batch_size, progress)
        if raw and tokenizer is not None and cfg.eval.generate_samples > 0:
            rows = [source_target(r, cfg, place("test split", i), meta["layout"]) for i, r in enumerate(raw)]
            metrics.update(self._generation_metrics(model, rows, rt, cfg, meta, tokenizer, run_dir, tag, progress))
        return metrics

    def _generation_metrics(self, model: nn.Module, rows: list[tuple[str, str]], rt: Runtime, cfg: RunConfig,
                            meta: dict[str, Any], tokenizer: PreTrainedTokenizerBase, run_dir: Path | None,
                            tag: str | None, progress: bool) -> dict[str, Any]:
        chosen = by_prompt([normalise(x) for x, _ in rows], [t for _, t in rows], cfg.eval.generate_samples)
        sources, references = [rows[i][0] for i, _ in chosen], [refs for _, refs in chosen]
        inputs, _ = encoder_ids(sources, tokenizer, cfg.model.max_length)  # cuts: noted in training
        generated = generate_outputs(model, tokenizer, inputs, rt, meta, cfg.eval.max_new_tokens, cfg.eval.batch_size,
                                     progress)
        samples = [sample(x, refs, g) for x, refs, g in zip(sources, references, generated)]
        return generation_metrics(samples, generated, references, run_dir, tag)

    def predict(self, model: nn.Module, inputs: list[Any], rt: Runtime, cfg: RunConfig, meta: dict[str, Any],
                tokenizer: Any) -> list[dict[str, Any]]:
        """The output for each input text (greedy, at most ``eval.max_new_tokens`` tokens), after the run's
        system prompt as in training."""
        if any(isinstance(x, tuple) for x in inputs):
            raise ConfigError("this seq2seq run takes one input text each: drop the second texts (--pair)")
        ids, cut = encoder_ids([with_prefix(cfg.data.system_prompt or "", x) for x in inputs], tokenizer,
                               cfg.model.max_length)
        if cut:
            n = cfg.model.max_length
            print(f"note: {len(cut)} input(s) longer than model.max_length={n} tokens keep their first {n} (as in "
                  "training)", file=sys.stderr)
        outputs = generate_outputs(model, tokenizer, ids, rt, meta, cfg.eval.max_new_tokens, cfg.eval.batch_size)
        return [{"text": x, "output": o} for x, o in zip(inputs, outputs)]

    def describe(self, prediction: dict[str, Any]) -> str:
        """The output on one line (:func:`tuneforge.tasks.one_line`)."""
        return one_line(prediction["output"])

    def default_probes(self, cfg: RunConfig) -> list[str]:
        return ["reference"] if cfg.forgetting.reference else []

    def default_reference(self, cfg: RunConfig) -> str | None:
        return None


def _refuse_decoder_only(path: str | Path, cfg: RunConfig) -> None:
    """One line for a model without a decoder reading an encoder (BERT, Llama ...)."""
    config = pretrained_config(path, cfg.model.trust_remote_code)
    if not getattr(config, "is_encoder_decoder", False):
        raise ConfigError(f"model: {cfg.model.name} is not an encoder-decoder model ({config.model_type}); the seq2seq "
                          "task trains encoder-decoder models (T5, BART, mBART, Pegasus, Marian ...): give one with "
                          "model.name, or train a decoder-only model (Llama, Qwen, SmolLM2 ...) on the same input -> "
                          "output pairs with model.task=causal_lm")
