"""Command line: ``tuneforge train | evaluate | predict | generate | chat | merge | export | compare |
mitigate | calibrate | methods``. Errors are one line, no traceback."""
from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tuneforge import interrupts
from tuneforge.cli_calibrate import add_calibrate
from tuneforge.commands import (fail, cmd_chat, cmd_compare, cmd_evaluate, cmd_export,
                                cmd_generate, cmd_merge, cmd_methods, cmd_mitigate, cmd_predict, cmd_train)

EXAMPLES = """examples:
  tuneforge train                                   # LoRA on the embedded MiniLM + Rotten Tomatoes
  tuneforge train -c run.yaml method.rank=16 train.lr=1e-3
  tuneforge train --method freeze --model minilm --data reviews.csv --text-column review --label-column stars
  tuneforge evaluate runs/lora-20261126-120000 --data test.jsonl
  tuneforge predict runs/lora-20261126-120000 "a gripping film" "a dull mess"
  tuneforge merge runs/lora-20261126-120000 merged-model/
  tuneforge train -c configs/demo-chat.yaml          # LoRA chat tuning of the embedded SmolLM2 on ChatterBot pairs
  tuneforge generate runs/chat "How do I reset my password?" --max-new-tokens 64
  tuneforge chat runs/chat
  tuneforge export runs/chat peft-adapter/ --format peft
  tuneforge calibrate --limit 300 --shots 4          # zero/few-shot SmolLM2 sentiment, with/without calibration
"""


QUIET = "no progress bars or start lines (results, notes and warnings still print)"
DTYPES = ("auto", "float32", "bfloat16", "float16")
DTYPE = "the merged weights' dtype; auto: the base model's (e.g. bfloat16), else float32"
RUN_DIR = "a run directory written by tuneforge train (its output's last line names it)"
OUT = "the folder to write (refused where it exists, unless --overwrite)"
TEXTS = "texts to label (none: one per standard-input line)"
PROMPTS = ("prompts to answer (none: one per standard-input line); one answer a line, its line breaks, tabs and "
           "backslashes written \\n \\r \\t \\\\, unless a single prompt is given here")
