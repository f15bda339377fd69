"""What each ``tuneforge`` command does (the parser is in :mod:`tuneforge.cli`). Heavy imports happen inside
the commands, so ``--help`` stays fast."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tuneforge.loaded import Run


def fail(message: str) -> int:
    print(f"tuneforge: error: {message}", file=sys.stderr)
    return 2


def cmd_train(args: argparse.Namespace) -> int:
    from tuneforge.run import train

    flags = []  # before the dotted overrides, which win (defaults < YAML < flags < overrides)
    for flag, key in (("method", "method.name"), ("model", "model.name"), ("task", "model.task"),
                      ("data", "data.dataset"), ("text_column", "data.text_column"),
                      ("label_column", "data.label_column"), ("epochs", "train.epochs"), ("lr", "train.lr"),
                      ("batch_size", "train.batch_size"), ("output", "output_dir")):
        value = getattr(args, flag)
        if value is not None:  # as a JSON (so YAML) literal: a path with '#' or ': ', a column named 'on' stay strings
            flags.append(f"{key}={json.dumps(value, ensure_ascii=False)}")  # an emoji as itself, not surrogates
    overrides = flags + list(args.overrides)
    if args.resume is not None and (overrides or args.config or args.overwrite):
        return fail("--resume continues a run with its own config; give no other settings"
                    + (" (--overwrite: start it again without --resume)" if args.overwrite else ""))
    out = train(args.config if args.config else {}, overrides, overwrite=args.overwrite, progress=not args.quiet,
                resume=args.resume)
    if out.table:  # rank 0 (the only process under torchrun that evaluates and writes)
        print(out.table)
        print(f"\nrun directory: {out.run_dir}")
    return 0


def _load(args: argparse.Namespace, form: str) -> Run:
    """The run ``args.run_dir`` on ``args.device``; a file given in its place (a data file) is refused with the
    command's right ``form``."""
    from tuneforge.config import ConfigError
    from tuneforge.run import load

    if os.path.isfile(args.run_dir):
        raise ConfigError(f"{args.run_dir} is a file, not a run directory; the run directory comes first: {form}")
    return load(args.run_dir, args.device)


