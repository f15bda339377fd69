"""``tuneforge calibrate``'s arguments: prompt classification by a causal LM, with and without contextual
calibration (the command itself: :func:`tuneforge.commands.cmd_calibrate`)."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from tuneforge.commands import cmd_calibrate

CALIBRATE_EXAMPLES = """examples:
  tuneforge calibrate --limit 300                    # SmolLM2, Rotten Tomatoes test split, zero-shot
  tuneforge calibrate --limit 300 --shots 4 -o rt-4shot.json
  tuneforge calibrate --data reviews.csv --text-column review --template "Review: {text}\\nStars:" \\
      --label-words one,two,three,four,five
"""


def add_calibrate(sub: Any, count: Callable[[int], Callable[[str], int]], device: str) -> None:
    """Add the ``calibrate`` sub-command to ``sub`` (``count``: the parser's at-least-N integer type; ``device``:
    its --device help)."""
    p = sub.add_parser("calibrate", help="classify labelled data with a causal LM from a prompt, with and without "
                       "contextual calibration", epilog=CALIBRATE_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Zero- or few-shot classification of a data set's test split (tuneforge's seeded "
                       "80/10/10 split) by a causal LM: the label whose word is likeliest after the prompt wins. "
                       "Contextual calibration (Zhao et al. 2021) divides out the label bias measured on "
                       "content-free inputs. Prints accuracy and macro-F1 without and with it.")
    p.add_argument("--model", default="smollm2", help="embedded causal LM (smollm2) or a local Hugging Face folder")
    p.add_argument("--data", default="rotten_tomatoes", help="embedded data set or a .csv/.jsonl/.parquet file")
    p.add_argument("--text-column", dest="text_column", default="text", help="the data's text column (default: text)")
    p.add_argument("--label-column", dest="label_column", default="label",
                   help="the data's label column (default: label)")
    p.add_argument("--template", help="prompt with {text}; \\n is a newline (default for rotten_tomatoes/imdb: "
                   "'Review: {text}\\nSentiment:', else 'Text: {text}\\nLabel:')")
    p.add_argument("--label-words", dest="label_words", help="comma-separated, one per label in sorted label "
                   "order (default: the label names); each follows the template after one space (none where the "
                   "template ends in whitespace)")
    p.add_argument("--shots", type=count(0), default=0, help="demonstrations drawn (seeded) from the train split")
    p.add_argument("--content-free", dest="content_free",
                   help="comma-separated content-free inputs (default 'N/A,[MASK],': N/A, [MASK] and the empty text)")
    p.add_argument("--limit", type=count(1), help="classify a seeded sample of N test examples (default: all)")
    p.add_argument("--seed", type=int, default=42, help="seed of the split, the test sample and the demonstrations")
    p.add_argument("--skip-invalid", dest="skip_invalid", action="store_true",
                   help="leave out rows with a blank or missing label or text (data.skip_invalid) instead of stopping")
    p.add_argument("--mode", default="first_token", choices=["first_token", "sequence"],
                   help="score the first token of each label word, or its whole token sequence")
    p.add_argument("--batch-size", dest="batch_size", type=count(1), default=16,
                   help="prompts scored at a time (default: 16; lower it if memory runs short)")
    p.add_argument("--device", default="auto", help=device)
    p.add_argument("-o", "--output", help="also write every setting, metric and prediction to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.set_defaults(fn=cmd_calibrate)