DEVICE = "auto (CUDA where there is a GPU, else CPU), cpu, cuda or cuda:N (default auto)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuneforge",
                                     description="Fine-tune pre-trained transformers on your own data.",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="fine-tune a model (YAML config and/or flags and dotted overrides)",
                       description="Fine-tune a model. Settings come from defaults < --config YAML < flags < "
                       "dotted overrides (section.key=value, e.g. method.rank=16). See `tuneforge methods`.")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. method.rank=16 train.lr=1e-3")
    p.add_argument("-c", "--config", help="YAML config file (sections: model, data, method, train, eval)")
    p.add_argument("--method", help="full | freeze | lora | ... (default lora)")
    p.add_argument("--model", help="embedded model name (minilm, smollm2), a local Hugging Face folder, or a Hub "
                   "id (owner/name) already in the local Hugging Face cache (nothing is downloaded)")
    p.add_argument("--task", help="classification (default), causal_lm, token_classification or seq2seq")
    p.add_argument("--data", help="embedded data set (rotten_tomatoes, imdb, chatterbot_topics, chatterbot, "
                   "chitchat, wnut16) or a .csv/.tsv/.jsonl/.json/.parquet (.conll/.txt/.bio for tagging) file")
    p.add_argument("--text-column", dest="text_column",
                   help="the text (classification) or prompt (causal LM pairs) column (default text, or a common "
                        "other name such as sentence or prompt when text is absent)")
    p.add_argument("--label-column", dest="label_column",
                   help="the label (classification), answer (causal LM pairs) or tags (token classification) column")
    p.add_argument("--epochs", type=float, help="passes over the training data (default: automatic length)")
    p.add_argument("--lr", type=float, help="learning rate (default: the method's for the task; tuneforge methods)")
    p.add_argument("--batch-size", dest="batch_size", type=int,
                   help="examples per micro-batch per process (default 32; x train.grad_accum x processes per step)")
    p.add_argument("-o", "--output", help="run directory (default runs/<method>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.add_argument("-q", "--quiet", action="store_true", help=QUIET)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("evaluate", help="metrics of a run on its test split or on a data file")
    p.add_argument("run_dir", help=RUN_DIR)
    p.add_argument("--data", help="data file with the run's columns, or for a causal LM any conversation layout "
                   "(default: the run's own test split)")
    p.add_argument("--device", default="auto", help=DEVICE)
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("predict", help="label + probabilities (entities, outputs) for texts (arguments or stdin lines)",
                       description="Label + probabilities for each TEXT (or each standard-input line). A "
                       "classifier trained on text pairs takes the second texts as --pair, one per TEXT in "
                       "order, or as tab-separated stdin lines (FIRST<TAB>SECOND). A token classifier (NER) prints the "
                       "entities found in each text, with their types and character offsets under --json; words "
                       "are split at whitespace and punctuation, as NER data sets are. A seq2seq run prints each "
                       "text's output (greedy, at most the run's eval.max_new_tokens tokens).")
    p.add_argument("run_dir", help=RUN_DIR)
    p.add_argument("texts", nargs="*", metavar="TEXT", help=TEXTS)
    p.add_argument("--pair", action="append", metavar="SECOND", help="second text of a pair (repeat per TEXT)")
    p.add_argument("--max-new-tokens", type=int, metavar="N",
                   help="seq2seq: the longest output, in tokens (default: the run's eval.max_new_tokens)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--device", default="auto", help=DEVICE)
    p.set_defaults(fn=cmd_predict)

    for command, fn, text in (("generate", cmd_generate,
                               "answers of a causal-LM run to prompts (arguments or stdin lines)"),
                              ("chat", cmd_chat, "chat with a causal-LM run interactively (answers stream)")):
        p = sub.add_parser(command, help=text)
        p.add_argument("run_dir", help=RUN_DIR)
        if command == "generate":
            p.add_argument("prompts", nargs="*", metavar="PROMPT", help=PROMPTS)
            p.add_argument("--json", action="store_true", help="one JSON object per line")
        p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=128,
                       help="most tokens generated per answer (default 128)")
        p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
        p.add_argument("--temperature", type=float, help="sampling temperature (default 1; implies --sample; 0: greedy decoding)")
        p.add_argument("--top-p", dest="top_p", type=float, help="nucleus sampling mass (default 1; implies --sample)")
        p.add_argument("--top-k", dest="top_k", type=int,
                       help="sample among the k likeliest tokens (default 50; implies --sample)")
        p.add_argument("--seed", type=int, help="seed for reproducible sampling")
        p.add_argument("--device", default="auto", help=DEVICE)
        p.set_defaults(fn=fn)

    p = sub.add_parser("export", help="write a PEFT-format adapter (or a merged model) usable without tuneforge")
    p.add_argument("run_dir", help=RUN_DIR)
    p.add_argument("out", help=OUT)
    p.add_argument("--format", default="peft", choices=["peft", "merged"],
                   help="peft: adapter_config.json + adapter_model.safetensors; merged: as `merge`")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help=DTYPE + " (merged only)")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("merge", help="write a plain Hugging Face model folder with the adapter merged in")
    p.add_argument("run_dir", help=RUN_DIR)
    p.add_argument("out", help=OUT)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help=DTYPE)
    p.set_defaults(fn=cmd_merge)

    p = sub.add_parser("compare", help="train several methods on one task; table, CSV and plots side by side",
                       description="Train each method with its own defaults (only method.name changes; the "
                       "learning rate is the method's default unless train.lr is set) and compare quality, "
                       "trainable share, time, speed, memory and forgetting. Runs go to OUT_DIR/runs/<method>; "
                       "running again skips finished methods and resumes interrupted ones. Exit status 1 when "
                       "a method failed (its row says why; the others are written).")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides shared by every run")
    p.add_argument("-c", "--config", help="base YAML config shared by every run")
    p.add_argument("--methods", help="comma-separated methods (default: all, see `tuneforge methods`)")
    p.add_argument("--task", help="classification (default), causal_lm, token_classification or seq2seq (sets model.task)")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR",
                   help="folder for comparison.md/.csv, plots and runs/<method>")
    p.add_argument("--overwrite", action="store_true", help="retrain every method, replacing earlier runs")
    p.add_argument("--in-process", dest="in_process", action="store_true",
                   help="train in this process (faster start; peak memory is then not per method)")
    p.add_argument("-q", "--quiet", action="store_true", help=QUIET)
    p.set_defaults(fn=cmd_compare)

    add_calibrate(sub, count, DEVICE)

    p = sub.add_parser("mitigate", help="choose a forgetting mitigation's strength on validation data",
                       description="Train the run without mitigation and once per candidate strength of one "
                       "mitigation (EWC / L2-SP strength, replay or self-replay ratio, interpolation share); pick the candidate that "
                       "forgets least (first forgetting probe) while the validation metric stays within --margin "
                       "of the unmitigated run (points of accuracy/F1, or per cent of perplexity). Writes "
                       "mitigation.md and tradeoff.png (task gain against forgetting, Pareto front).")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides shared by every run")
    p.add_argument("-c", "--config", help="base YAML config shared by every run")
    p.add_argument("--kind", required=True, choices=["ewc", "l2sp", "replay", "self-replay", "interpolate"],
                   help="ewc / l2sp: regularisation strength; replay / self-replay: ratio; interpolate: share of "
                   "the trained change kept (WiSE-FT)")
    p.add_argument("--values", help="comma-separated candidate strengths or ratios (default: a small grid)")
    p.add_argument("--margin", type=float, default=1.0, help="allowed task cost: accuracy/F1 points, or "
                   "per cent of perplexity for causal LMs (default 1)")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR")
    p.add_argument("--overwrite", action="store_true", help="retrain every run (an earlier sweep's run is replaced "
                   "once its new one starts training)")
    p.add_argument("-q", "--quiet", action="store_true", help=QUIET)
    p.set_defaults(fn=cmd_mitigate)

    p = sub.add_parser("methods", help="list methods, their options and default learning rates")
    p.set_defaults(fn=cmd_methods)
    for command in sub.choices.values():  # for errors in the command's own usage
        command.set_defaults(command_parser=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line; Ctrl-C, even while the command still imports, and SIGTERM end in one line."""
    with interrupts.sigterm_raises():
        try:
            return _main(argv)
        except KeyboardInterrupt as exc:  # before the command's own handling (importing torch takes seconds)
            return interrupts.report(exc, None)


def leftovers(extra: list[str]) -> tuple[list[str], list[str]]:
    """(positionals, unknown options) among what ``parse_known_args`` left over: everything after ``--`` is
    positional, and so are ``-`` (standard input) and a text holding a space (``"-3 stars, sadly"``)."""
    cut = extra.index("--") if "--" in extra else len(extra)
    unknown = [e for e in extra[:cut] if e.startswith("-") and e != "-" and " " not in e]
    return [e for e in extra[:cut] if e not in unknown] + extra[cut + 1:], unknown


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # positionals may follow options (`predict RUN --json "a" "b"`, `train x=1 --method lora y=2`): argparse
    # leaves them over
    rest = next((name for name in ("texts", "overrides", "prompts") if hasattr(args, name)), None)
    positional, unknown = leftovers(extra) if rest else ([], extra)
    if unknown:  # the command's own usage, and only what it does not know (its KEY=VALUE overrides are fine)
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)} (see `tuneforge {args.command} --help`)")
    if positional:
        setattr(args, rest, list(getattr(args, rest)) + positional)
    from tuneforge import distributed, scope
    from tuneforge.config import ConfigError

    scope.silence_hf()  # this process is the command's: tuneforge prints its own notes

    fn: Callable[[argparse.Namespace], int] = args.fn
    try:
        code = fn(args)
        sys.stdout.flush()  # a reader gone (`| head`) fails here, not in the interpreter's exit
        return code
    except ConfigError as exc:
        rank = distributed.current().rank
        return fail(str(exc) if rank == 0 else f"rank {rank}: {exc}")
    except distributed.ReportedElsewhere:
        return 2  # rank 0 printed the error every rank shared
    except BrokenPipeError:  # the reader of our output went away (`| head`): stop quietly, as Python's docs advise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit either
        return 1
    except KeyboardInterrupt as exc:
        return interrupts.report(exc, args.command, getattr(args, "resume", None),
                                 getattr(args, "overwrite", False))
    except OSError as exc:  # a path the user gave cannot be written (read-only, a file where a folder goes, full)
        if exc.filename is None or exc.errno not in PATH_ERRORS:
            raise
        return fail(f"cannot write {exc.filename}: {_why(exc)}{_where()}")
    except torch_oom() as exc:  # one process ran out of memory: say so in one line; torchrun stops the others
        return fail(f"out of memory{_where()}: {str(exc).splitlines()[0][:200]}; lower train.batch_size or "
                    "model.max_length, or use train.grad_accum")
    finally:
        distributed.teardown()


def count(least: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``least``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value
    return parse


PATH_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR,
               errno.EEXIST, errno.ENAMETOOLONG}


def _why(exc: OSError) -> str:
    """The reason a path cannot be written; where a file stands in the way of a folder, that file's name."""
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        path = os.fsdecode(exc.filename)
        for part in (path, *map(str, Path(path).parents)):  # the part of the path that is a file, as given
            if os.path.isfile(part):
                return f"{part} is a file, where a folder is needed"
    return exc.strerror or str(exc)


def torch_oom() -> tuple[type[BaseException], ...]:
    import torch
    return (torch.OutOfMemoryError, MemoryError)


def _where() -> str:
    from tuneforge import distributed
    d = distributed.current()
    return f" on rank {d.rank}" if d.active else ""


if __name__ == "__main__":
    sys.exit(main())
