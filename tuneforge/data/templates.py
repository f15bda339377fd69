"""Chat templates: which one a run uses, rendering a conversation with it, and cutting the rendered text into
the pieces that train (the assistant replies with their end-of-turn marks) and those that do not.

A template is the tokenizer's own, a named plain one (``TEMPLATES``: alpaca, plain, for models that ship none)
or one given in ``data.template``. :func:`pieces` renders each conversation once whole and once up to each reply,
so the prompt before a reply is exactly the generation prompt (``add_generation_prompt``) the model is given at
inference; a template whose rendering disagrees is handled as :func:`pieces` says, or refused in one line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from tuneforge.config import ConfigError

# Named plain templates (Jinja, like a tokenizer's chat template) for models that ship none.
TEMPLATES = {
    "alpaca": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}"
        "{% else %}{{ 'Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\\n\\n' }}{% endif %}"
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ '### Instruction:\\n' + m['content'] + '\\n\\n' }}"
        "{% elif m['role'] == 'assistant' %}{{ '### Response:\\n' + m['content'] + eos_token + '\\n\\n' }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
    ),
    "plain": (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] + eos_token + '\\n' }}"
        "{% else %}{{ m['content'] + '\\n' }}{% endif %}{% endfor %}"
    ),
}


def own_template(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The tokenizer's chat template, or of its named templates the one named 'default' (None: neither)."""
    own = getattr(tokenizer, "chat_template", None)
    own = own.get("default") if isinstance(own, dict) else own
    return own if isinstance(own, str) and own else None


def stored_template(name: str | None) -> str | None:
    """``data.template`` as a run's config.yaml stores it: a .jinja file as its text (inline Jinja), so the run
    reloads, evaluates and resumes with the template it trained with from any working directory, whatever later
    becomes of the file; names and inline Jinja as they are."""
    if not name or name in TEMPLATES or "{{" in name or "{%" in name or not Path(name).expanduser().is_file():
        return name
    text = Path(name).expanduser().read_text(encoding="utf-8")
    return text if "{{" in text or "{%" in text else str(Path(name).expanduser().resolve())


def resolve_template(tokenizer: PreTrainedTokenizerBase, name: str | None, system: str | None = None) -> str:
    """The Jinja chat template to use: a named one (alpaca, plain, or one of the tokenizer's named templates), a
    .jinja file or inline Jinja from ``data.template``; else the tokenizer's own. A model with neither is a
    ConfigError, as is a template that refuses the ``system`` message (``data.system_prompt``) every row gets."""
    own = getattr(tokenizer, "chat_template", None)
    named = own if isinstance(own, dict) else {}
    if name:
        if name in TEMPLATES or name in named:
            template = TEMPLATES.get(name) or named[name]
        elif "{{" in name or "{%" in name:
            template = name
        elif Path(name).expanduser().is_file():
            template = Path(name).expanduser().read_text(encoding="utf-8")
        else:
            raise ConfigError(f"data.template: unknown template '{name}'; use {', '.join([*TEMPLATES, *named])}, "
                              "a .jinja file or an inline Jinja chat template")
    elif named and "default" not in named:
        raise ConfigError(f"the model's tokenizer has chat templates named {', '.join(named)} but none named "
                          f"'default'; choose one with data.template (e.g. data.template={next(iter(named))})")
    else:
        template = own_template(tokenizer)
        if not template:
            raise ConfigError("the model's tokenizer has no chat template; name one with data.template "
                              f"({', '.join(TEMPLATES)}) or use data.format=text")
    if system:
        probe = [{"role": "system", "content": system}, {"role": "user", "content": "hi"},
                 {"role": "assistant", "content": "hello"}]
        try:
            tokenizer.apply_chat_template(probe, chat_template=template, tokenize=False)
        except Exception as exc:  # noqa: BLE001 - Jinja's raise_exception and template errors
            raise ConfigError(f"data.system_prompt: the chat template refuses a system message "
                              f"({str(exc).splitlines()[0]}); unset data.system_prompt or name a template that "
                              "takes one with data.template") from None
        try:  # Mistral v0.3's folds it into the last user message only: gone once the reply follows
            pieces(tokenizer, template, probe[1:])
        except ConfigError:
            return template  # refused without it too: each row says so
        try:
            pieces(tokenizer, template, probe)
        except ConfigError as exc:
            raise ConfigError(f"data.system_prompt: with a system message, {exc}") from None
    return template


def render(tokenizer: PreTrainedTokenizerBase, template: str, messages: list[dict[str, str]],
           generation_prompt: bool) -> str:
    """The conversation as text, with the assistant header appended when ``generation_prompt``."""
    try:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=generation_prompt)
    except Exception as exc:  # Jinja errors (e.g. a template that raises on role order)
        raise ConfigError(f"the chat template cannot render this conversation: {str(exc).splitlines()[0]}; fix or "
                          "remove the row (the template, not data.skip_invalid, decides what it renders)") from None


