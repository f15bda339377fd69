"""The ``forgetting`` section of a run's configuration: replay, augmentation, regularisation, interpolation and
the probes that measure what the model knew. Unknown keys are errors (``tuneforge.strict``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tuneforge.strict import ConfigError, non_negative, positive, probability


@dataclass
class ReplayConfig:
    data: str | None = None  # embedded data set or file of general / earlier-task examples (same task format);
    #                          "self": the untrained model's own answers to held-out general prompts (causal LM)
    ratio: float = 0.0  # share of each training epoch made of replay examples, in [0, 1)

    def __post_init__(self) -> None:
        if not 0 <= self.ratio < 1:
            raise ConfigError(f"forgetting.replay.ratio must be in [0, 1), got {self.ratio}")
        if self.ratio > 0 and not self.data:
            raise ConfigError("forgetting.replay.ratio > 0 needs forgetting.replay.data (a data set name or file)")


@dataclass
class AugmentConfig:
    copies: int = 0  # augmented copies added per training example (0: off); random word deletion/swap/insertion
    p_delete: float = 0.1  # probability of deleting each word
    p_swap: float = 0.1  # probability of swapping each word with another
    p_insert: float = 0.1  # probability of inserting a word (copied from the text) per word

    def __post_init__(self) -> None:
        if self.copies < 0:
            raise ConfigError(f"forgetting.augment.copies must be >= 0, got {self.copies}")
        for name in ("p_delete", "p_swap", "p_insert"):
            probability(f"forgetting.augment.{name}", getattr(self, name))


@dataclass
class RegularizeConfig:
    kind: Literal["none", "l2sp", "ewc"] = "none"  # pull trained pre-trained weights back toward their start
    strength: float = 0.01  # lambda/alpha of the penalty (tune per model; AdamW normalises gradients)
    fisher_batches: int = 64  # EWC: reference examples (batches of one) used to estimate the Fisher diagonal

    def __post_init__(self) -> None:
        non_negative("forgetting.regularize.strength", self.strength)
        positive("forgetting.regularize.fisher_batches", self.fisher_batches)


PROBES = ("auto", "none", "reference", "own_answers", "sentiment", "sentiment_calibrated")


@dataclass
class ForgettingConfig:
    reference: str | None = None  # causal LM, seq2seq: data whose perplexity measures what the model knew ("none": off)
    reference_examples: int = 200  # how many reference examples to measure on
    probes: list[str] = field(default_factory=lambda: ["auto"])  # what the model knew, measured before and after:
    #   auto (the task's default), reference, own_answers, sentiment, sentiment_calibrated; [] or none: off
    probe_prompts: int = 64  # own_answers: held-out general prompts whose untrained answers are scored
    probe_examples: int = 200  # sentiment: Rotten Tomatoes test sentences classified zero-shot from a prompt
    probe_split: Literal["test", "validation"] = "test"  # which held-out side the probes measure: test (report)
    #   or validation (disjoint examples of the same sources; `tuneforge mitigate` chooses strengths on these)
    previous_run: str | None = None  # sequential: run dir of task 1; its merged backbone starts this run and its
    #   own head + test split measure task 1 before/after (accuracy, entity F1, or perplexity for text outputs)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    regularize: RegularizeConfig = field(default_factory=RegularizeConfig)
    interpolate: float = 1.0  # WiSE-FT: after training, keep this share of what training changed (trained
    #                           weights moved back toward their start; 1: off), in (0, 1]

    def __post_init__(self) -> None:
        if not 0 < self.interpolate <= 1:
            raise ConfigError(f"forgetting.interpolate must be in (0, 1], got {self.interpolate}")
        positive("forgetting.reference_examples", self.reference_examples)
        positive("forgetting.probe_prompts", self.probe_prompts)
        positive("forgetting.probe_examples", self.probe_examples)
        unknown = [p for p in self.probes if p not in PROBES]
        if unknown:
            raise ConfigError(f"forgetting.probes: unknown probe '{unknown[0]}'; choose from {', '.join(PROBES)}")
        for alone, meaning in (("none", "turns the probes off"), ("auto", "stands for the task's own probes")):
            if alone in self.probes and len(set(self.probes)) > 1:
                raise ConfigError(f"forgetting.probes: '{alone}' {meaning}, so it cannot go with "
                                  f"{', '.join(p for p in self.probes if p != alone)}; give one or the other")