def cmd_evaluate(args: argparse.Namespace) -> int:
    metrics = _load(args, f"`tuneforge evaluate RUN --data {args.run_dir}`").evaluate(args.data, progress=True)
    print(json.dumps(metrics, indent=2, default=float))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        return fail(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    run = _load(args, "`tuneforge predict RUN TEXT...` (or texts on standard input, one a line)")
    if args.max_new_tokens is not None and not run.task.predict_generates and not run.task.generates:
        return fail(f"--max-new-tokens: a {run.task.name} run predicts without generating text; leave it out")
    if args.max_new_tokens is not None:
        run.cfg.eval.max_new_tokens = args.max_new_tokens  # this process's predictions only
    texts, pairs = _arguments(args.texts), args.pair
    lines = None  # standard input: one output line per input line, a blank one for a blank line (null in JSON)
    if not texts:
        lines, texts = _stdin_lines()
        if run.cfg.data.text_pair_column:  # text pairs: FIRST<TAB>SECOND per line
            bad = next(((i, t.count("\t")) for i, t in enumerate(lines, 1) if t.strip() and t.count("\t") != 1), None)
            if bad is not None:
                tabs = f"{bad[1] or 'no'} tab{'s' if bad[1] > 1 else ''}"
                return fail(f"standard input line {bad[0]} has {tabs}: this run classifies text pairs, one "
                            "FIRST<TAB>SECOND a line (a third column, such as a gold label, would become part of the "
                            "second text)")
            texts, pairs = [t.split("\t", 1)[0] for t in texts], [t.partition("\t")[2] for t in texts]
    if not texts:
        return fail("predict needs TEXT arguments or lines on standard input")
    first = "first text" if pairs is not None else None
    problem = _text_problem(texts, "text", "give text to predict for", lines, first) or (
        pairs is not None and _text_problem(pairs, "--pair", "give every text its second text", lines, "second text"))
    if problem:  # an empty one: arguments only (blank standard-input lines were left out above)
        return fail(problem)
    rows = _predictions(run, texts, pairs)
    for line in lines if lines is not None else texts:
        row = next(rows) if line.strip() else None
        print(json.dumps(row, ensure_ascii=False) if args.json else "" if row is None else run.task.describe(row))
    next(rows, None)  # none is left: the generator ends, and says its notes
    return 0


PREDICT_CHUNK = 1024  # texts predicted at a time: output streams and memory stays bounded on large inputs


def _predictions(run: Run, texts: list[str], pairs: list[str] | None) -> Iterator[dict[str, Any]]:
    """``run.predict`` over ``texts`` a chunk at a time, with a progress bar (stderr) when there are several."""
    from tuneforge.config import ConfigError
    from tuneforge.progress import bar as progress_bar

    if pairs is not None and len(pairs) != len(texts):  # checked whole, as Run.predict would
        raise ConfigError(f"{len(texts)} texts but {len(pairs)} second texts: give one second text per text")
    starts = range(0, len(texts), PREDICT_CHUNK)
    counted: dict[str, int] = {}  # a chunk's "note: N <what>" -> N over every chunk, said once at the end
    for start in progress_bar(starts, desc="predict", unit="chunk", leave=False, disable=len(starts) < 2):
        end = start + PREDICT_CHUNK
        said = io.StringIO()
        with contextlib.redirect_stderr(said):
            rows = run.predict(texts[start:end], pairs[start:end] if pairs is not None else None)
        for line in said.getvalue().splitlines():
            if note := re.fullmatch(r"note: (\d+) (.*)", line):
                counted[note[2]] = counted.get(note[2], 0) + int(note[1])
            elif start == 0:  # anything else, once (every chunk would say it again)
                print(line, file=sys.stderr)
        yield from rows
    for what, n in counted.items():
        print(f"note: {n} {what}", file=sys.stderr)


def _arguments(values: list[str]) -> list[str]:
    """Texts given as arguments; a lone "-" asks for standard input (none given)."""
    return [] if values == ["-"] else list(values)


def _stdin_lines() -> tuple[list[str], list[str]]:
    """Standard input's lines (without line endings, CRLF included) and those that are not blank."""
    lines = [line.rstrip("\r\n") for line in sys.stdin]
    return lines, [line for line in lines if line.strip()]


def _text_problem(texts: list[str], what: str, fix: str, lines: list[str] | None = None,
                  part: str | None = None) -> str | None:
    """The error for the first empty text (``what`` N) or the first that is not UTF-8, else None; texts read from
    standard input (``lines``, blank ones included) are named by their line number, and ``part`` of a line
    (a pair's "first text") by that too."""
    from tuneforge.user_inputs import EMPTY, text_problem

    names = ([f"standard input line {i}" + (f"'s {part}" if part else "") for i, line in enumerate(lines, 1)
              if line.strip()] if lines is not None else [f"{what} {i}" for i in range(1, len(texts) + 1)])
    for name, text in zip(names, texts):
        if problem := text_problem(text):
            return f"{name} {problem}" + (f"; {fix}" if problem == EMPTY else "")
    return None


def _sampling(args: argparse.Namespace) -> dict:
    """Generation settings from the flags: a sampling setting given means sampling."""
    given = {k: v for k, v in {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k}.items()
             if v is not None}
    return {"max_new_tokens": args.max_new_tokens, "sample": args.sample or bool(given), **given, "seed": args.seed}


def cmd_generate(args: argparse.Namespace) -> int:
    run = _load(args, "`tuneforge generate RUN PROMPT...` (or prompts on standard input, one a line)")
    run.check_generates()  # before waiting for standard input
    prompts, lines = _arguments(args.prompts), None  # standard input: as predict, a blank line for a blank line
    if not prompts:
        lines, prompts = _stdin_lines()
    if not prompts:
        return fail("generate needs PROMPT arguments or lines on standard input")
    problem = _text_problem(prompts, "prompt", "give text to answer", lines)
    if problem:
        return fail(problem)
    from tuneforge.tasks import one_line

    answers = iter(run.generate(prompts, **_sampling(args)))
    whole = lines is None and len(prompts) == 1  # one prompt as an argument: its answer as written
    for prompt in lines if lines is not None else prompts:
        row = {"prompt": prompt, "generated": next(answers)} if prompt.strip() else None
        text = "" if row is None else row["generated"] if whole else one_line(row["generated"])
        print(json.dumps(row, ensure_ascii=False) if args.json else text)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from tuneforge.generate import chat_loop
    from tuneforge.run import load

    run = load(args.run_dir, args.device)
    run.check_generates(chat=True)  # before the banner: a classifier would fail only at the first message
    chat_loop(run, **_sampling(args))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tuneforge.export import export
    from tuneforge.run import load

    out = export(load(args.run_dir, "cpu"), args.out, args.format, overwrite=args.overwrite, dtype=args.dtype)
    print(f"{args.format} export written to {out}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from tuneforge.run import load

    out = load(args.run_dir, "cpu").merge(args.out, overwrite=args.overwrite, dtype=args.dtype)
    print(f"merged model written to {out} (load it with transformers' from_pretrained)")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    import dataclasses

    from tuneforge.config import HEAD_LR
    from tuneforge.methods import registry
    from tuneforge.strict import field_comments
    from tuneforge.tasks import TASKS

    for name in registry.names():
        module = registry.get(name)
        doc = " ".join((module.__doc__ or "").strip().split("\n\n")[0].split())  # the first paragraph
        doc = re.split(r"(?<!al)\. ", doc)[0].rstrip(".") + "."  # its first sentence ("et al." is no end)
        lrs = {task: registry.train_defaults(name, task).get("lr") for task in TASKS}
        shown = ", ".join(f"{t} {v:g}" for t, v in lrs.items()) if len(set(lrs.values())) > 1 else \
            f"{next(iter(lrs.values())):g}"
        shown += "; less on wider or deeper models" if callable(getattr(module, "TRAIN_DEFAULTS", {}).get("lr")) else ""
        pooler = "; the pooler trains with the head" if registry.train_defaults(name).get("pooler_with_head") else ""
        heads = {t: h for t in TASKS if (h := registry.train_defaults(name, t).get("head_lr", HEAD_LR)) != HEAD_LR}
        head = f"; a fresh head at least {', '.join(f'{t} {h:g}' for t, h in heads.items())}" if heads else ""
        print(f"{name:10s} {doc}  [default lr: {shown}{head}{pooler}]")
        comments = field_comments(module.Config)
        for f in dataclasses.fields(module.Config):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            comment = f"  # {comments[f.name]}" if comments.get(f.name) else ""
            print(f"    method.{f.name} = {default!r}{comment}")
    print("A fresh task head (classification, token classification) trains at the larger of the method's rate and "
          f"{HEAD_LR:g} or the floor shown (train.head_lr); where marked, a pre-trained pooler (BERT's) that the "
          "method leaves frozen trains with it (train.pooler_with_head).")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from tuneforge.compare import compare

    overrides = ([f"model.task={args.task}"] if args.task else []) + list(args.overrides)  # overrides win, as in train
    rows = compare(args.methods, args.config, overrides, out_dir=args.output, progress=not args.quiet,
                   in_process=args.in_process, overwrite=args.overwrite)
    with open(os.path.join(args.output, "comparison.md")) as f:
        print(f.read())
    failed = [r["method"] for r in rows if r["status"] != "ok"]
    print(f"comparison written to {args.output}" + (f" ({len(failed)} failed: {', '.join(failed)})" if failed else ""))
    return 1 if failed else 0  # scripts see a method that failed; the others' rows are written either way


def cmd_calibrate(args: argparse.Namespace) -> int:
    from tuneforge.prompting import classify as prompting

    prompting.check_output(args.output, args.overwrite, args.data)  # fail before any work
    words = args.label_words.split(",") if args.label_words is not None else None
    content_free = args.content_free.split(",") if args.content_free is not None else prompting.CONTENT_FREE
    template = args.template.replace("\\n", "\n") if args.template is not None else None
    result = prompting.evaluate_prompting(
        args.model, args.data, template, words, args.shots, content_free, args.limit,
        args.seed, args.text_column, args.label_column, args.mode, args.batch_size, args.device, args.skip_invalid)
    print(prompting.result_table(result))
    if args.output:
        print(f"\nresults written to {prompting.write_result(result, args.output, args.overwrite)}")
    return 0


def cmd_mitigate(args: argparse.Namespace) -> int:
    from tuneforge.config import ConfigError
    from tuneforge.mitigate import mitigate

    try:
        values = [float(v) for v in args.values.split(",")] if args.values is not None else None  # "": an error
    except ValueError:
        raise ConfigError(f"--values must be comma-separated numbers, got {args.values!r}") from None
    result = mitigate(args.config, args.overrides, args.kind, values, args.margin, args.output,
                      progress=not args.quiet, overwrite=args.overwrite)
    with open(os.path.join(args.output, "mitigation.md")) as f:
        print(f.read())
    if all("error" in row for row in result["rows"][1:]):
        return 2  # every candidate failed: a setting to fix (their reasons are listed), not "none forgets less"
    return 0 if result["chosen"] is not None else 1