def pieces(tokenizer: PreTrainedTokenizerBase, template: str, messages: list[dict[str, str]]
           ) -> tuple[list[tuple[str, bool]], int]:
    """Rendered text cut into (text, trains) pieces; the assistant replies (with their end-of-turn marks)
    are the pieces that train, except those of weight 0. Messages after the last reply are dropped. A template
    that closes the whole conversation with a mark (Phi-3's end-of-text) trains each earlier reply as far as the
    conversation renders it; an earlier reply the template renders otherwise once later turns follow (Qwen3
    gives only the last reply its think block) stays as context: training it would teach what generation never
    continues. Also returns how many replies that kept from training."""
    messages = until_last_reply(messages)
    full = render(tokenizer, template, messages, False)
    out, cursor, unstable = [], 0, 0
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        head = render(tokenizer, template, messages[:k], True)
        upto = render(tokenizer, template, messages[:k + 1], False)
        stable = full.startswith(head) and upto.startswith(head) and len(head) >= cursor
        end = (len(upto) if full.startswith(upto) else _end_before_trailer(full, upto, len(head), tokenizer)
               ) if stable else None
        if end is None:
            if k < len(messages) - 1:
                unstable += m.get("weight") != 0
                continue
            raise ConfigError("the chat template's generation prompt (add_generation_prompt) does not start the "
                              f"reply as the template renders it in the conversation ({_differ(head, full)}), so "
                              "what trains is not what generation continues; name a template with data.template")
        out += [(full[cursor:len(head)], False), (full[len(head):end], m.get("weight") != 0)]
        cursor = end
    return [(text, trains) for text, trains in out if text], unstable


def _differ(prompt: str, full: str) -> str:
    """Where the generation prompt and the rendered conversation part, in a few characters of each."""
    at = len(os.path.commonprefix([prompt, full]))
    return f"the prompt goes on {prompt[at:at + 24]!r} where the conversation has {full[at:at + 24]!r}"


def _end_before_trailer(full: str, upto: str, start: int, tokenizer: PreTrainedTokenizerBase) -> int | None:
    """Where a reply rendered from ``start`` ends in ``full`` when ``upto`` (the conversation rendered up to it)
    differs from ``full`` only by a trailer the template puts at the very end (Phi-3's end-of-text, OLMo's
    end-of-text for its ``<|im_end|>``): the shared text, never cutting one of the tokenizer's added tokens in
    two; None where the reply itself renders otherwise."""
    shared = len(os.path.commonprefix([full, upto]))
    if shared <= start or not full.endswith(upto[shared:]):
        return None
    for mark in (t.content for t in tokenizer.added_tokens_decoder.values()):
        at = full.rfind(mark, 0, shared + len(mark) - 1)  # the last one starting before the cut
        if at != -1 and at < shared < at + len(mark):
            shared = at
    return shared if shared > start else None


def until_last_reply(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation up to its last assistant reply that trains (later messages have nothing to learn from)."""
    last = max(k for k, m in enumerate(messages) if m["role"] == "assistant" and m.get("weight") != 0)
    return messages[:last + 1]


def reply_end_id(tokenizer: PreTrainedTokenizerBase, template: str) -> int | None:
    """The special token ``template`` puts right after an assistant reply (``<|im_end|>``, ``<end_of_turn>``,
    ``<|eot_id|>``), or None (a template that raises, or plain text there)."""
    try:
        text = render(tokenizer, template, [{"role": "user", "content": "hi"},
                                            {"role": "assistant", "content": "hello"}], False)
    except ConfigError:
        return None
    at = text.rfind("hello")
    ids = tokenizer(text[at + len("hello"):], add_special_tokens=False)["input_ids"] if at != -1 else []
    marks = (set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)) - {tokenizer.unk_token_id,
                                                                                     tokenizer.pad_token_id}
    return ids[0] if ids and ids[0] in marks else None


def with_system(template: str, system: str) -> str:
    """``template`` giving a conversation without a system message ``system`` first, as the run prompted: an
    exported tokenizer carries ``data.system_prompt`` to pipelines (its text as a Jinja string literal). The
    newline after the added tag is the one transformers' ``trim_blocks`` drops, so ``template`` starts a line as
    before (its own leading newline or indented first tag renders as it did)."""
    return ("{%- if messages and messages[0]['role'] != 'system' %}{%- set messages = [{'role': 'system', "
            f"'content': {json.dumps(system, ensure_ascii=False)}}}] + messages %}}{{%- endif %}}\n" + template)
